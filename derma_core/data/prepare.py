"""``derma prep``: raw folder -> verified, split, resized, cached prepared folder.

A prepared folder holds::

    manifest.json           digests, parameters, counts by split and class (written last)
    prep_report.json        every problem found, one entry each, and the summary counts
    splits/{train,val,test}.csv   id, label, lesion_id, image_path and the metadata columns
    splits/folds.csv        with --folds K: lesion-grouped CV folds of train+val
    images/<id>.jpg         the resized images (JPEG quality 95)
    cache/images.npy        uint8 (N, size, size, 3), rows = train, then val, then test rows
    class_distribution.png  images per class and split
    state.json              per-image fingerprints, for incremental re-runs

Re-running with the same inputs and parameters does nothing; changed or added images are
resized again and the rest copied from the previous cache; a different size or resize mode
rebuilds. An interrupted run resumes from ``cache/images.partial.npy``. Every file is written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..labels import LABELS
from . import raw as rawmod
from .raw import PrepError, Problem, RawData
from .resize import RESIZE_MODES, missing_rows, resampler, resize_into_cache
from .splits import SPLITS, check_no_leakage, counts_table, grouped_folds, grouped_split, seed_split

PREP_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "prep_report.json"
STATE = "state.json"
CACHE_FILE = "cache/images.npy"
PARTIAL = "cache/images.partial.npy"
PARTIAL_LOG = "cache/images.partial.log"
PARTIAL_PLAN = "cache/images.partial.json"
SPLIT_MODES = ("seed", "grouped")
#: Problems listed per kind on the terminal; prep_report.json has all of them.
SHOW_PER_CODE = 10


@dataclass
class PrepParams:
    size: int = 224
    split: str = "seed"
    seed: int = 42
    resize: str = "squash"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    folds: int | None = None

    def check(self) -> None:
        if self.split not in SPLIT_MODES:
            raise PrepError(f"error: --split {self.split!r}: use one of {', '.join(SPLIT_MODES)}")
        if self.resize not in RESIZE_MODES:
            raise PrepError(f"error: --resize {self.resize!r}: use one of {', '.join(RESIZE_MODES)}")
        if not 8 <= self.size <= 4096:
            raise PrepError(f"error: --size {self.size}: use a side between 8 and 4096 pixels")
        if self.folds is not None and self.folds < 2:
            raise PrepError(f"error: --folds {self.folds}: use at least 2 (or leave it out)")

    def as_dict(self) -> dict:
        d = {"size": self.size, "split": self.split, "seed": self.seed, "resize": self.resize,
             "folds": self.folds}
        if self.split == "grouped":
            d["ratios"] = [float(r) for r in self.ratios]
        return d


# ---------------------------------------------------------------- atomic file helpers

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    from ..tracking import table_csv

    atomic_write_text(path, table_csv(frame))


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on ``folder`` (so two processes never prepare into it at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "w")
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: no locking
            pass
        yield
    finally:
        handle.close()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


# ---------------------------------------------------------------- reporting

def format_problems(problems: list[Problem], limit: int = SHOW_PER_CODE) -> list[str]:
    """One line per problem, at most ``limit`` per kind plus a count of the rest."""
    lines, shown = [], Counter()
    totals = Counter(p.code for p in problems)
    for p in problems:
        shown[p.code] += 1
        if shown[p.code] <= limit:
            lines.append(p.line())
        elif shown[p.code] == limit + 1:
            lines.append(f"... and {totals[p.code] - limit} more {p.code} problems (see {REPORT})")
    return lines


def _write_report(out: Path, problems: list[Problem], summary: dict) -> None:
    by_code = Counter(p.code for p in problems)
    atomic_write_json(out / REPORT, {
        "summary": summary,
        "problem_counts": dict(by_code),
        "fatal": sum(p.fatal for p in problems),
        "warnings": sum(not p.fatal for p in problems),
        "problems": [p.as_dict() for p in problems],
    })


def _fail(out: Path, problems: list[Problem], summary: dict, strict: bool, log: Callable[[str], None]) -> None:
    fatal = [p for p in problems if p.fatal or strict]
    _write_report(out, problems, summary)
    why = "--strict turns warnings into errors; " if strict and not any(p.fatal for p in problems) else ""
    head = (f"error: preparation stopped: {len(fatal)} problem(s) that would make results wrong "
            f"({why}details in {out / REPORT})")
    raise PrepError("\n".join(format_problems(fatal) + [head]))


# ---------------------------------------------------------------- the pipeline

def prepare(raw_dir: str | os.PathLike | RawData, out: str | os.PathLike, params: PrepParams | None = None, *,
            workers: int | None = None, strict: bool = False, name: str = "ham10000", synthetic: bool = False,
            progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Prepare ``raw_dir`` into ``out`` (see the module docstring); returns the manifest.

    Raises :class:`~derma_core.data.raw.PrepError` with one line per fatal problem.
    """
    params = params or PrepParams()
    params.check()
    out = Path(out)
    try:
        with folder_lock(out):
            return _prepare_locked(raw_dir, out, params, workers, strict, name, synthetic, progress, log)
    except OSError as exc:
        if not _is_write_error(exc):
            raise
        failed = exc
    if failed.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and (out / MANIFEST).exists():
        # a read-only folder already prepared with these inputs is fine: say it is up to date
        with contextlib.suppress(OSError):
            return _prepare_locked(raw_dir, out, params, workers, strict, name, synthetic, progress, log,
                                   read_only=True)
    raise PrepError(_write_error_line(out, failed))


