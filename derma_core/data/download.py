"""``derma download NAME``: the public datasets, fetched into their raw layouts.

One transfer machinery serves every source (:func:`download_file`): urllib over HTTP(S), resumed
with ``Range`` requests after an interruption or a truncated transfer (into ``NAME.part``),
checked against the size and checksum the source publishes, and renamed into place only when
complete, so a reader never sees half a file. Archives are unpacked (images only, members that
would escape the folder refused) and a marker file remembers it.

* HAM10000 — Harvard Dataverse (doi:10.7910/DVN/DBW86T): the file list and MD5s from the native
  API (``/api/datasets/:persistentId/?persistentId=doi:...``), files from the access API;
  Dataverse ingests tables into ``.tab``, so the table is asked for in its uploaded form
  (``?format=original``); a server that still sends the ``.tab`` form is accepted.
* ISIC 2019 / ISIC 2020 — the ISIC challenge bucket on S3: sizes from ``Content-Length`` and MD5s
  from plain (single-part) ETags; a multipart ETag is no checksum and is not used.
* PAD-UFES-20 — Mendeley Data (doi:10.17632/zr7vgbcyr2.1): the file list with SHA-256s.
* DermaMNIST — Zenodo record 10519652 with MedMNIST's published MD5s.
* Fitzpatrick17k — the official CSV from GitHub, pinned to a commit and SHA-256-checked, then each
  image from the CSV's ``url`` column: rate-limited per host, resumable (images already there are
  kept), a report file of the images that failed and a non-zero exit when any did.

Every downloader is called ``downloader(out, options=None, progress=True, *, server=None,
retries=5, keep_archives=True, log=print, sleep=time.sleep, timeout=...)`` (the descriptor's
Downloader contract plus these keywords, which every one accepts):
``server`` replaces the source's base URL (a mirror, or a test server on 127.0.0.1), as do the
environment variables ``DERMA_DATAVERSE_URL``, ``DERMA_ISIC_URL``, ``DERMA_MENDELEY_URL``,
``DERMA_ZENODO_URL`` and ``DERMA_GITHUB_RAW_URL``. Failures raise :class:`DownloadError` with one
line saying what to do (resume, re-download, or fetch by hand).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..atomic import atomic_open

USER_AGENT = "derma-downloader/1 (+https://github.com/; research use)"

Log = Callable[[str], None]
Sleep = Callable[[float], None]


class DownloadError(RuntimeError):
    """A download failed; the message is one line saying what to do."""


# ---------------------------------------------------------------- the transfer machinery

def _request(url: str, headers: dict | None = None, timeout: float = 60.0, method: str = "GET"):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})}, method=method)
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs we build ourselves


def _offline(where: str, exc: BaseException, hint: str) -> DownloadError:
    reason = getattr(exc, "reason", exc)
    return DownloadError(f"cannot reach {where} ({reason}); you seem to be offline: {hint}")


def _base(server: str | None, env: str, default: str) -> str:
    return (server or os.environ.get(env) or default).rstrip("/")


def _hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _get_json(url: str, hint: str, timeout: float = 60.0) -> Any:
    """A JSON answer; one-line errors for HTTP errors, no network and non-JSON answers."""
    try:
        with _request(url, {"Accept": "application/json"}, timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(urllib.parse.urlsplit(url).netloc or url, exc, hint) from None
    except ValueError:
        raise DownloadError(f"{url}: the answer is not JSON; the server may be down: {hint}") from None


def _complete(path: Path, size: int | None, checksum: tuple[str, str] | None) -> bool:
    """Whether a file already in place is the one wanted (checksum, else size, else presence)."""
    if not path.exists():
        return False
    if checksum is not None:
        return _hash(path, checksum[0]) == checksum[1]
    return size is None or path.stat().st_size == size


def download_file(url: str, dest: str | os.PathLike, *, size: int | None = None,
                  checksum: tuple[str, str] | None = None, label: str | None = None, source: str = "the source",
                  hint: str = "", retries: int = 5, progress: bool = True, timeout: float = 60.0,
                  sleep: Sleep = time.sleep) -> Path:
    """Download ``url`` to ``dest``: resumed from ``dest.part`` with ``Range``, checked against
    ``size`` and ``checksum`` (``(algorithm, hex)``, as published by ``source``), renamed into
    place when complete. A file already in place that matches is kept (nothing is fetched)."""
    return _download(url, Path(dest), size=size, checksum=checksum, label=label, source=source, hint=hint,
                     retries=retries, progress=progress, timeout=timeout, sleep=sleep)[0]


def _download(url: str, dest: Path, *, size: int | None, checksum: tuple[str, str] | None, label: str | None,
              source: str, hint: str, retries: int, progress: bool, timeout: float, sleep: Sleep,
              unchecked_type: str | None = None) -> tuple[Path, bool]:
    """:func:`download_file`; also returns whether the server answered with ``unchecked_type``
    (Dataverse's ingested ``.tab``), whose size and checksum are not those published."""
    from ..progress import progress as tqdm  # tqdm on a terminal, whole lines in a log file

    label = label or dest.name
    if _complete(dest, size, checksum):
        return dest, False
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    unchecked = False
    where = urllib.parse.urlsplit(url).netloc or url
    bar = tqdm(total=size, initial=part.stat().st_size if part.exists() else 0, unit="B", unit_scale=True,
               desc=label, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for attempt in range(retries + 1):
            have = part.stat().st_size if part.exists() else 0
            if size is not None and have == size:
                break
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with _request(url, headers, timeout) as resp:
                    if have and resp.status != 206:  # the server ignored Range: start again
                        have = 0
                        bar.reset(total=size)
                    if unchecked_type and unchecked_type in (resp.headers.get("Content-Type") or ""):
                        unchecked = True
                    with open(part, "ab" if have else "wb") as out:
                        while True:
                            block = resp.read(1 << 16)
                            if not block:
                                break
                            out.write(block)
                            bar.update(len(block))
                if size is None or unchecked or part.stat().st_size >= size:
                    break
            except urllib.error.HTTPError as exc:
                if exc.code == 416:  # asked past the end: the part file is complete (or bad, the checksum says)
                    break
                if exc.code < 500 or attempt == retries:
                    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason} for {label}; {hint}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                if attempt == retries:
                    if isinstance(exc, urllib.error.URLError) and not part.exists():
                        raise _offline(where, exc, hint) from None
                    raise DownloadError(f"{label}: the transfer keeps failing ({exc}); run the command again "
                                        f"to resume from {part.stat().st_size if part.exists() else 0} bytes") from None
            sleep(min(2 ** attempt, 30))
    finally:
        bar.close()
    got = part.stat().st_size if part.exists() else 0
    if not unchecked and size is not None and got != size:
        raise DownloadError(f"{label}: got {got} of {size} bytes after {retries + 1} tries; run the command again "
                            "to resume")
    if checksum is not None and not unchecked:
        algorithm, expected = checksum
        actual = _hash(part, algorithm)
        if actual != expected:
            part.unlink()
            raise DownloadError(f"{label}: checksum mismatch ({algorithm} {actual}, {source} says {expected}); "
                                "the partial file was deleted, run the command again to re-download it")
    os.replace(part, dest)
    return dest, unchecked


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
            with zf.open(m) as src, atomic_open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count


def _unpack_marker(out: Path, archive_name: str) -> Path:
    return out / f".{Path(archive_name).stem}.unpacked"


def _unpack(archive: Path, target: Path, out: Path, keep: bool, log: Log) -> None:
    """Unpack ``archive`` into ``target`` once (a marker in ``out`` remembers it)."""
    marker = _unpack_marker(out, archive.name)
    if not marker.exists():
        try:
            n = safe_extract(archive, target)
        except zipfile.BadZipFile:
            archive.unlink()
            raise DownloadError(f"{archive.name} is not a valid zip archive (deleted); run the command again to "
                                "re-download it") from None
        marker.write_text(f"{n}\n")
        log(f"unpacked {n} images from {archive.name} into {target}")
    if not keep and archive.exists():
        archive.unlink()


@dataclass
class Remote:
    """One file to fetch: its URL, the name it is saved as, and what its source publishes."""

    url: str
    filename: str
    size: int | None = None
    checksum: tuple[str, str] | None = None


def _fetch_all(items: Sequence[tuple[str, int | None, Callable[[Path], Path]]], out: Path, *, keep_archives: bool,
               log: Log, archive_target: Path | None = None) -> None:
    """Fetch each ``(filename, size, fetch(dest) -> path)`` into ``out`` (archives into
    ``out/archives``, then unpacked into ``archive_target``, default ``out``); an archive unpacked
    earlier and since deleted (``--delete-archives``) is not fetched again."""
    for filename, size, fetch_one in items:
        is_zip = filename.lower().endswith(".zip")
        if is_zip and _unpack_marker(out, filename).exists() and not (out / "archives" / filename).exists():
            continue
        dest = (out / "archives" if is_zip else out) / filename
        log(f"downloading {filename} ({_human(size)})")
        path = fetch_one(dest)
        if is_zip:
            _unpack(path, archive_target or out, out, keep_archives, log)


def _remote_items(remotes: Sequence[Remote], *, source: str, hint: str, retries: int, progress: bool,
                  timeout: float, sleep: Sleep) -> list[tuple[str, int | None, Callable[[Path], Path]]]:
    """:func:`_fetch_all` items that fetch plain URLs with :func:`download_file`."""
    def fetcher(remote: Remote) -> Callable[[Path], Path]:
        return lambda dest: download_file(remote.url, dest, size=remote.size, checksum=remote.checksum,
                                          source=source, hint=hint, retries=retries, progress=progress,
                                          timeout=timeout, sleep=sleep)

    return [(r.filename, r.size, fetcher(r)) for r in remotes]


def _human(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _next_step(name: str, out: Path) -> str:
    return f"next: derma prep --dataset {name} --raw {out} --out PREPARED_DIR"


# ---------------------------------------------------------------- HAM10000 (Harvard Dataverse)

DATAVERSE_URL = "https://dataverse.harvard.edu"
HAM10000_DOI = "doi:10.7910/DVN/DBW86T"
#: The files derma needs (Dataverse labels); the rest of the dataset (test set, segmentations) is skipped.
HAM10000_FILES = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip", "HAM10000_metadata.tab",
                  "HAM10000_metadata.csv", "HAM10000_metadata")
MANUAL_HINT = ("download HAM10000_images_part_1.zip, HAM10000_images_part_2.zip and HAM10000_metadata from "
               "https://doi.org/10.7910/DVN/DBW86T (or Kaggle's 'skin-cancer-mnist-ham10000') by hand, unzip them "
               "into one folder and run `derma prep --raw FOLDER --out PREPARED`")


@dataclass
class RemoteFile:
    """A Dataverse file."""

    id: int
    label: str          # the name shown on Dataverse (``.tab`` for ingested tables)
    filename: str       # what derma saves it as
    size: int | None    # expected size of what is downloaded (None when unknown)
    checksum: tuple[str, str] | None  # (algorithm, hex) of the downloaded form, when known
    original: bool      # ask for format=original


def list_files(server: str = DATAVERSE_URL, doi: str = HAM10000_DOI, timeout: float = 60.0) -> list[RemoteFile]:
    """The dataset's files with their ids, sizes and checksums (latest published version)."""
    url = f"{server.rstrip('/')}/api/datasets/:persistentId/?persistentId={urllib.parse.quote(doi, safe=':/')}"
    payload = _get_json(url, f"check the DOI or {MANUAL_HINT}", timeout)
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


def fetch(server: str, remote: RemoteFile, dest: Path, retries: int = 5, progress: bool = True,
          timeout: float = 60.0, sleep: Sleep = time.sleep) -> Path:
    """Download one Dataverse file to ``dest`` (resuming, checksum-checked); an ingested ``.tab``
    sent instead of the asked-for original is kept as ``.tab`` (``derma prep`` reads both)."""
    url = f"{server.rstrip('/')}/api/access/datafile/{remote.id}" + ("?format=original" if remote.original else "")
    path, ingested = _download(url, dest, size=remote.size, checksum=remote.checksum, label=remote.label,
                               source="Dataverse", hint=MANUAL_HINT, retries=retries, progress=progress,
                               timeout=timeout, sleep=sleep,
                               unchecked_type="tab-separated" if remote.original else None)
    if ingested and path.suffix != ".tab":
        tab = path.with_suffix(".tab")
        os.replace(path, tab)
        return tab
    return path


def download_ham10000(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True, *,
                      server: str | None = None, doi: str = HAM10000_DOI, retries: int = 5,
                      keep_archives: bool = True, log: Log = print, sleep: Sleep = time.sleep,
                      timeout: float = 60.0) -> Path:
    """Download HAM10000 into ``out`` in its raw layout (``derma prep --raw out`` reads it)."""
    server = _base(server, "DERMA_DATAVERSE_URL", DATAVERSE_URL)
    out = Path(out)
    files = [f for f in list_files(server, doi, timeout) if f.label in HAM10000_FILES]
    labels = {f.label for f in files}
    missing = [n for n in ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip") if n not in labels]
    if missing or not any(f.label.startswith("HAM10000_metadata") for f in files):
        raise DownloadError(f"{doi} on {server} lacks {', '.join(missing) or 'the metadata table'}; {MANUAL_HINT}")

    def fetcher(remote: RemoteFile) -> Callable[[Path], Path]:
        return lambda dest: fetch(server, remote, dest, retries=retries, progress=progress, timeout=timeout,
                                  sleep=sleep)

    _fetch_all([(r.filename, r.size, fetcher(r)) for r in files], out, keep_archives=keep_archives, log=log)
    log(f"HAM10000 is in {out}; {_next_step('ham10000', out)}")
    return out


# ---------------------------------------------------------------- ISIC 2019 / 2020 (the challenge bucket)

ISIC_URL = "https://isic-challenge-data.s3.amazonaws.com"
ISIC2019_FILES = ("2019/ISIC_2019_Training_GroundTruth.csv", "2019/ISIC_2019_Training_Metadata.csv",
                  "2019/ISIC_2019_Training_Input.zip")
ISIC2020_FILES = ("2020/ISIC_2020_Training_GroundTruth.csv", "2020/ISIC_2020_Training_Duplicates.csv",
                  "2020/ISIC_2020_Training_JPEG.zip")


def _isic_hint(year: int, files: Sequence[str]) -> str:
    names = ", ".join(Path(f).name for f in files)
    return (f"download {names} from https://challenge.isic-archive.com/data/#{year} by hand, unzip the images into "
            f"one folder with the CSV files and run `derma prep --dataset isic{year} --raw FOLDER --out PREPARED`")


def s3_remote(url: str, hint: str, timeout: float = 60.0) -> Remote:
    """A file on S3 with its size (``Content-Length``) and MD5 (a single-part upload's ETag;
    a multipart ETag, ``"<hex>-<parts>"``, is not an MD5 of the file and is not used)."""
    size = etag = None
    try:
        with _request(url, timeout=timeout, method="HEAD") as resp:
            size = resp.headers.get("Content-Length")
            etag = resp.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        if exc.code not in (405, 501):  # HEAD not allowed: fetch without knowing the size
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline(urllib.parse.urlsplit(url).netloc or url, exc, hint) from None
    etag = (etag or "").strip().strip('"').lower()
    checksum = ("md5", etag) if re.fullmatch(r"[0-9a-f]{32}", etag) else None
    return Remote(url, url.rsplit("/", 1)[-1], int(size) if size and size.isdigit() else None, checksum)


def _download_isic(year: int, files: Sequence[str], out: str | os.PathLike, progress: bool, server: str | None,
                   retries: int, keep_archives: bool, log: Log, sleep: Sleep, timeout: float) -> Path:
    base = _base(server, "DERMA_ISIC_URL", ISIC_URL)
    out = Path(out)
    hint = _isic_hint(year, files)
    remotes = [s3_remote(f"{base}/{f}", hint, timeout) for f in files]
    items = _remote_items(remotes, source="the ISIC bucket (ETag)", hint=hint, retries=retries, progress=progress,
                          timeout=timeout, sleep=sleep)
    _fetch_all(items, out, keep_archives=keep_archives, log=log)
    log(f"ISIC {year} is in {out}; {_next_step(f'isic{year}', out)}")
    return out


def download_isic2019(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True, *,
                      server: str | None = None, retries: int = 5, keep_archives: bool = True, log: Log = print,
                      sleep: Sleep = time.sleep, timeout: float = 60.0) -> Path:
    """ISIC 2019's training set (ground truth, metadata, 25,331 JPEGs; about 9 GB) into ``out``."""
    return _download_isic(2019, ISIC2019_FILES, out, progress, server, retries, keep_archives, log, sleep, timeout)


def download_isic2020(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True, *,
                      server: str | None = None, retries: int = 5, keep_archives: bool = True, log: Log = print,
                      sleep: Sleep = time.sleep, timeout: float = 60.0) -> Path:
    """ISIC 2020's training set (ground truth, the organisers' duplicate list, 33,126 JPEGs;
    about 23 GB) into ``out``."""
    return _download_isic(2020, ISIC2020_FILES, out, progress, server, retries, keep_archives, log, sleep, timeout)


# ---------------------------------------------------------------- PAD-UFES-20 (Mendeley Data)

MENDELEY_URL = "https://data.mendeley.com"
PAD_UFES_20_ID = "zr7vgbcyr2"
PAD_UFES_20_VERSION = 1
PAD_UFES_20_HINT = ("download PAD-UFES-20 by hand from https://data.mendeley.com/datasets/zr7vgbcyr2/1 ('Download "
                    "All'), unzip it and the images/imgs_part_N.zip archives inside it into one folder (metadata.csv "
                    "next to images/) and run `derma prep --dataset pad_ufes_20 --raw FOLDER --out PREPARED`")


def mendeley_files(server: str, dataset_id: str, version: int, hint: str, timeout: float = 60.0) -> list[Remote]:
    """A Mendeley Data dataset's files: name, download URL, size and SHA-256 (``content_details``)."""
    url = f"{server.rstrip('/')}/api/datasets/{dataset_id}/files?version={version}"
    payload = _get_json(url, hint, timeout)
    entries = payload if isinstance(payload, list) else payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise DownloadError(f"{url}: unexpected answer (no file list); {hint}")
    remotes = []
    for entry in entries:
        details = entry.get("content_details") or {}
        name, link = entry.get("filename"), details.get("download_url")
        if not name or not link:
            continue
        size = details.get("size", entry.get("size"))
        sha = details.get("sha256_hash")
        remotes.append(Remote(link, Path(name).name, int(size) if size is not None else None,
                              ("sha256", sha.lower()) if sha else None))
    return remotes


def download_pad_ufes_20(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True, *,
                         server: str | None = None, retries: int = 5, keep_archives: bool = True, log: Log = print,
                         sleep: Sleep = time.sleep, timeout: float = 60.0) -> Path:
    """PAD-UFES-20 (``metadata.csv`` and the three image archives, unpacked into
    ``images/imgs_part_N/``) into ``out``."""
    base = _base(server, "DERMA_MENDELEY_URL", MENDELEY_URL)
    out = Path(out)
    files = mendeley_files(base, PAD_UFES_20_ID, PAD_UFES_20_VERSION, PAD_UFES_20_HINT, timeout)
    metadata = [f for f in files if f.filename.lower() == "metadata.csv"]
    archives = sorted((f for f in files if re.fullmatch(r"imgs_part_\d+\.zip", f.filename.lower())),
                      key=lambda f: f.filename)
    if not metadata or not archives:
        listed = ", ".join(f.filename for f in files) or "nothing"
        raise DownloadError(f"Mendeley Data lists {listed} for {PAD_UFES_20_ID} version {PAD_UFES_20_VERSION}, "
                            f"not metadata.csv and images/imgs_part_N.zip; {PAD_UFES_20_HINT}")
    items = _remote_items(metadata[:1] + archives, source="Mendeley Data", hint=PAD_UFES_20_HINT, retries=retries,
                          progress=progress, timeout=timeout, sleep=sleep)
    _fetch_all(items, out, keep_archives=keep_archives, log=log, archive_target=out / "images")
    log(f"PAD-UFES-20 is in {out}; {_next_step('pad_ufes_20', out)}")
    return out


# ---------------------------------------------------------------- DermaMNIST (Zenodo)

ZENODO_URL = "https://zenodo.org"
DERMAMNIST_RECORD = "10519652"
#: MedMNIST's published MD5 of each DermaMNIST file (medmnist/info.py), by image side.
DERMAMNIST_MD5 = {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
                  128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"}


def dermamnist_filename(size: int) -> str:
    """MedMNIST's file name for DermaMNIST at ``size`` px (``dermamnist.npz`` is 28 px)."""
    return "dermamnist.npz" if int(size) == 28 else f"dermamnist_{int(size)}.npz"


def download_dermamnist(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True, *,
                        sizes: Sequence[int] | None = None, server: str | None = None, retries: int = 5,
                        keep_archives: bool = True, log: Log = print, sleep: Sleep = time.sleep,
                        timeout: float = 60.0) -> Path:
    """DermaMNIST's ``.npz`` file(s) (``sizes``, else the ``size`` option, else 28 px) into ``out``,
    MD5-checked against MedMNIST's published sums (no archives: ``keep_archives`` is accepted
    for the common downloader keywords)."""
    base = _base(server, "DERMA_ZENODO_URL", ZENODO_URL)
    out = Path(out)
    wanted = [int(s) for s in (sizes or [(options or {}).get("size", 28)])]
    bad = [s for s in wanted if s not in DERMAMNIST_MD5]
    if bad:
        raise DownloadError(f"DermaMNIST has no {bad[0]} px version; choose one of "
                            f"{', '.join(str(s) for s in DERMAMNIST_MD5)}")
    for size in wanted:
        name = dermamnist_filename(size)
        hint = (f"download {name} by hand from https://zenodo.org/records/{DERMAMNIST_RECORD} and set data.path to it")
        log(f"downloading {name}")
        download_file(f"{base}/records/{DERMAMNIST_RECORD}/files/{name}?download=1", out / name,
                      checksum=("md5", DERMAMNIST_MD5[size]), source="MedMNIST", hint=hint, retries=retries,
                      progress=progress, timeout=timeout, sleep=sleep)
    log(f"DermaMNIST is in {out}; next: derma run --dataset dermamnist -o data.path={out}")
    return out


# ---------------------------------------------------------------- Fitzpatrick17k (CSV + images by URL)

GITHUB_RAW_URL = "https://raw.githubusercontent.com"
#: The commit of github.com/mattgroh/fitzpatrick17k whose fitzpatrick17k.csv (16,577 rows) derma reads.
FITZPATRICK17K_COMMIT = "9865ce95b4b2035a1b311644ca00e028d1c4e74c"
FITZPATRICK17K_CSV = "fitzpatrick17k.csv"
FITZPATRICK17K_CSV_SHA256 = "851dfaabf1791c2a8b1c2957619f3e0673cf0002f4ce924a5c02d185c7d4a1cd"
FITZPATRICK17K_IMAGES = "images"
#: The report of the images that could not be fetched (md5hash,url,reason), next to the CSV.
FAILURE_REPORT = "download_failures.csv"
FITZPATRICK17K_HINT = ("the images come from the atlases' own sites; for a complete copy ask the authors for the image "
                       "archive (form linked at https://github.com/mattgroh/fitzpatrick17k)")
_IMAGE_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))


class RateLimiter:
    """At most one request every ``interval`` seconds to each host, across threads."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic, sleep: Sleep = time.sleep):
        self.interval = float(interval)
        self._clock, self._sleep = clock, sleep
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> float:
        """Block until ``host`` may be asked again; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.interval
        delay = start - now
        if delay > 0:
            self._sleep(delay)
        return delay


def _image_suffix(head: bytes) -> str | None:
    for magic, suffix in _IMAGE_MAGIC:
        if head.startswith(magic):
            return suffix
    return None


def fetch_image(url: str, stem: Path, limiter: RateLimiter, retries: int = 2, timeout: float = 30.0,
                sleep: Sleep = time.sleep) -> tuple[Path | None, str]:
    """One image from ``url`` to ``stem`` + ``.jpg``/``.png`` (by its content; written to a
    ``.part`` file and renamed, so a half image never stays). Returns (path, "") or (None, reason)."""
    host = urllib.parse.urlsplit(url).netloc
    if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not host:
        return None, "not an http(s) url"
    reason = ""
    for attempt in range(retries + 1):
        limiter.wait(host)
        try:
            with _request(url, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                return None, reason
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
            reason = f"no answer ({getattr(exc, 'reason', exc)})"
        else:
            suffix = _image_suffix(body)
            if suffix is None:
                return None, f"not a JPEG or PNG image ({len(body)} bytes starting {body[:16]!r})"
            dest = stem.with_suffix(suffix)
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(body)
            os.replace(part, dest)
            return dest, ""
        if attempt < retries:
            sleep(min(2 ** attempt, 30))
    return None, reason


def download_fitzpatrick17k(out: str | os.PathLike, options: Mapping[str, str] | None = None, progress: bool = True,
                            *, server: str | None = None, retries: int = 2, workers: int = 4, interval: float = 1.0,
                            keep_archives: bool = True, log: Log = print, sleep: Sleep = time.sleep,
                            timeout: float = 30.0) -> Path:
    """Fitzpatrick17k into ``out``: ``fitzpatrick17k.csv`` (kept when already there, else the
    official file, SHA-256-checked) and ``images/<md5hash>.jpg`` fetched from each row's ``url``,
    at most one request per ``interval`` seconds to each host. Images already there are kept, so
    running again retries only the missing ones. The images that fail are listed with the reason
    in ``download_failures.csv``; any failure raises :class:`DownloadError` after the others were
    fetched (never a silent partial set). ``retries`` applies to each image (no archives:
    ``keep_archives`` is accepted for the common downloader keywords)."""
    from ..progress import progress as tqdm  # tqdm on a terminal, whole lines in a log file

    out = Path(out)
    table = out / FITZPATRICK17K_CSV
    if not table.exists():
        base = _base(server, "DERMA_GITHUB_RAW_URL", GITHUB_RAW_URL)
        log(f"downloading {FITZPATRICK17K_CSV}")
        download_file(f"{base}/mattgroh/fitzpatrick17k/{FITZPATRICK17K_COMMIT}/{FITZPATRICK17K_CSV}", table,
                      checksum=("sha256", FITZPATRICK17K_CSV_SHA256), source="derma (the pinned official file)",
                      hint=f"download {FITZPATRICK17K_CSV} by hand from https://github.com/mattgroh/fitzpatrick17k "
                           f"into {out} and run the command again", retries=retries, progress=progress, sleep=sleep)
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DownloadError(f"{table}: cannot be read as a CSV table ({exc}); delete it and run the command "
                            "again") from None
    if not rows or "md5hash" not in rows[0] or "url" not in rows[0]:
        raise DownloadError(f"{table}: no md5hash and url columns; delete it and run the command again")
    folder = out / FITZPATRICK17K_IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    present = {p.stem for p in folder.iterdir() if p.suffix in (".jpg", ".png") and p.stat().st_size > 0}
    wanted: dict[str, str] = {}
    for row in rows:
        wanted.setdefault((row.get("md5hash") or "").strip(), (row.get("url") or "").strip())
    wanted.pop("", None)
    failed: list[tuple[str, str, str]] = [(md5, url, "no url in the CSV") for md5, url in wanted.items()
                                          if md5 not in present and not url]
    todo = [(md5, url) for md5, url in wanted.items() if md5 not in present and url]
    limiter = RateLimiter(interval, sleep=sleep)
    fetched = 0
    log(f"Fitzpatrick17k: {len(wanted) - len(todo) - len(failed)} of {len(wanted)} images already in {folder}; "
        f"fetching {len(todo)} (at most one request per {interval:g} s per host)")
    bar = tqdm(total=len(todo), unit="img", desc="fitzpatrick17k", disable=not progress, leave=False,
               dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            jobs = {pool.submit(fetch_image, url, folder / md5, limiter, retries, timeout, sleep): (md5, url)
                    for md5, url in todo}
            for job in jobs:
                path, reason = job.result()
                bar.update(1)
                if path is None:
                    failed.append((*jobs[job], reason))
                else:
                    fetched += 1
    finally:
        bar.close()
    report = out / FAILURE_REPORT
    have = len(wanted) - len(failed)
    log(f"Fitzpatrick17k: {have} of {len(wanted)} images in {folder} ({fetched} fetched now)")
    if failed:
        with atomic_open(report, "w", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("md5hash", "url", "reason"))
            writer.writerows(sorted(failed))
        raise DownloadError(f"{len(failed)} of {len(wanted)} Fitzpatrick17k images could not be fetched (each with "
                            f"its reason in {report}); run the command again to retry them (the {have} there are "
                            f"kept) or {FITZPATRICK17K_HINT}")
    if report.exists():
        report.unlink()
    log(f"Fitzpatrick17k is complete in {out}; {_next_step('fitzpatrick17k', out)}")
    return out


__all__ = ["DownloadError", "download_file", "safe_extract", "Remote", "RemoteFile", "list_files", "fetch",
           "s3_remote", "mendeley_files", "RateLimiter", "fetch_image", "dermamnist_filename",
           "download_ham10000", "download_isic2019", "download_isic2020", "download_pad_ufes_20",
           "download_dermamnist", "download_fitzpatrick17k", "DERMAMNIST_MD5", "FAILURE_REPORT"]
