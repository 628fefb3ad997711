"""``derma download ham10000``: HAM10000 from Harvard Dataverse (doi:10.7910/DVN/DBW86T).

The file list and checksums come from Dataverse's native API
(``/api/datasets/:persistentId/?persistentId=doi:...``); files come from the access API
(``/api/access/datafile/{id}``). Tabular files, which Dataverse ingests into ``.tab``, are asked
for in their uploaded form (``?format=original``) and checked against the uploaded file's
checksum; a server that still sends the ``.tab`` form is accepted (``derma prep`` reads both).
Downloads resume with HTTP ``Range`` requests after an interruption or a truncated transfer.
The image archives are unpacked into HAM10000's raw layout.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DATAVERSE_URL = "https://dataverse.harvard.edu"
HAM10000_DOI = "doi:10.7910/DVN/DBW86T"
#: The files derma needs (Dataverse labels); the rest of the dataset (test set, segmentations) is skipped.
HAM10000_FILES = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_metadata.tab",
                  "HAM10000_metadata.csv", "HAM10000_metadata")
MANUAL_HINT = ("download HAM10000_images_part_1.zip, HAM10000_images_part_2.zip and HAM10000_metadata from "
               "https://doi.org/10.7910/DVN/DBW86T (or Kaggle's 'skin-cancer-mnist-ham10000') by hand, unzip them "
               "into one folder and run `derma prep --raw FOLDER --out PREPARED`")
USER_AGENT = "derma-downloader/1 (+https://github.com/; research use)"


class DownloadError(RuntimeError):
    """A download failed; the message is one line saying what to do."""


@dataclass
class RemoteFile:
    id: int
    label: str          # the name shown on Dataverse (``.tab`` for ingested tables)
    filename: str       # what derma saves it as
    size: int | None    # expected size of what is downloaded (None when unknown)
    checksum: tuple[str, str] | None  # (algorithm, hex) of the downloaded form, when known
    original: bool      # ask for format=original


def _request(url: str, headers: dict | None = None, timeout: float = 60.0):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs we build ourselves


def _offline(server: str, exc: BaseException) -> DownloadError:
    reason = getattr(exc, "reason", exc)
    return DownloadError(f"cannot reach {server} ({reason}); you seem to be offline: {MANUAL_HINT}")


def list_files(server: str = DATAVERSE_URL, doi: str = HAM10000_DOI, timeout: float = 60.0) -> list[RemoteFile]:
    """The dataset's files with their ids, sizes and checksums (latest published version)."""
    url = f"{server.rstrip('/')}/api/datasets/:persistentId/?persistentId={urllib.parse.quote(doi, safe=':/')}"
    try:
        with _request(url, {"Accept": "application/json"}, timeout) as resp:
            payload = json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the DOI or {MANUAL_HINT}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(server, exc) from None
    except ValueError:
        raise DownloadError(f"{url}: the answer is not JSON; the server may be down: {MANUAL_HINT}") from None
    try:
        entries = payload["data"]["latestVersion"]["files"]
    except (KeyError, TypeError):
        raise DownloadError(f"{url}: unexpected answer (no data.latestVersion.files); {MANUAL_HINT}") from None
    files = []
    for entry in entries:
        df = entry.get("dataFile", {})
        label = entry.get("label") or df.get("filename")
        original = bool(df.get("originalFileFormat")) and label.endswith(".tab")
        checksum = None
        if df.get("checksum", {}).get("value"):
            checksum = (df["checksum"].get("type", "MD5").lower().replace("-", ""), df["checksum"]["value"])
        elif df.get("md5"):
            checksum = ("md5", df["md5"])
        size = df.get("originalFileSize") if original else df.get("filesize")
        filename = label
        if label.startswith("HAM10000_metadata"):
            filename = "HAM10000_metadata.csv" if original or not label.endswith(".tab") else label
        files.append(RemoteFile(int(df["id"]), label, filename, int(size) if size is not None else None,
                                checksum, original))
    return files