def _is_write_error(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _write_error_line(out: Path, exc: OSError) -> str:
    where = exc.filename or out
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"error: {where}: {exc.strerror or 'no space left on device'}; free space on that disk (or "
                f"choose another --out) and run the same command again: it resumes where this one stopped")
    return (f"error: {where}: cannot write there ({exc.strerror or exc}); choose a writable --out "
            f"or make {out} writable")


def _prepare_locked(raw_dir, out: Path, params: PrepParams, workers, strict, name, synthetic, progress, log,
                    read_only: bool = False) -> dict:
    started = time.time()
    data = raw_dir if isinstance(raw_dir, RawData) else rawmod.scan_raw(raw_dir, exclude=out)
    meta = data.metadata
    problems = list(data.problems)

    metadata_sha = sha256_file(data.metadata_path)
    rel = {i: os.path.relpath(p, data.root) for i, p in data.images.items()}
    fps = {i: _fingerprint(data.images[i]) for i in meta["image_id"]}
    resampling = resampler()  # a different resize library gives (slightly) different pixels
    fingerprint = hashlib.sha256(json.dumps({
        "version": PREP_VERSION, "params": params.as_dict(), "metadata": metadata_sha, "strict": strict,
        "resampler": resampling,
        "images": sorted((i, rel[i], fps[i]) for i in meta["image_id"]),
    }).encode()).hexdigest()

    manifest_path = out / MANIFEST
    if manifest_path.exists() and (out / CACHE_FILE).exists():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(manifest_path.read_text())
            if old.get("fingerprint") == fingerprint:
                log(f"{out}: up to date (same inputs and parameters), nothing to do")
                return old
    if read_only:  # cannot write: stop before anything (the caller says why)
        raise PermissionError(errno.EACCES, "read-only", str(out))

    summary = {"metadata_rows": int(len(meta)), "images_found": len(data.images)}
    if any(p.fatal for p in problems) or (strict and problems):
        _fail(out, problems, summary, strict, log)
    if meta.empty:
        raise PrepError(f"error: {data.metadata_path}: no usable rows; see {out / REPORT}")

    # ---- split (on rows whose image exists; images that fail to decode are dropped later)
    if params.split == "seed":
        assignment = seed_split(meta, params.seed)
    else:
        assignment = grouped_split(meta, params.ratios, params.seed)
    check_no_leakage(meta, assignment)
    meta = meta.assign(split=assignment.to_numpy())
    order = pd.concat([meta[meta["split"] == s] for s in SPLITS])  # metadata order within a split
    order = order.reset_index(drop=True)
    ids = order["image_id"].tolist()

    # ---- resize into the cache, reusing rows of a previous run where inputs are unchanged
    (out / "cache").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    shape = (len(order), params.size, params.size, 3)
    params_key = [PREP_VERSION, params.size, params.resize, resampling]
    plan = hashlib.sha256(json.dumps([params_key, [(i, rel[i], fps[i]) for i in ids]]).encode()).hexdigest()
    shas: dict[int, str] = {}
    errors: dict[int, str] = {}
    partial, log_path, plan_path = out / PARTIAL, out / PARTIAL_LOG, out / PARTIAL_PLAN
    resumed = False
    if partial.exists() and plan_path.exists() and log_path.exists():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(plan_path.read_text()).get("plan") == plan:
                for line in log_path.read_text().splitlines():
                    parts = line.split("\t")
                    if len(parts) == 3 and parts[0].isdigit():
                        row = int(parts[0])
                        if parts[1]:
                            shas[row] = parts[1]
                        else:
                            errors[row] = parts[2]
                resumed = True
    if resumed:
        cache = np.load(partial, mmap_mode="r+")
        if cache.shape != shape:
            resumed, shas, errors = False, {}, {}
        del cache
    if resumed:
        for row in missing_rows(partial, shas):  # rows are not fsynced: one lost in a power cut is all zeros
            del shas[row]
        log(f"resuming an interrupted preparation: {len(shas) + len(errors)} of {len(ids)} images already done")
    else:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()
        atomic_write_json(plan_path, {"plan": plan})
        log_path.write_text("")

    reused = _reuse_previous(out, params_key, ids, rel, fps, partial, shas, errors)
    todo = [(row, str(data.images[i]), str(out / "images" / f"{i}.jpg"))
            for row, i in enumerate(ids) if row not in shas and row not in errors]
    with open(log_path, "a") as logf:
        def record(results):
            for row, sha, err in results:
                if sha is not None:
                    shas[row] = sha
                else:
                    errors[row] = err or "unknown error"
                logf.write(f"{row}\t{sha or ''}\t{(err or '').replace(chr(9), ' ')}\n")
            logf.flush()
            os.fsync(logf.fileno())

        if reused:
            record([(row, shas[row], None) for row in reused])
        if todo:
            resize_into_cache(partial, todo, params.size, params.resize, workers=workers, on_done=record,
                              progress=progress)

    for row, err in sorted(errors.items()):
        src = data.images[ids[row]]
        kind = "truncated_image" if "truncated" in err.lower() else (
            "empty_image" if "empty" in err.lower() else "undecodable_image")
        problems.append(Problem(kind, str(src), f"cannot be decoded ({err})",
                                "re-download or replace the file; the row is skipped"))
    if strict and problems:
        _fail(out, problems, summary, strict, log)

    # ---- drop failed rows, publish the cache
    good = np.array([row not in errors for row in range(len(ids))], dtype=bool)
    final_cache = out / CACHE_FILE
    # the old manifest and state describe the old cache: remove them before it is replaced, so
    # a crash from here on leaves a folder that is rebuilt, never one that is misread
    (out / MANIFEST).unlink(missing_ok=True)
    (out / STATE).unlink(missing_ok=True)
    if good.all():
        os.replace(partial, final_cache)
    else:
        src_cache = np.load(partial, mmap_mode="r")
        tmp = out / "cache" / ".images.compact.npy"
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(good.sum()),) + shape[1:])
        keep_rows = np.flatnonzero(good)
        for start in range(0, len(keep_rows), 512):
            dst[start:start + 512] = src_cache[keep_rows[start:start + 512]]
        dst.flush()
        del dst, src_cache
        os.replace(tmp, final_cache)
        partial.unlink()
    order = order[good].reset_index(drop=True)
    row_shas = [shas[row] for row in np.flatnonzero(good)]

    # ---- split tables, folds, digests, figure, report, state, manifest (last)
    meta_cols = [c for c in order.columns if c not in ("image_id", "dx", "lesion_id", "split")]
    table = pd.DataFrame({"id": order["image_id"], "label": order["dx"], "lesion_id": order["lesion_id"],
                          "image_path": "images/" + order["image_id"] + ".jpg"})
    for col in meta_cols:
        table[col] = order[col].to_numpy()
    offsets, start = {}, 0
    for s in SPLITS:
        part = table[order["split"] == s].reset_index(drop=True)
        atomic_write_csv(out / "splits" / f"{s}.csv", part)
        offsets[s] = [start, start + len(part)]
        start += len(part)
    counts = counts_table(order, order["split"], LABELS)
    missing_classes = {s: [c for c in LABELS if counts.get(s, {}).get("by_class", {}).get(c, 0) == 0] for s in SPLITS}
    for s, missing in missing_classes.items():
        if missing:
            problems.append(Problem("class_missing_from_split", f"split {s}",
                                    f"no images of {', '.join(missing)}",
                                    "metrics for those classes will be undefined there; add data or use --split grouped"))
    if strict and any(p.code == "class_missing_from_split" for p in problems):
        _fail(out, problems, summary, strict, log)
    folds_info = None
    if params.folds:
        pool = order[order["split"].isin(("train", "val"))]
        fold = grouped_folds(pool, params.folds, params.seed)
        check_no_leakage(pool, fold)
        atomic_write_csv(out / "splits" / "folds.csv",
                         pd.DataFrame({"id": pool["image_id"], "lesion_id": pool["lesion_id"], "label": pool["dx"],
                                       "fold": fold.astype(int).to_numpy()}))
        folds_info = {"k": params.folds, "counts": counts_table(pool, fold.astype(int).astype(str), LABELS)}

    digest = hashlib.sha256(json.dumps({
        "params": params.as_dict(), "resampler": resampling,
        "rows": [[s, i, l, g, h] for s, i, l, g, h in zip(order["split"], order["image_id"], order["dx"],
                                                          order["lesion_id"], row_shas)],
    }).encode()).hexdigest()
    with contextlib.suppress(Exception):  # a figure problem must not fail the preparation
        _class_figure(counts, out / "class_distribution.png", name)

    summary.update({"images_prepared": int(len(order)), "images_dropped": int((~good).sum()),
                    "images_resized": len(todo), "images_reused": len(reused),
                    "seconds": round(time.time() - started, 2)})
    _write_report(out, problems, summary)
    keep_ids = set(order["image_id"])
    for stale in (out / "images").glob("*.jpg"):
        if stale.stem not in keep_ids:
            stale.unlink()
    atomic_write_json(out / STATE, {
        "params_key": params_key,
        "images": {i: {"src": rel[i], "fp": fps[i], "sha256": h, "row": k}
                   for k, (i, h) in enumerate(zip(order["image_id"], row_shas))},
    })
    manifest = {
        "format": "derma-prepared", "version": PREP_VERSION, "name": name, "synthetic": synthetic,
        "digest": digest, "fingerprint": fingerprint, "params": params.as_dict(), "resampler": resampling,
        "source": {"raw": str(data.root), "metadata": data.metadata_path.name, "metadata_sha256": metadata_sha},
        "counts": counts, "folds": folds_info,
        "cache": {"file": CACHE_FILE, "shape": [len(order), params.size, params.size, 3], "dtype": "uint8",
                  "rows": offsets},
        "problems": {"fatal": 0, "warnings": len(problems)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(manifest_path, manifest)
    for leftover in (log_path, plan_path):
        leftover.unlink(missing_ok=True)
    for line in format_problems(problems):
        log(line)
    log(_summary_line(out, counts, summary, problems))
    return manifest


def _reuse_previous(out: Path, params_key, ids, rel, fps, partial: Path, shas: dict, errors: dict) -> list[int]:
    """Copy rows of the previous cache whose source file is unchanged (same path, size, mtime)."""
    state_path, old_cache = out / STATE, out / CACHE_FILE
    if not (state_path.exists() and old_cache.exists()):
        return []
    try:
        state = json.loads(state_path.read_text())
        if state.get("params_key") != params_key:
            return []
        old = np.load(old_cache, mmap_mode="r")
    except (ValueError, OSError):
        return []
    previous = state.get("images", {})
    reused = []
    new = np.load(partial, mmap_mode="r+")
    for row, i in enumerate(ids):
        if row in shas or row in errors:
            continue
        entry = previous.get(i)
        if (entry and entry.get("src") == rel[i] and entry.get("fp") == fps[i]
                and 0 <= entry.get("row", -1) < len(old) and (out / "images" / f"{i}.jpg").exists()):
            new[row] = old[entry["row"]]
            shas[row] = entry["sha256"]
            reused.append(row)
    new.flush()
    del new, old
    return reused


def _summary_line(out: Path, counts: dict, summary: dict, problems: list[Problem]) -> str:
    parts = ", ".join(f"{s} {counts[s]['images']} images/{counts[s]['lesions']} lesions" for s in SPLITS if s in counts)
    return (f"prepared {summary['images_prepared']} images into {out} ({parts}); "
            f"{summary['images_resized']} resized, {summary['images_reused']} reused, "
            f"{summary['images_dropped']} dropped; {len(problems)} warning(s) in {REPORT}; "
            f"{summary['seconds']} s")


def _class_figure(counts: dict, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(SPLITS)
    x = np.arange(len(LABELS))
    for k, s in enumerate(SPLITS):
        values = [counts.get(s, {}).get("by_class", {}).get(c, 0) for c in LABELS]
        bars = ax.bar(x + (k - 1) * width, values, width, label=f"{s} ({sum(values)})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, LABELS)
    ax.set_yscale("symlog")
    ax.set_ylabel("images")
    ax.set_title(f"{name}: images per class and split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading a prepared folder

def load_prepared(folder: str | os.PathLike, fold: int | None = None, name: str | None = None):
    """The :class:`~derma_core.interfaces.Dataset` in a folder written by :func:`prepare`.

    Each split's ``cache`` is a read-only memory map (a slice of ``cache/images.npy``). With
    ``fold`` (from ``--folds K``), val is that cross-validation fold of train+val and train the
    rest (their caches are then gathered into memory).
    """
    from ..interfaces import Dataset, Split

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        hint = ("it looks like a raw HAM10000 folder: run `derma prep --raw "
                f"{folder} --out PREPARED_DIR` and point data.dir at PREPARED_DIR"
                if (folder / "HAM10000_metadata.csv").exists() else "run `derma prep --raw RAW --out DIR` first")
        raise FileNotFoundError(f"{folder}: not a prepared dataset (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        raise ValueError(f"{manifest_path}: not valid JSON; re-run `derma prep`") from None
    cache_info = manifest.get("cache") or {}
    cache = None
    cache_file = folder / cache_info.get("file", CACHE_FILE)
    if cache_file.exists():
        cache = np.load(cache_file, mmap_mode="r")
        if list(cache.shape) != list(cache_info.get("shape", cache.shape)):
            raise ValueError(f"{cache_file}: shape {cache.shape} does not match {MANIFEST} "
                             f"{cache_info.get('shape')}; re-run `derma prep`")
    splits = {}
    for s in SPLITS:
        path = folder / "splits" / f"{s}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; re-run `derma prep`")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        part = None
        if cache is not None:
            lo, hi = cache_info["rows"][s]
            if hi - lo != len(frame):
                raise ValueError(f"{path}: {len(frame)} rows but the cache holds {hi - lo}; re-run `derma prep`")
            part = cache[lo:hi]
        splits[s] = Split(s, frame, folder, part)
    if fold is not None:
        splits = _fold_splits(folder, manifest, splits, int(fold))
    return Dataset(name=name or manifest.get("name", folder.name), digest=manifest["digest"] if fold is None
                   else hashlib.sha256(f"{manifest['digest']}-fold{fold}".encode()).hexdigest(),
                   splits=splits, synthetic=bool(manifest.get("synthetic")), dir=folder, manifest=manifest)


def _fold_splits(folder: Path, manifest: dict, splits: dict, fold: int) -> dict:
    from ..interfaces import Split

    path = folder / "splits" / "folds.csv"
    if not path.exists():
        raise FileNotFoundError(f"data.fold={fold} but {folder} has no cross-validation folds; "
                                "prepare it with `derma prep ... --folds K`")
    folds = pd.read_csv(path, dtype=str, keep_default_na=False)
    k = int(manifest.get("folds", {}).get("k", folds["fold"].astype(int).max() + 1))
    if not 0 <= fold < k:
        raise ValueError(f"data.fold={fold}: {folder} has folds 0..{k - 1}")
    pool_frame = pd.concat([splits["train"].frame, splits["val"].frame], ignore_index=True)
    caches = [splits["train"].cache, splits["val"].cache]
    fold_of = dict(zip(folds["id"], folds["fold"].astype(int)))
    in_fold = pool_frame["id"].map(fold_of).to_numpy() == fold
    out = dict(splits)
    for name, mask in (("train", ~in_fold), ("val", in_fold)):
        idx = np.flatnonzero(mask)
        cache = None
        if all(c is not None for c in caches):
            n_train = len(caches[0])
            cache = np.concatenate([np.asarray(caches[0][idx[idx < n_train]]),
                                    np.asarray(caches[1][idx[idx >= n_train] - n_train])])
        out[name] = Split(name, pool_frame.iloc[idx].reset_index(drop=True), folder, cache)
    return out
