"""``derma prep``: raw folder -> verified, split, resized, cached prepared folder, for any
dataset with a descriptor (its reader reads the raw folder; verification, splitting and
resizing are the same for every dataset).

A prepared folder holds::

    manifest.json           digests, parameters, counts by split and class, and the dataset's
                            facts (label set, grouping, modality, subgroups, licence; written last)
    prep_report.json        every problem found, one entry each, and the summary counts
    splits/{train,val,test}.csv   id, label, group_id, image_path and the metadata columns (one named
                            like those four, e.g. a raw ``label``, is kept as ``raw_label``)
    splits/folds.csv        with --folds K: group-level CV folds of train+val
    images/<id>.jpg         the resized images (JPEG quality 95)
    cache/images.npy        uint8 (N, size, size, 3), rows = train, then val, then test rows
    class_distribution.png  images per class and split
    state.json              per-image fingerprints, for incremental re-runs

Re-running with the same inputs and parameters does nothing; changed or added images are
resized again and the rest copied from the previous cache; a different size or resize mode
rebuilds. An interrupted run resumes from ``cache/images.partial.npy``. Every file is written
under a temporary name and renamed into place.

The manifest records the cache's size and a sha256 per 256 rows (``cache.integrity``). A re-run
that finds nothing to do checks the size and a sample of chunks (``--verify``: every chunk), and
:func:`load_prepared` checks the size and a sample before a run trusts the cache; a damaged cache
is repaired by re-running: only the rows of the damaged chunks are resized again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_json as atomic_write_json, write_text as atomic_write_text
from ..labels import LabelSet
from . import raw as rawmod
from .raw import PrepError, Problem, RawData
from .resize import (DECODE_VERSION, DEFAULT_MIN_SIDE, RESIZE_MODES, CacheCheck, cache_record,
                     check_cache, error_code, missing_rows, open_rows, read_header, resampler, resize_into_cache)
from .splits import (SPLITS, check_no_leakage, counts_table, grouped_folds, grouped_split, leaking_groups,
                     official_split, seed_split)

if TYPE_CHECKING:  # pragma: no cover
    from .descriptor import DatasetDescriptor

#: 2: any dataset (a "dataset" block in the manifest, group_id in the split tables)
PREP_VERSION = 2
MANIFEST = "manifest.json"
REPORT = "prep_report.json"
STATE = "state.json"
CACHE_FILE = "cache/images.npy"
PARTIAL = "cache/images.partial.npy"
PARTIAL_LOG = "cache/images.partial.log"
PARTIAL_PLAN = "cache/images.partial.json"
SPLIT_MODES = ("seed", "grouped", "official")
#: Problems listed per kind on the terminal; prep_report.json has all of them.
SHOW_PER_CODE = 10


@dataclass
class PrepParams:
    """How a dataset is prepared. ``split`` None is the dataset's own default: ``official``
    where it has an official split, else ``grouped``; ``seed`` is the original HAM10000
    study's split (HAM10000's label set only)."""

    size: int = 224
    split: str | None = None
    seed: int = 42
    resize: str = "squash"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    folds: int | None = None
    min_side: int = DEFAULT_MIN_SIDE

    def check(self) -> None:
        if self.split is not None and self.split not in SPLIT_MODES:
            raise PrepError(f"error: --split {self.split!r}: use one of {', '.join(SPLIT_MODES)}")
        if self.resize not in RESIZE_MODES:
            raise PrepError(f"error: --resize {self.resize!r}: use one of {', '.join(RESIZE_MODES)}")
        if not 8 <= self.size <= 4096:
            raise PrepError(f"error: --size {self.size}: use a side between 8 and 4096 pixels")
        if self.folds is not None and self.folds < 2:
            raise PrepError(f"error: --folds {self.folds}: use at least 2 (or leave it out)")
        if self.min_side < 1:
            raise PrepError(f"error: --min-side {self.min_side}: use at least 1 pixel")

    def as_dict(self) -> dict:
        d = {"size": self.size, "split": self.split, "seed": self.seed, "resize": self.resize,
             "folds": self.folds}
        if self.split in ("grouped", "official"):
            d["ratios"] = [float(r) for r in self.ratios]
        if self.min_side != DEFAULT_MIN_SIDE:  # only when set: the default keeps earlier digests
            d["min_side"] = self.min_side
        return d

    def for_dataset(self, descriptor: "DatasetDescriptor", label_set: LabelSet) -> "PrepParams":
        """These parameters with the split resolved for ``descriptor``; a one-line
        :class:`PrepError` where the split does not apply to it."""
        split = self.split or ("official" if descriptor.split_policy == "official" else "grouped")
        if split == "seed":
            from .datasets.ham10000 import require_ham10000

            try:
                require_ham10000(label_set, "--split seed")
            except ValueError as exc:
                raise PrepError(f"error: dataset {descriptor.name}: {exc}, e.g. --split grouped") from None
        if split == "official" and descriptor.split_policy != "official":
            raise PrepError(f"error: --split official: dataset {descriptor.name} has no official split; use "
                            "--split grouped")
        return replace(self, split=split)


# ---------------------------------------------------------------- atomic file helpers

def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    """A table as derma writes every CSV (:func:`derma_core.tracking.table_csv`), atomically."""
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

def resolve_dataset(dataset: "DatasetDescriptor | str") -> "DatasetDescriptor":
    """A descriptor, or the registered one of that name (a one-line :class:`PrepError` naming
    the known datasets otherwise)."""
    from .descriptor import DatasetDescriptor

    if isinstance(dataset, DatasetDescriptor):
        return dataset
    from .sources import registered_descriptor, registered_names

    found = registered_descriptor(str(dataset))
    if found is None:
        raise PrepError(f"error: unknown dataset {str(dataset)!r}; known: {', '.join(registered_names())} "
                        "(`derma datasets` describes them)")
    return found


def prepare(raw_dir: str | os.PathLike | RawData, out: str | os.PathLike, params: PrepParams | None = None, *,
            workers: int | None = None, strict: bool = False, name: str | None = None, synthetic: bool | None = None,
            progress: bool = True, log: Callable[[str], None] = print,
            dataset: "DatasetDescriptor | str" = "ham10000", options: Mapping[str, Any] | None = None,
            verify: bool = False) -> dict:
    """Prepare ``raw_dir`` (a raw folder that ``dataset``'s reader reads, or a :class:`RawData`)
    into ``out`` (see the module docstring); returns the manifest.

    ``options`` are the dataset's preparation options (``--option KEY=VALUE``); ``name`` (the
    MLflow experiment) defaults to the dataset's name; ``synthetic`` defaults to what the raw
    folder's :data:`~derma_core.data.synthetic.MARKER` says; ``verify`` checks every chunk of an
    up-to-date cache (not a sample) before saying so. Raises
    :class:`~derma_core.data.raw.PrepError` with one line per fatal problem.
    """
    params = params or PrepParams()
    params.check()
    descriptor = resolve_dataset(dataset)
    try:
        opts = descriptor.resolve_options(options)
        label_set = descriptor.label_set(opts)
    except ValueError as exc:
        raise PrepError(f"error: {exc}") from None
    params = params.for_dataset(descriptor, label_set)
    job = _Job(descriptor, opts, label_set, name, synthetic, verify)
    out = Path(out)
    try:
        with folder_lock(out):
            return _prepare_locked(raw_dir, out, params, workers, strict, job, progress, log)
    except OSError as exc:
        if not _is_write_error(exc):
            raise
        failed = exc
    if failed.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and (out / MANIFEST).exists():
        # a read-only folder already prepared with these inputs is fine: say it is up to date
        with contextlib.suppress(OSError):
            return _prepare_locked(raw_dir, out, params, workers, strict, job, progress, log, read_only=True)
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


@dataclass
class _Job:
    """What is prepared: the dataset, its options and label set, the manifest's name and
    whether the data is synthetic (None: the raw folder's marker says)."""

    descriptor: "DatasetDescriptor"
    options: dict
    label_set: LabelSet
    name: str | None
    synthetic: bool | None
    verify: bool = False


def read_raw(raw_dir: str | os.PathLike | RawData, descriptor: "DatasetDescriptor", options: Mapping[str, str],
             label_set: LabelSet, official: bool = False, exclude: Path | None = None) -> RawData:
    """``descriptor``'s reader on ``raw_dir`` (skipping ``exclude``), then the generic
    verification (:func:`~derma_core.data.raw.verify`)."""
    if isinstance(raw_dir, RawData):
        data = raw_dir
    else:
        if descriptor.reader is None:
            access = f": {descriptor.access}" if descriptor.access else ""
            raise PrepError(f"error: dataset {descriptor.name} has no raw-folder reader, so `derma prep` cannot read "
                            f"it{access}")
        with rawmod.excluding(*([exclude] if exclude is not None else [])):
            data = descriptor.reader(Path(raw_dir), dict(options))
    if data.verified:
        return data
    return rawmod.verify(data, descriptor, label_set, official_split=official)


def _table_sha(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


@dataclass
class _Inputs:
    """What a preparation reads: the verified raw data, the problems found so far, and the
    fingerprint of every input and parameter (the same fingerprint: nothing to do)."""

    data: RawData
    problems: list[Problem]
    synthetic: bool
    name: str
    facts: dict
    metadata_sha: str
    rel: dict[str, str]  # image id -> its path under the raw folder
    fps: dict[str, list]  # image id -> [size, mtime_ns]
    resampling: str
    fingerprint: str


@dataclass
class _Rows:
    """The cache rows done so far: the sha256 of each resized row, the error of each refused
    one, and per row the image's size and the decoder's warnings."""

    shas: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    notes: dict[int, dict] = field(default_factory=dict)


def _prepare_locked(raw_dir, out: Path, params: PrepParams, workers, strict, job: _Job, progress, log,
                    read_only: bool = False) -> dict:
    started = time.time()
    descriptor = job.descriptor
    inputs = _read_inputs(raw_dir, out, params, strict, job)
    old, known = _check_up_to_date(out, inputs.fingerprint, inputs.synthetic, job, read_only, log)
    if old is not None:
        return old
    if read_only:  # cannot write: stop before anything (the caller says why)
        raise PermissionError(errno.EACCES, "read-only", str(out))
    data, problems = inputs.data, inputs.problems
    summary = {"metadata_rows": int(len(data.metadata)), "images_found": len(data.images)}
    if any(p.fatal for p in problems) or (strict and problems):
        _fail(out, problems, summary, strict, log)
    if data.metadata.empty:
        raise PrepError(f"error: {data.metadata_path}: no usable rows; see {out / REPORT}")

    order = _split_rows(out, data, params, descriptor, problems, summary, strict, log)
    ids = order["image_id"].tolist()
    params_key = [PREP_VERSION, params.size, params.resize, inputs.resampling]
    rows, reused, todo = _resize_rows(out, inputs, params, params_key, ids, workers, progress, known, log)
    for row, err in sorted(rows.errors.items()):
        problems.append(_image_problem(str(data.images[ids[row]]), *error_code(err)))
    for row in sorted(set(rows.notes) - set(rows.errors)):
        for text in rows.notes[row].get("warnings") or []:
            problems.append(_warning_problem(str(data.images[ids[row]]), text))
    if strict and problems:
        _fail(out, problems, summary, strict, log)

    good = np.array([row not in rows.errors for row in range(len(ids))], dtype=bool)
    if not good.all():  # the refused images must not empty a split (the resized rows stay for the rerun)
        from .feasibility import check_kept_rows

        check_kept_rows(order, good, descriptor, data.metadata_path)
    _publish_cache(out, good, (len(ids), params.size, params.size, 3))
    order = order[good].reset_index(drop=True)
    kept_rows = np.flatnonzero(good)
    row_shas = [rows.shas[row] for row in kept_rows]
    integrity = cache_record(out / CACHE_FILE, len(order), params.size)  # checked on every use

    # ---- split tables, folds, digests, figure, report, state, manifest (last)
    offsets = _write_split_tables(out, order)
    codes = job.label_set.codes
    counts = counts_table(order, order["split"], codes)
    problems.extend(_missing_class_problems(counts, codes, params.split))
    if strict and any(p.code == "class_missing_from_split" for p in problems):
        _fail(out, problems, summary, strict, log)
    folds_info = _write_folds(out, order, params, codes)
    digest = _rows_digest(params, inputs.resampling, order, row_shas)
    with contextlib.suppress(Exception):  # a figure problem must not fail the preparation
        _class_figure(counts, out / "class_distribution.png", inputs.name, codes)

    summary.update({"images_prepared": int(len(order)), "images_dropped": int((~good).sum()),
                    "images_resized": len(todo), "images_reused": len(reused),
                    "seconds": round(time.time() - started, 2)})
    _write_report(out, problems, summary)
    _remove_stale_images(out, set(order["image_id"]))
    _write_state(out, params_key, order, row_shas, kept_rows, rows.notes, inputs)
    manifest = {
        "format": "derma-prepared", "version": PREP_VERSION, "name": inputs.name, "synthetic": inputs.synthetic,
        "digest": digest, "fingerprint": inputs.fingerprint, "params": params.as_dict(),
        "resampler": inputs.resampling,
        "source": {"raw": str(data.root), "metadata": data.metadata_path.name,
                   "metadata_sha256": inputs.metadata_sha},
        "dataset": inputs.facts, "counts": counts, "folds": folds_info,
        "cache": {"file": CACHE_FILE, "shape": [len(order), params.size, params.size, 3], "dtype": "uint8",
                  "rows": offsets, "integrity": integrity},
        "problems": {"fatal": 0, "warnings": len(problems)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out / MANIFEST, manifest)
    for leftover in (out / PARTIAL_LOG, out / PARTIAL_PLAN):
        leftover.unlink(missing_ok=True)
    for line in format_problems(problems):
        log(line)
    if not inputs.synthetic:
        log(descriptor.licence_line())
    log(_summary_line(out, counts, summary, problems, descriptor.grouping))
    return manifest


def _read_inputs(raw_dir, out: Path, params: PrepParams, strict, job: _Job) -> _Inputs:
    """Read and verify the raw folder, and fingerprint everything that decides the result."""
    descriptor = job.descriptor
    data = read_raw(raw_dir, descriptor, job.options, job.label_set, official=params.split == "official",
                    exclude=out)
    meta = data.metadata
    synthetic = job.synthetic
    if synthetic is None:
        from .synthetic import read_marker

        try:
            synthetic = read_marker(data.root) is not None
        except ValueError as exc:
            raise PrepError(f"error: {exc}") from None
    name = job.name or descriptor.name
    facts = descriptor.facts(job.options)

    metadata_sha = sha256_file(data.metadata_path)
    rel = {i: os.path.relpath(p, data.root) for i, p in data.images.items()}
    fps = {i: _fingerprint(data.images[i]) for i in meta["image_id"]}
    resampling = resampler()  # a different resize library gives (slightly) different pixels
    fingerprint = hashlib.sha256(json.dumps({
        "version": PREP_VERSION, "params": params.as_dict(), "metadata": metadata_sha, "strict": strict,
        "resampler": resampling, "dataset": facts, "name": name, "synthetic": synthetic, "table": _table_sha(meta),
        "decoder": DECODE_VERSION,
        "images": sorted((i, rel[i], fps[i]) for i in meta["image_id"]),
    }).encode()).hexdigest()
    return _Inputs(data, list(data.problems), synthetic, name, facts, metadata_sha, rel, fps, resampling,
                   fingerprint)


def _check_up_to_date(out: Path, fingerprint: str, synthetic: bool, job: _Job, read_only: bool,
                      log) -> tuple[dict | None, CacheCheck | None]:
    """The previous manifest where ``out`` was prepared with the same inputs and parameters and
    its cache still holds what was written (else None), and what a check of that cache found
    (None where the fingerprint differs or the manifest records no shape)."""
    manifest_path = out / MANIFEST
    if not (manifest_path.exists() and (out / CACHE_FILE).exists()):
        return None, None
    old = None
    with contextlib.suppress(ValueError, OSError):
        old = json.loads(manifest_path.read_text())
    if not (isinstance(old, dict) and old.get("fingerprint") == fingerprint):
        return None, None
    # same inputs and parameters: up to date if the cache still holds what was written
    known = _check_cache_of(out, old, full=job.verify)
    recorded = known is None or known.recorded
    if known is None or not known.damaged and (recorded or read_only):
        if not synthetic:
            log(job.descriptor.licence_line())
        if job.verify and known is not None:
            log(f"{out / CACHE_FILE}: every chunk checked ({known.chunks} chunk{'s' * (known.chunks != 1)} "
                f"of up to {known.chunk_rows} rows): as written")
        log(f"{out}: up to date (same inputs and parameters), nothing to do")
        return old, known
    if read_only:
        raise PrepError(f"error: {out / CACHE_FILE} is damaged ({known.reason()}) and {out} is read-only: "
                        f"make it writable and run the same command again to repair it")
    if not known.damaged:  # prepared before caches had a record: write one (once)
        log(f"{out / CACHE_FILE}: prepared by an earlier derma: recording its chunk digests (once)")
    else:
        log(f"warning: {out / CACHE_FILE} is damaged ({known.reason()}); repairing it: the rows of "
            f"the damaged chunks are resized again")
    return None, known


def _split_rows(out: Path, data: RawData, params: PrepParams, descriptor: "DatasetDescriptor",
                problems: list[Problem], summary: dict, strict, log) -> pd.DataFrame:
    """The metadata with a ``split`` column, ordered train, val, test (metadata order within a
    split), on rows whose image exists; images that fail to decode are dropped later. An official
    split whose groups leak across splits adds a fatal problem and stops."""
    from .feasibility import check_prep_splits  # too few rows or groups for a split: one line, nothing written

    meta = data.metadata
    check_prep_splits(meta, params.split, params.ratios, params.seed, descriptor, data.metadata_path)
    if params.split == "seed":
        assignment = seed_split(meta, params.seed)
    elif params.split == "official":
        assignment = official_split(meta, params.ratios, params.seed)
        leaks = leaking_groups(meta, assignment)
        if leaks:
            what = descriptor.group_column or "group"
            problems.append(Problem("official_split_leaks", f"{data.metadata_path.name}",
                                    f"{len(leaks)} {what} values have images in two splits of the official split "
                                    f"(e.g. {', '.join(leaks[:3])})",
                                    "results would be optimistic; prepare with --split grouped", fatal=True))
            _fail(out, problems, summary, strict, log)
    else:
        assignment = grouped_split(meta, params.ratios, params.seed)
    check_no_leakage(meta, assignment)
    meta = meta.assign(split=assignment.to_numpy())
    order = pd.concat([meta[meta["split"] == s] for s in SPLITS])  # metadata order within a split
    return order.reset_index(drop=True)


def _resume_rows(out: Path, plan: str, shape: tuple, n_ids: int, log) -> _Rows:
    """The rows an interrupted preparation with the same ``plan`` already did (its partial cache
    kept), or none (a fresh partial cache, plan and log)."""
    rows = _Rows()
    partial, log_path, plan_path = out / PARTIAL, out / PARTIAL_LOG, out / PARTIAL_PLAN
    resumed = False
    if partial.exists() and plan_path.exists() and log_path.exists():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(plan_path.read_text()).get("plan") == plan:
                for line in log_path.read_text().splitlines():
                    parts = line.split("\t")
                    if len(parts) in (3, 4) and parts[0].isdigit():
                        row = int(parts[0])
                        if parts[1]:
                            rows.shas[row] = parts[1]
                        else:
                            rows.errors[row] = parts[2]
                        if len(parts) == 4 and parts[3]:
                            with contextlib.suppress(ValueError):
                                rows.notes[row] = json.loads(parts[3])
                resumed = True
    if resumed:
        cache = np.load(partial, mmap_mode="r+")
        if cache.shape != shape:
            resumed, rows.shas, rows.errors = False, {}, {}
        del cache
    if resumed:
        for row in missing_rows(partial, rows.shas):  # rows are not fsynced: one lost in a power cut is all zeros
            del rows.shas[row]
        log(f"resuming an interrupted preparation: {len(rows.shas) + len(rows.errors)} of {n_ids} images "
            "already done")
    else:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape).flush()
        atomic_write_json(plan_path, {"plan": plan})
        log_path.write_text("")
    return rows


def _resize_rows(out: Path, inputs: _Inputs, params: PrepParams, params_key: list, ids: list[str], workers,
                 progress, known: CacheCheck | None, log) -> tuple[_Rows, list[int], list]:
    """Resize into the partial cache, resuming an interrupted run and reusing rows of a previous
    run where inputs are unchanged; every finished row is logged (fsynced) for a resume. Returns
    the rows, the reused rows and the resized ones."""
    (out / "cache").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    shape = (len(ids), params.size, params.size, 3)
    rel, fps, images = inputs.rel, inputs.fps, inputs.data.images
    # an interrupted preparation resumes only under everything that decides a row's pixels or its refusal
    plan = hashlib.sha256(json.dumps([params_key, DECODE_VERSION, params.min_side,
                                      [(i, rel[i], fps[i]) for i in ids]]).encode()).hexdigest()
    rows = _resume_rows(out, plan, shape, len(ids), log)
    shas, errors, notes = rows.shas, rows.errors, rows.notes
    partial = out / PARTIAL
    reused = _reuse_previous(out, params_key, ids, rel, fps, partial, shas, errors, notes, images,
                             params.min_side, known)
    todo = [(row, str(images[i]), str(out / "images" / f"{i}.jpg"))
            for row, i in enumerate(ids) if row not in shas and row not in errors]
    with open(out / PARTIAL_LOG, "a") as logf:
        def record(results):
            for row, sha, err, info in results:
                if sha is not None:
                    shas[row] = sha
                else:
                    errors[row] = err or "unknown error"
                if info:
                    notes[row] = info
                info_text = json.dumps(info, separators=(",", ":")) if info else ""
                logf.write(f"{row}\t{sha or ''}\t{(err or '').replace(chr(9), ' ')}\t{info_text}\n")
            logf.flush()
            os.fsync(logf.fileno())

        if reused:
            record([(row, shas[row], None, notes.get(row, {})) for row in reused])
        if todo:
            resize_into_cache(partial, todo, params.size, params.resize, workers=workers, on_done=record,
                              progress=progress, min_side=params.min_side)
    return rows, reused, todo


def _publish_cache(out: Path, good: np.ndarray, shape: tuple) -> None:
    """Move the partial cache into place, without the rows of refused images."""
    partial, final_cache = out / PARTIAL, out / CACHE_FILE
    # the old manifest and state describe the old cache: remove them before it is replaced, so
    # a crash from here on leaves a folder that is rebuilt, never one that is misread
    (out / MANIFEST).unlink(missing_ok=True)
    (out / STATE).unlink(missing_ok=True)
    if good.all():
        os.replace(partial, final_cache)
        return
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


def _write_split_tables(out: Path, order: pd.DataFrame) -> dict[str, list[int]]:
    """splits/{train,val,test}.csv; returns each split's [first, end) rows in the cache."""
    meta_cols = rawmod.metadata_columns(order)
    table = pd.DataFrame({"id": order["image_id"], "label": order["dx"], "group_id": order["group_id"],
                          "image_path": "images/" + order["image_id"] + ".jpg"})
    for col in meta_cols:  # a metadata column named like a split column (a raw "label") becomes raw_<name>
        table[f"raw_{col}" if col in table.columns else col] = order[col].to_numpy()
    offsets, start = {}, 0
    for s in SPLITS:
        part = table[order["split"] == s].reset_index(drop=True)
        atomic_write_csv(out / "splits" / f"{s}.csv", part)
        offsets[s] = [start, start + len(part)]
        start += len(part)
    return offsets


def _missing_class_problems(counts: dict, codes: tuple[str, ...], split: str | None) -> list[Problem]:
    """A warning per split that holds no image of some classes."""
    problems = []
    for s in SPLITS:
        missing = [c for c in codes if counts.get(s, {}).get("by_class", {}).get(c, 0) == 0]
        if missing:
            listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            fix = "add data" + ("" if split == "grouped" else " or use --split grouped")
            problems.append(Problem("class_missing_from_split", f"split {s}", f"no images of {listed}",
                                    f"metrics for those classes will be undefined there; {fix}"))
    return problems


def _write_folds(out: Path, order: pd.DataFrame, params: PrepParams, codes: tuple[str, ...]) -> dict | None:
    """With --folds K: splits/folds.csv (group-level folds of train+val) and the manifest's
    "folds" block; None without."""
    if not params.folds:
        return None
    pool = order[order["split"].isin(("train", "val"))]
    fold = grouped_folds(pool, params.folds, params.seed)
    check_no_leakage(pool, fold)
    atomic_write_csv(out / "splits" / "folds.csv",
                     pd.DataFrame({"id": pool["image_id"], "group_id": pool["group_id"], "label": pool["dx"],
                                   "fold": fold.astype(int).to_numpy()}))
    return {"k": params.folds, "counts": counts_table(pool, fold.astype(int).astype(str), codes)}


def _rows_digest(params: PrepParams, resampling: str, order: pd.DataFrame, row_shas: list[str]) -> str:
    """The manifest's digest: the parameters and every row's split, id, label, group and pixels."""
    return hashlib.sha256(json.dumps({
        "params": params.as_dict(), "resampler": resampling,
        "rows": [[s, i, l, g, h] for s, i, l, g, h in zip(order["split"], order["image_id"], order["dx"],
                                                          order["group_id"], row_shas)],
    }).encode()).hexdigest()


def _remove_stale_images(out: Path, keep_ids: set) -> None:
    for stale in (out / "images").glob("*.jpg"):
        if stale.stem not in keep_ids:
            stale.unlink()


def _write_state(out: Path, params_key: list, order: pd.DataFrame, row_shas: list[str], kept_rows: np.ndarray,
                 notes: dict[int, dict], inputs: _Inputs) -> None:
    """state.json: per image its source, fingerprint, digest and row, for incremental re-runs."""
    def entry(k: int, i: str, h: str) -> dict:
        info = notes.get(int(kept_rows[k])) or {}
        extra = {key: info[key] for key in ("wh", "warnings") if info.get(key)}
        return {"src": inputs.rel[i], "fp": inputs.fps[i], "sha256": h, "row": k, **extra}

    atomic_write_json(out / STATE, {
        "params_key": params_key, "decoder": DECODE_VERSION,
        "images": {i: entry(k, i, h) for k, (i, h) in enumerate(zip(order["image_id"], row_shas))},
    })


def _image_problem(src: str, code: str, message: str) -> Problem:
    """The prep report's entry for an image that was not used (the row is skipped)."""
    if code == "image_too_small":
        return Problem(code, src, message, "replace it with the full-size image (or lower --min-side); the row is "
                                           "skipped")
    if code == "image_too_large":
        return Problem(code, src, f"refused: {message}", "check that it is a real image and shrink it; the row is "
                                                         "skipped")
    if code == "unreadable_image":
        return Problem(code, src, message, "restore the file (or the link's target) or fix its permissions; the row "
                                           "is skipped")
    return Problem(code, src, f"cannot be decoded ({message})", "re-download or replace the file; the row is skipped")


def _warning_problem(src: str, text: str) -> Problem:
    """The prep report's entry for a warning the decoder gave about an image it still decoded."""
    if text.startswith("DecompressionBombWarning"):
        return Problem("image_very_large", src, f"the decoder warned: {text}",
                       "the image is used; check that it is a real image (a smaller copy prepares faster)")
    return Problem("decoder_warning", src, f"the decoder warned: {text}",
                   "the image is used; check that it looks right (images/ holds the resized copy)")


def _check_cache_of(out: Path, manifest: Mapping[str, Any], full: bool = False) -> CacheCheck | None:
    """:func:`~derma_core.data.resize.check_cache` of a prepared folder's cache against its
    manifest (None where the manifest records no shape)."""
    info = manifest.get("cache") or {}
    shape = info.get("shape")
    if not shape:
        return None
    return check_cache(out / info.get("file", CACHE_FILE), shape, info.get("integrity"), full=full)


def _image_wh(path: Path) -> list[int] | None:
    """An image's width and height from its header (no decoding), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return list(im.size)
    except Exception:
        return None


def _reuse_previous(out: Path, params_key, ids, rel, fps, partial: Path, shas: dict, errors: dict, notes: dict,
                    images: Mapping[str, Path], min_side: int, known: CacheCheck | None = None) -> list[int]:
    """Copy rows of the previous cache whose source file is unchanged (same path, size, mtime)
    and whose rows the cache still holds as written (every chunk checked against the manifest's
    record: damaged, cut-off or, without a record, all-zero rows are resized again). Rows of
    non-JPEG images decoded by an earlier decoder (:data:`DECODE_VERSION`), and of images under
    ``min_side``, are resized again too."""
    state_path, old_cache = out / STATE, out / CACHE_FILE
    if not (state_path.exists() and old_cache.exists()):
        return []
    size = params_key[1]
    try:
        state = json.loads(state_path.read_text())
        if state.get("params_key") != params_key:
            return []
        manifest: dict = {}
        with contextlib.suppress(ValueError, OSError):
            manifest = json.loads((out / MANIFEST).read_text())
        info = manifest.get("cache") or {}
        shape = info.get("shape") or list(read_header(old_cache)[0])
        if list(shape[1:]) != [size, size, 3]:
            return []
        check = known if known is not None and known.full else check_cache(old_cache, shape, info.get("integrity"),
                                                                           full=True)
        old = open_rows(check, size)
    except (ValueError, OSError, EOFError):
        return []
    if old is None:
        return []
    bad = set(check.bad_rows)
    same_decoder = state.get("decoder") == DECODE_VERSION
    previous = state.get("images", {})
    reused = []
    new = np.load(partial, mmap_mode="r+")
    for row, i in enumerate(ids):
        if row in shas or row in errors:
            continue
        entry = previous.get(i)
        if not (entry and entry.get("src") == rel[i] and entry.get("fp") == fps[i]
                and 0 <= entry.get("row", -1) < len(old) and entry["row"] not in bad
                and (out / "images" / f"{i}.jpg").exists()):
            continue
        wh = entry.get("wh")
        if not same_decoder or not wh:
            if not same_decoder and Path(rel[i]).suffix.lower() not in (".jpg", ".jpeg"):
                continue  # decoded differently now (16-bit, alpha, palette): resize it again
            wh = _image_wh(images[i])
            if wh is None:
                continue
        if min(wh) < min_side:
            continue  # resized again, and refused with its reason
        new[row] = old[entry["row"]]
        shas[row] = entry["sha256"]
        notes[row] = {"wh": list(wh), **({"warnings": entry["warnings"]} if entry.get("warnings") else {})}
        reused.append(row)
    new.flush()
    del new, old
    return reused


def _summary_line(out: Path, counts: dict, summary: dict, problems: list[Problem], grouping: str | None) -> str:
    def part(s: str) -> str:
        images = f"{s} {counts[s]['images']} images"
        return f"{images}/{counts[s]['groups']} {grouping}s" if grouping else images

    parts = ", ".join(part(s) for s in SPLITS if s in counts)
    return (f"prepared {summary['images_prepared']} images into {out} ({parts}); "
            f"{summary['images_resized']} resized, {summary['images_reused']} reused, "
            f"{summary['images_dropped']} dropped; {len(problems)} warning(s) in {REPORT}; "
            f"{summary['seconds']} s")


def _class_figure(counts: dict, path: Path, name: str, codes: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    many = len(codes) > 20
    fig, ax = plt.subplots(figsize=(min(40.0, max(7.0, 0.28 * len(codes))), 3.5 + (1.0 if many else 0.0)))
    width = 0.8 / len(SPLITS)
    x = np.arange(len(codes))
    for k, s in enumerate(SPLITS):
        values = [counts.get(s, {}).get("by_class", {}).get(c, 0) for c in codes]
        bars = ax.bar(x + (k - 1) * width, values, width, label=f"{s} ({sum(values)})")
        if not many:
            ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, codes, rotation=90 if many else 0, fontsize=6 if many else None)
    ax.set_yscale("symlog")
    ax.set_ylabel("images")
    ax.set_title(f"{name}: images per class and split")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- reading a prepared folder

def prepared_descriptor(manifest: Mapping[str, Any]) -> "DatasetDescriptor":
    """The facts of a prepared folder's dataset: the registered descriptor of its name holding
    the label set the folder was prepared with, or (a dataset no loaded plugin registers, e.g.
    one declared in a YAML spec) a descriptor of the recorded facts alone. A folder prepared
    before datasets had descriptors (no "dataset" block) is HAM10000."""
    from .descriptor import DatasetDescriptor
    from .sources import registered_descriptor

    facts = manifest.get("dataset")
    if not facts:
        from .datasets.ham10000 import DESCRIPTOR

        return DESCRIPTOR
    try:
        labels = LabelSet.from_dict(facts["labels"])
        found = registered_descriptor(str(facts["name"]))
        if found is not None:
            return found.with_labels(labels)
        return DatasetDescriptor.from_facts(facts)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{MANIFEST}: its dataset block is broken ({exc}); re-run `derma prep`") from None


class CacheDamagedError(ValueError):
    """A prepared folder's cache does not hold what ``derma prep`` wrote (one line, with the fix)."""


def prep_command(folder: Path, manifest: Mapping[str, Any]) -> str:
    """The ``derma prep`` command that prepares ``folder`` again with the parameters its
    manifest records (``--verify`` and the dataset options aside)."""
    facts = manifest.get("dataset") or {}
    params = manifest.get("params") or {}
    name = str(facts.get("name") or "ham10000")
    from .sources import registered_descriptor

    which = f"--dataset {name}" if registered_descriptor(name) is not None else "--spec SPEC.yaml"
    raw = (manifest.get("source") or {}).get("raw") or "RAW"
    parts = [f"derma prep {which} --raw {raw} --out {folder}"]
    if params.get("size", 224) != 224:
        parts.append(f"--size {params['size']}")
    if params.get("resize", "squash") != "squash":
        parts.append(f"--resize {params['resize']}")
    if params.get("split"):
        parts.append(f"--split {params['split']}")
    if params.get("seed", 42) != 42:
        parts.append(f"--seed {params['seed']}")
    ratios = params.get("ratios")
    if ratios and [float(r) for r in ratios] != [0.7, 0.1, 0.2]:
        parts.append("--ratios " + ",".join(f"{float(r):g}" for r in ratios))
    if params.get("folds"):
        parts.append(f"--folds {params['folds']}")
    if params.get("min_side"):
        parts.append(f"--min-side {params['min_side']}")
    return " ".join(parts)


def load_prepared(folder: str | os.PathLike, fold: int | None = None, name: str | None = None):
    """The :class:`~derma_core.interfaces.Dataset` in a folder written by :func:`prepare`, with
    the dataset's facts as it was prepared (:func:`prepared_descriptor`).

    Each split's ``cache`` is a read-only memory map (a slice of ``cache/images.npy``), opened
    after checking the file's size and a sample of its chunks against the manifest's record (a
    :class:`CacheDamagedError` naming the folder and the fix where they differ). With
    ``fold`` (from ``--folds K``), val is that cross-validation fold of train+val and train the
    rest (their caches are then gathered into memory). A folder of the previous version (split
    tables with ``lesion_id``) loads as HAM10000, its lesions as the groups.
    """
    from ..interfaces import Dataset, Split

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        hint = ("it looks like a raw HAM10000 folder: run `derma prep --raw "
                f"{folder} --out PREPARED_DIR` and point data.dir at PREPARED_DIR"
                if (folder / "HAM10000_metadata.csv").exists() else
                "it looks like a raw folder: run `derma prep --dataset NAME --raw "
                f"{folder} --out PREPARED_DIR` and point data.dir at PREPARED_DIR"
                if folder.is_dir() and any(p.suffix.lower() in (".csv", ".tab") for p in folder.iterdir()) else
                "run `derma prep --dataset NAME --raw RAW --out DIR` first")
        raise FileNotFoundError(f"{folder}: not a prepared dataset (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        raise ValueError(f"{manifest_path}: not valid JSON; re-run `derma prep`") from None
    descriptor = prepared_descriptor(manifest)
    label_set = descriptor.labels
    cache_info = manifest.get("cache") or {}
    cache = None
    cache_file = folder / cache_info.get("file", CACHE_FILE)
    if cache_file.exists():
        check = _check_cache_of(folder, manifest)  # the size always, the content by a sample of chunks
        if check is not None and check.damaged:
            raise CacheDamagedError(
                f"{folder}: its image cache {cache_info.get('file', CACHE_FILE)} is damaged ({check.reason()}); "
                f"run `{prep_command(folder, manifest)}` again to repair it (add --verify to check every chunk)")
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
        if "group_id" not in frame.columns and "lesion_id" in frame.columns:  # prepared by version 1
            frame.insert(2, "group_id", frame["lesion_id"])
        part = None
        if cache is not None:
            lo, hi = cache_info["rows"][s]
            if hi - lo != len(frame):
                raise ValueError(f"{path}: {len(frame)} rows but the cache holds {hi - lo}; re-run `derma prep`")
            part = cache[lo:hi]
        try:
            splits[s] = Split(s, frame, folder, part, label_set=label_set)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; re-run `derma prep`") from None
    if fold is not None:
        splits = _fold_splits(folder, manifest, splits, int(fold))
    return Dataset(name=name or manifest.get("name", folder.name), digest=manifest["digest"] if fold is None
                   else hashlib.sha256(f"{manifest['digest']}-fold{fold}".encode()).hexdigest(),
                   splits=splits, descriptor=descriptor, synthetic=bool(manifest.get("synthetic")), dir=folder,
                   manifest=manifest)


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
        out[name] = Split(name, pool_frame.iloc[idx].reset_index(drop=True), folder, cache,
                          label_set=splits["train"].label_set)
    return out