def _hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(server: str, remote: RemoteFile, dest: Path, retries: int = 5, progress: bool = True,
          timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download one file to ``dest`` (resuming ``dest.part``), verify its checksum, rename into place."""
    from tqdm.auto import tqdm

    if dest.exists() and (remote.checksum is None or _hash(dest, remote.checksum[0]) == remote.checksum[1]):
        return dest
    url = f"{server.rstrip('/')}/api/access/datafile/{remote.id}" + ("?format=original" if remote.original else "")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    ingested = False  # the server sent Dataverse's .tab although the original was asked for
    bar = tqdm(total=remote.size, initial=part.stat().st_size if part.exists() else 0, unit="B", unit_scale=True,
               desc=remote.filename, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for attempt in range(retries + 1):
            have = part.stat().st_size if part.exists() else 0
            if remote.size is not None and have == remote.size:
                break
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with _request(url, headers, timeout) as resp:
                    if have and resp.status != 206:  # the server ignored Range: start again
                        have = 0
                        bar.reset(total=remote.size)
                    if "tab-separated" in (resp.headers.get("Content-Type") or "") and remote.original:
                        ingested = True
                    with open(part, "ab" if have else "wb") as out:
                        while True:
                            block = resp.read(1 << 16)
                            if not block:
                                break
                            out.write(block)
                            bar.update(len(block))
                if remote.size is None or ingested or part.stat().st_size >= remote.size:
                    break
            except urllib.error.HTTPError as exc:
                if exc.code == 416:  # asked past the end: the part file is complete (or bad, the checksum says)
                    break
                if exc.code < 500 or attempt == retries:
                    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason} for {remote.label}; {MANUAL_HINT}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                if attempt == retries:
                    if isinstance(exc, urllib.error.URLError) and not part.exists():
                        raise _offline(server, exc) from None
                    raise DownloadError(f"{remote.label}: the transfer keeps failing ({exc}); run the command again "
                                        f"to resume from {part.stat().st_size if part.exists() else 0} bytes") from None
            sleep(min(2 ** attempt, 30))
    finally:
        bar.close()
    size = part.stat().st_size if part.exists() else 0
    if not ingested and remote.size is not None and size != remote.size:
        raise DownloadError(f"{remote.label}: got {size} of {remote.size} bytes after {retries + 1} tries; run the "
                            "command again to resume")
    if remote.checksum is not None and not ingested:
        algorithm, expected = remote.checksum
        actual = _hash(part, algorithm)
        if actual != expected:
            part.unlink()
            raise DownloadError(f"{remote.label}: checksum mismatch ({algorithm} {actual}, Dataverse says {expected}); "
                                "the partial file was deleted, run the command again to re-download it")
    if ingested and dest.suffix != ".tab":
        dest = dest.with_suffix(".tab")
    os.replace(part, dest)
    return dest


def safe_extract(archive: Path, target: Path) -> int:
    """Unzip ``archive`` into ``target``: images only, refusing members that escape ``target``.
    Archives without a top folder go into a folder named after the archive. Returns the count."""
    from ..interfaces import resolve_inside

    count = 0
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()
                   and Path(m.filename).suffix.lower() in (".jpg", ".jpeg", ".png")
                   and not Path(m.filename).name.startswith(".") and "__MACOSX" not in m.filename]
        flat = all("/" not in m.filename.strip("/") for m in members)
        base = target / archive.stem if flat else target
        for m in members:
            dest = resolve_inside(base, m.filename)  # raises on ../ or absolute names (zip slip)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            with zf.open(m) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(tmp, dest)
            count += 1
    return count


def download_ham10000(out: str | os.PathLike, server: str | None = None, doi: str = HAM10000_DOI,
                      retries: int = 5, progress: bool = True, keep_archives: bool = True,
                      log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download HAM10000 into ``out`` in its raw layout (``derma prep --raw out`` reads it)."""
    server = server or os.environ.get("DERMA_DATAVERSE_URL") or DATAVERSE_URL
    out = Path(out)
    files = [f for f in list_files(server, doi) if f.label in HAM10000_FILES]
    labels = {f.label for f in files}
    missing = [n for n in ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip") if n not in labels]
    if missing or not any(f.label.startswith("HAM10000_metadata") for f in files):
        raise DownloadError(f"{doi} on {server} lacks {', '.join(missing) or 'the metadata table'}; {MANUAL_HINT}")
    archives = out / "archives"
    for remote in files:
        is_zip = remote.label.endswith(".zip")
        dest = (archives if is_zip else out) / remote.filename
        log(f"downloading {remote.label} ({_human(remote.size)})")
        path = fetch(server, remote, dest, retries=retries, progress=progress, sleep=sleep)
        if is_zip:
            marker = out / f".{path.stem}.unpacked"
            if not marker.exists():
                try:
                    n = safe_extract(path, out)
                except zipfile.BadZipFile:
                    path.unlink()
                    raise DownloadError(f"{path.name} is not a valid zip archive (deleted); run the command "
                                        "again to re-download it") from None
                marker.write_text(f"{n}\n")
                log(f"unpacked {n} images from {path.name} into {out / path.stem}")
            if not keep_archives:
                path.unlink()
    log(f"HAM10000 is in {out}; next: derma prep --raw {out} --out PREPARED_DIR")
    return out


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
