"""``derma eval-predictions``: any per-image prediction file as an MLflow run, evaluated like a derma run.

A model run elsewhere (a cluster, a paper's supplement, a hospital's system) leaves a file of
per-image predictions. This module reads it, takes the true labels, groups and metadata from the
file or from the dataset (a prepared folder ``--data-dir``, or the dataset's metadata table
``--metadata``), and evaluates it with the same evaluators as ``derma run``
(:func:`derma_core.runner.evaluate` / :func:`~derma_core.runner.log_evaluation`) into a run of the
dataset's experiment, so ``derma compare`` and ``derma report`` show it beside derma's own runs.

Formats read (found from the columns; ``--format`` forces one):

``derma``    derma's own ``predictions.csv``: ``id``, optionally ``group_id`` and ``label`` (the
             truth), ``predicted`` (empty: an invalid answer), ``prob_<code>`` per class,
             optionally ``raw_text``;
``isic``     the ISIC challenge submission: an image column (``image``, ``image_name``,
             ``image_id`` or ``isic_id``) and one probability column per class, named by its code
             in any case (``MEL``, ``NV``...) or by a display name or synonym; ISIC 2020's single
             ``target`` column is the probability of the positive class of a two-class set;
``columns``  ``image_path,true_label,predicted_label,probability_class_0..K-1`` with the class order
             given by ``--class-order a,b,c`` or ``--class-order FILE`` (a ``diag,label`` CSV: a class
             name — code, display name or synonym — and its index). Labels may be indices into
             that order or names.

Ids that are paths (``images/ISIC_0024306.jpg``) become the file name's stem. A true label in
the file that contradicts the metadata is an error naming the first rows; ids the metadata lacks
are reported and counted (``external_missing_from_metadata``) and keep the file's label (each
its own group) or, without one, are left out. Probabilities whose rows do not sum to 1 (ISIC
submissions score each class on its own) are normalised, and the output says how many.
Calibration and conformal sets need validation predictions: with ``--val FILE`` (same format,
the validation images) they are fitted on it; without, the output says they were skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..labels import LabelSet
from ..textio import TextEncodingError, open_text

FORMATS = ("derma", "isic", "columns")
#: The plugin tag of a run made from a prediction file.
PLUGIN = "external"
TAG_SHA256 = "derma.external.sha256"
TAG_FILE = "derma.external.file"
TAG_FORMAT = "derma.external.format"
#: Id columns, in the order they are looked for.
ID_COLUMNS = ("id", "image_id", "image", "image_name", "isic_id", "img_id", "image_path", "filename", "file", "path")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PROB_PREFIX = "prob_"
COLUMN_PROB = re.compile(r"^prob(?:ability)?_class_(\d+)$", re.IGNORECASE)


class ExternalError(ValueError):
    """A prediction file that cannot be evaluated: the one-line message names the file, the row
    or column, and the fix."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_id(value: str) -> str:
    """An id from an id column: the file name's stem when the value is a path or a file name."""
    text = str(value).strip()
    if "/" in text or "\\" in text or text.lower().endswith(IMAGE_SUFFIXES):
        return Path(text.replace("\\", "/")).stem
    return text


# ---------------------------------------------------------------- class order

def class_order(spec: str, label_set: LabelSet, encoding: str = "utf-8") -> list[str]:
    """``--class-order``: ``a,b,c`` or a ``diag,label`` CSV file (class name and its index); names
    may be codes, display names or synonyms (:meth:`LabelSet.lookup`). Returns the codes in
    index order; one-line errors for unknown names, repeats and gaps. The file is read in ``encoding``."""
    path = Path(spec)
    if path.is_file():
        try:
            table = pd.read_csv(open_text(path, encoding), dtype=str, keep_default_na=False)
        except TextEncodingError as exc:
            raise ExternalError(f"--class-order {exc}") from None
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ExternalError(f"--class-order {path}: cannot be read as CSV ({exc})") from None
        cols = {c.strip().lower(): c for c in table.columns}
        if "diag" not in cols or "label" not in cols:
            raise ExternalError(f"--class-order {path}: needs the columns diag,label (a class name and its index), "
                                f"found {', '.join(table.columns)}")
        pairs = []
        for line, (name, index) in enumerate(zip(table[cols["diag"]], table[cols["label"]]), start=2):
            try:
                pairs.append((int(str(index).strip()), name, line))
            except ValueError:
                raise ExternalError(f"--class-order {path} line {line}: label {index!r} is not an index "
                                    "(0, 1, ...)") from None
        pairs.sort()
        indices = [i for i, _, _ in pairs]
        if indices != list(range(len(pairs))):
            raise ExternalError(f"--class-order {path}: the indices must be 0..{len(pairs) - 1} once each, got "
                                f"{sorted(indices)}")
        names = [(n, f"{path} line {line}") for _, n, line in pairs]
    else:
        if os.sep in spec or spec.lower().endswith(".csv"):
            raise ExternalError(f"--class-order {spec}: no such file; give a diag,label CSV or the classes a,b,c")
        names = [(n.strip(), f"--class-order item {k + 1}") for k, n in enumerate(spec.split(","))]
    codes = []
    for name, where in names:
        code = label_set.lookup(name)
        if code is None:
            raise ExternalError(f"{where}: {name!r} names no class of the dataset ({', '.join(label_set.codes)}, "
                                "their display names or synonyms)")
        if code in codes:
            raise ExternalError(f"{where}: {name!r} is {code}, which an earlier entry already names")
        codes.append(code)
    return codes


# ---------------------------------------------------------------- reading a prediction file

@dataclass
class PredictionFile:
    """A prediction file as read: one row per image, in the file's order."""

    path: Path
    format: str
    sha256: str
    ids: list[str]
    truth: list[str | None] | None  # codes from the file, or None when it has no truth column
    predicted: list[str | None]
    probabilities: np.ndarray | None
    groups: list[str] | None = None
    raw_text: list[str] | None = None
    image_paths: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def _read_csv(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    if not path.is_file():
        raise ExternalError(f"{path}: no such file")
    try:  # decoded by derma_core.textio: a byte ``encoding`` cannot decode is one line with its line and offset
        frame = pd.read_csv(open_text(path, encoding), dtype=str, keep_default_na=False)
    except TextEncodingError as exc:
        raise ExternalError(str(exc)) from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ExternalError(f"{path}: cannot be read as a CSV table ({str(exc).splitlines()[0]})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise ExternalError(f"{path}: has no rows")
    return frame


def detect_format(frame: pd.DataFrame, path: Path) -> str:
    lower = {c.lower() for c in frame.columns}
    if "predicted" in lower and any(c.startswith(PROB_PREFIX) for c in lower) or {"id", "predicted"} <= lower:
        return "derma"
    if any(COLUMN_PROB.match(c) for c in frame.columns) or {"true_label", "predicted_label"} & lower:
        return "columns"
    if lower & {"image", "image_name", "image_id", "isic_id"}:
        return "isic"
    raise ExternalError(f"{path}: unknown layout (columns {', '.join(frame.columns[:12])}); expected derma's "
                        "predictions.csv (id, predicted, prob_<class>), an ISIC submission (image, one column per "
                        "class) or image_path,true_label,predicted_label,probability_class_0..K-1 (with --format "
                        "to force one)")


def _column(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in frame.columns}
    return next((lower[n] for n in names if n in lower), None)


def _line(i: int) -> int:
    return i + 2  # the header is line 1


def _probabilities(frame: pd.DataFrame, columns: Sequence[str], path: Path, notes: list[str]) -> np.ndarray:
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise ExternalError(f"{path} line {_line(i)}: column {columns[j]} holds {frame[columns[j]].iat[i]!r}; "
                            "probabilities must be numbers >= 0")
    sums = values.sum(axis=1)
    if (sums <= 0).any():
        i = int(np.flatnonzero(sums <= 0)[0])
        raise ExternalError(f"{path} line {_line(i)}: every probability is 0; give each class's probability")
    off = np.abs(sums - 1.0) > 1e-6
    if off.any():
        notes.append(f"{int(off.sum())} rows' probabilities did not sum to 1 and were normalised (each divided by "
                     "its sum)")
        values = values / sums[:, None]
    return values


def _labels(values: Sequence[str], label_set: LabelSet, order: Sequence[str] | None, path: Path, column: str,
            allow_empty: bool) -> list[str | None]:
    out: list[str | None] = []
    cache: dict[str, str | None] = {}
    for i, value in enumerate(values):
        text = str(value).strip()
        if text == "":
            if not allow_empty:
                raise ExternalError(f"{path} line {_line(i)}: {column} is empty; every row needs one")
            out.append(None)
            continue
        if text not in cache:
            code = None
            if order is not None and re.fullmatch(r"\d+(\.0+)?", text):
                k = int(float(text))
                if k >= len(order):
                    raise ExternalError(f"{path} line {_line(i)}: {column} {text} is no index of the class order "
                                        f"(0..{len(order) - 1})")
                code = order[k]
            else:
                code = label_set.lookup(text)
            if code is None:
                raise ExternalError(f"{path} line {_line(i)}: {column} {text!r} names no class of the dataset "
                                    f"({', '.join(label_set.codes)})" + (" nor an index of --class-order"
                                                                          if order is not None else ""))
            cache[text] = code
        out.append(cache[text])
    return out


def read_prediction_file(path: str | os.PathLike, label_set: LabelSet, order: str | None = None,
                         fmt: str | None = None, ignore: Sequence[str] = (), encoding: str = "utf-8") -> PredictionFile:
    """A prediction file in one of :data:`FORMATS` over ``label_set`` (see the module docstring),
    read in ``encoding`` (as a ``--class-order`` file)."""
    path = Path(path)
    frame = _read_csv(path, encoding)
    fmt = fmt or detect_format(frame, path)
    if fmt not in FORMATS:
        raise ExternalError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    ignored = {c.lower() for c in ignore}
    frame = frame[[c for c in frame.columns if c.lower() not in ignored]]
    notes: list[str] = []
    id_col, ids = _read_ids(frame, path)
    if fmt == "derma":
        cols = _read_derma_columns(frame, path, label_set, notes)
    elif fmt == "columns":
        cols = _read_indexed_columns(frame, path, label_set, order, encoding, id_col, notes)
    else:  # isic
        cols = _PredictionColumns(probs=_read_isic_columns(frame, path, label_set, id_col, notes))
    predicted = cols.predicted
    if predicted is None:
        if cols.probs is None:
            raise ExternalError(f"{path}: neither predicted labels nor probabilities")
        predicted = [label_set.codes[int(k)] for k in cols.probs.argmax(axis=1)]
    return PredictionFile(path, fmt, file_sha256(path), ids, cols.truth, predicted, cols.probs, cols.groups,
                          cols.raw_text, cols.paths, notes)


@dataclass
class _PredictionColumns:
    """What a prediction file's columns give beyond the ids (None: not in the file)."""

    truth: list[str] | None = None
    predicted: list[str | None] | None = None
    probs: np.ndarray | None = None
    groups: list[str] | None = None
    raw_text: list[str] | None = None
    paths: list[str] | None = None


def _read_ids(frame: pd.DataFrame, path: Path) -> tuple[str, list[str]]:
    """The image id column and its ids (none empty, none twice)."""
    id_col = _column(frame, ID_COLUMNS)
    if id_col is None:
        raise ExternalError(f"{path}: no image id column (one of {', '.join(ID_COLUMNS)})")
    ids = [image_id(v) for v in frame[id_col]]
    empty = [i for i, v in enumerate(ids) if not v]
    if empty:
        raise ExternalError(f"{path} line {_line(empty[0])}: the {id_col} column is empty")
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v in seen:
            raise ExternalError(f"{path} lines {_line(seen[v])} and {_line(i)}: image {v!r} appears twice")
        seen[v] = i
    return id_col, ids


def _read_derma_columns(frame: pd.DataFrame, path: Path, label_set: LabelSet, notes: list[str]) -> _PredictionColumns:
    """derma's format: prob_<code> columns, predicted, label, group_id and raw_text."""
    codes = list(label_set.codes)
    cols = _PredictionColumns()
    prob_cols = [c for c in frame.columns if c.lower().startswith(PROB_PREFIX)]
    if prob_cols:
        named = {c[len(PROB_PREFIX):]: c for c in prob_cols}
        unknown = [c for c in named if c not in label_set]
        missing = [c for c in codes if c not in named]
        if unknown or missing:
            raise ExternalError(f"{path}: its prob_ columns do not match the dataset's classes ("
                                + (f"unknown {', '.join(unknown)}" if unknown else "")
                                + ("; " if unknown and missing else "")
                                + (f"missing {', '.join(missing)}" if missing else "") + ")")
        cols.probs = _probabilities(frame, [named[c] for c in codes], path, notes)
    pred_col = _column(frame, ("predicted",))
    if pred_col is not None:
        cols.predicted = _labels(frame[pred_col].tolist(), label_set, None, path, pred_col, allow_empty=True)
    label_col = _column(frame, ("label", "true_label"))
    if label_col is not None:
        cols.truth = _labels(frame[label_col].tolist(), label_set, None, path, label_col, allow_empty=False)
    group_col = _column(frame, ("group_id", "lesion_id"))
    if group_col is not None:
        cols.groups = frame[group_col].astype(str).tolist()
    text_col = _column(frame, ("raw_text",))
    if text_col is not None:
        cols.raw_text = frame[text_col].astype(str).tolist()
    return cols


def _read_indexed_columns(frame: pd.DataFrame, path: Path, label_set: LabelSet, order: str | None, encoding: str,
                          id_col: str, notes: list[str]) -> _PredictionColumns:
    """The "columns" format: probability_class_<k>, predicted and true labels (indices or names)
    in the class order of --class-order."""
    codes = list(label_set.codes)
    cols = _PredictionColumns()
    prob_cols = sorted((int(m.group(1)), c) for c in frame.columns if (m := COLUMN_PROB.match(c)))
    if order is None:
        what = "probability_class_0.." if prob_cols else "true_label/predicted_label"
        raise ExternalError(f"{path} has {what} columns: give their classes with --class-order a,b,c or "
                            "--class-order FILE (diag,label)")
    ordered = class_order(order, label_set, encoding)
    if prob_cols:
        indices = [k for k, _ in prob_cols]
        if indices != list(range(len(ordered))):
            raise ExternalError(f"{path}: probability columns {', '.join(c for _, c in prob_cols)} do not match "
                                f"the {len(ordered)} classes of --class-order (probability_class_0.."
                                f"{len(ordered) - 1})")
    missing = [c for c in codes if c not in ordered]
    if missing:
        raise ExternalError(f"--class-order names {len(ordered)} classes; the dataset's {', '.join(missing)} are "
                            "missing: a prediction file must cover every class of the dataset")
    if prob_cols:
        in_order = _probabilities(frame, [c for _, c in prob_cols], path, notes)
        cols.probs = in_order[:, [ordered.index(c) for c in codes]]
    pred_col = _column(frame, ("predicted_label", "prediction", "predicted"))
    if pred_col is not None:
        cols.predicted = _labels(frame[pred_col].tolist(), label_set, ordered, path, pred_col, allow_empty=True)
    label_col = _column(frame, ("true_label", "label"))
    if label_col is not None:
        cols.truth = _labels(frame[label_col].tolist(), label_set, ordered, path, label_col, allow_empty=False)
    if id_col.lower() in ("image_path", "path", "file", "filename"):
        cols.paths = frame[id_col].astype(str).tolist()
    return cols


def _read_isic_columns(frame: pd.DataFrame, path: Path, label_set: LabelSet, id_col: str,
                       notes: list[str]) -> np.ndarray:
    """An ISIC submission's probabilities: one column per class, or a single two-class target."""
    codes = list(label_set.codes)
    others = [c for c in frame.columns if c != id_col]
    target = _column(frame, ("target",))
    if target is not None and len(others) == 1:
        if len(label_set) != 2:
            raise ExternalError(f"{path}: a single target column is a two-class submission (ISIC 2020), but the "
                                f"dataset has {len(label_set)} classes")
        positive = label_set.focus or codes[1]
        values = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExternalError(f"{path} line {_line(i)}: target {frame[target].iat[i]!r} is not a probability "
                                "between 0 and 1")
        probs = np.zeros((len(frame), 2))
        k = codes.index(positive)
        probs[:, k] = values
        probs[:, 1 - k] = 1.0 - values
        notes.append(f"target read as the probability of {positive}")
        return probs
    resolved: dict[str, str] = {}
    unknown = []
    for col in others:
        code = label_set.lookup(col)
        if code is None:
            unknown.append(col)
        elif code in resolved:
            raise ExternalError(f"{path}: columns {resolved[code]} and {col} both name class {code}")
        else:
            resolved[code] = col
    if unknown:
        raise ExternalError(f"{path}: column(s) {', '.join(unknown)} name no class of the dataset "
                            f"({', '.join(codes)}); drop them or pass --ignore-column "
                            f"{unknown[0]}")
    missing = [c for c in codes if c not in resolved]
    if missing:
        raise ExternalError(f"{path}: no probability column for {', '.join(missing)}; an ISIC submission has "
                            "one column per class")
    return _probabilities(frame, [resolved[c] for c in codes], path, notes)


# ---------------------------------------------------------------- the dataset's metadata

@dataclass
class Metadata:
    """The dataset's rows: id, label (a code), group_id and metadata columns; where they came from."""

    frame: pd.DataFrame
    source: str
    digest: str | None = None
    synthetic: bool | None = None
    experiment: str | None = None


def prepared_metadata(folder: Path, name: str):
    """(descriptor, Metadata) of a prepared folder: every split's rows, the label set as prepared."""
    from ..data.prepare import load_prepared

    dataset = load_prepared(folder)
    if dataset.descriptor.name != name:
        raise ExternalError(f"--data-dir {folder} was prepared as dataset {dataset.descriptor.name!r}, not "
                            f"{name!r}; pass --dataset {dataset.descriptor.name}")
    frame = pd.concat([s.frame for s in dataset.splits.values()], ignore_index=True)
    return dataset.descriptor, Metadata(frame, f"prepared folder {folder}", dataset.digest, dataset.synthetic,
                                        dataset.name)


def table_metadata(path: Path, descriptor: Any, label_set: LabelSet, options: Mapping[str, str],
                   encoding: str = "utf-8") -> Metadata:
    """The dataset's metadata table: read by the dataset's own reader when it reads this file
    (its raw layout: HAM10000_metadata.csv, PAD-UFES-20's metadata.csv, ISIC's ground truth...),
    else as a table with an id column, and a label and/or group column."""
    from ..data.raw import PrepError

    frame = None
    if descriptor.reader is not None:
        try:
            raw = descriptor.reader(path.parent, dict(options))
            if Path(raw.metadata_path).resolve() == path.resolve():
                frame = raw.metadata.rename(columns={"image_id": "id", "dx": "label"})
        except (PrepError, OSError, ValueError, KeyError):
            frame = None
    if frame is None:
        table = _read_csv(path, encoding)
        id_col = _column(table, ID_COLUMNS)
        if id_col is None:
            raise ExternalError(f"--metadata {path}: no image id column (one of {', '.join(ID_COLUMNS)})")
        label_col = _column(table, ("label", "dx", "diagnosis", "diagnostic", "true_label"))
        group_col = _column(table, tuple(c for c in ("group_id", descriptor.group_column) if c))
        frame = table.rename(columns={id_col: "id"})
        frame["id"] = [image_id(v) for v in frame["id"]]
        frame["label"] = table[label_col] if label_col else ""
        frame["group_id"] = table[group_col] if group_col else ""
        frame["_line"] = [str(_line(i)) for i in range(len(frame))]
    frame = frame.copy()
    codes = []
    for value, line in zip(frame["label"].astype(str), frame.get("_line", pd.Series([""] * len(frame)))):
        if value.strip() == "":
            codes.append(None)
            continue
        code = value if value in label_set else label_set.lookup(value)
        if code is None:
            raise ExternalError(f"--metadata {path} line {line}: label {value!r} is no class of the dataset "
                                f"({', '.join(label_set.codes)})")
        codes.append(code)
    frame["label"] = codes
    frame["group_id"] = [g if str(g).strip() else i for g, i in zip(frame["group_id"].astype(str), frame["id"])]
    frame = frame.drop(columns=[c for c in ("_line",) if c in frame.columns])
    dup = frame["id"].duplicated()
    if dup.any():
        raise ExternalError(f"--metadata {path}: image {frame['id'][dup].iloc[0]!r} appears twice")
    return Metadata(frame, f"metadata {path}", file_sha256(path)[:16])


# ---------------------------------------------------------------- the evaluated split

@dataclass
class Assembled:
    split: Any  # Split
    predictions: Any  # Predictions
    missing: int  # ids of the file the metadata lacks
    dropped: int  # rows left out (no truth anywhere)
    notes: list[str]


def assemble(pf: PredictionFile, label_set: LabelSet, metadata: Metadata | None, split_name: str) -> Assembled:
    """The split (truth, groups, metadata) and predictions of a prediction file: truth from the
    file and/or the metadata (a conflict is an error naming the first rows)."""
    from ..interfaces import Predictions, Split

    notes = list(pf.notes)
    n = len(pf)
    truth: list[str | None] = list(pf.truth) if pf.truth is not None else [None] * n
    groups = list(pf.groups) if pf.groups is not None else list(pf.ids)
    extra = pd.DataFrame(index=range(n))
    missing = 0
    if metadata is not None:
        meta = metadata.frame.set_index(metadata.frame["id"].astype(str))
        present = [i in meta.index for i in pf.ids]
        missing = n - sum(present)
        if missing:
            absent = [i for i, p in zip(pf.ids, present) if not p]
            notes.append(f"{missing} of {n} ids are not in the {metadata.source} (e.g. {', '.join(absent[:3])}): "
                         + ("their labels come from the file, each image its own group" if pf.truth is not None
                            else "they have no true label and are left out"))
        rows = meta.reindex(pf.ids)
        meta_labels = rows["label"].tolist()
        if pf.truth is not None:
            conflicts = [k for k in range(n) if present[k] and meta_labels[k] is not None
                         and not (isinstance(meta_labels[k], float) and np.isnan(meta_labels[k]))
                         and meta_labels[k] != truth[k]]
            if conflicts:
                shown = "; ".join(f"line {_line(k)} ({pf.ids[k]}: file {truth[k]}, metadata {meta_labels[k]})"
                                  for k in conflicts[:3])
                raise ExternalError(f"{pf.path}: the true label differs from the {metadata.source} on "
                                    f"{len(conflicts)} rows: {shown}; fix the file or drop its label column")
        for k in range(n):
            if present[k]:
                if truth[k] is None and isinstance(meta_labels[k], str):
                    truth[k] = meta_labels[k]
                groups[k] = str(rows["group_id"].iat[k])
        skip = {"id", "label", "group_id"}
        for col in [c for c in rows.columns if c not in skip]:
            extra[col] = rows[col].fillna("").astype(str).to_numpy()
    elif pf.groups is None:
        notes.append("no --metadata or --data-dir: each image is its own group in the intervals")
    keep = np.array([t is not None for t in truth], dtype=bool)
    dropped = int((~keep).sum())
    if not keep.any():
        raise ExternalError(f"{pf.path}: no row has a true label: give --metadata or --data-dir (the dataset's "
                            "labels), or a file with a label column")
    if dropped and metadata is None:
        raise ExternalError(f"{pf.path} line {_line(int(np.flatnonzero(~keep)[0]))}: no true label")
    idx = np.flatnonzero(keep)
    if "image_path" in extra.columns:
        image_paths = extra["image_path"].tolist()
        extra = extra.drop(columns=["image_path"])
    else:
        image_paths = pf.image_paths or [f"{i}" for i in pf.ids]
    frame = pd.DataFrame({"id": pf.ids, "label": truth, "group_id": groups, "image_path": image_paths})
    frame = pd.concat([frame, extra.reset_index(drop=True)], axis=1).iloc[idx].reset_index(drop=True)
    split = Split(split_name, frame, Path("."), None, label_set=label_set)
    predictions = Predictions(ids=[pf.ids[k] for k in idx], labels=[pf.predicted[k] for k in idx],
                              probabilities=None if pf.probabilities is None else pf.probabilities[idx],
                              raw_text=None if pf.raw_text is None else [pf.raw_text[k] for k in idx],
                              info={"source": str(pf.path), "format": pf.format}, label_set=label_set)
    return Assembled(split, predictions, missing, dropped, notes)


# ---------------------------------------------------------------- the run

@dataclass
class ExternalResult:
    run_id: str
    experiment: str
    metrics: dict[str, float]
    notes: list[str]


def evaluate_file(path: str | os.PathLike, dataset: str, *, data_dir: str | None = None, metadata: str | None = None,
                  val: str | None = None, order: str | None = None, fmt: str | None = None,
                  ignore: Sequence[str] = (), options: Mapping[str, str] | None = None, split: str = "test",
                  config_file: str | None = None, overrides: Sequence[str] = (), experiment: str | None = None,
                  run_name: str | None = None, model: str | None = None, uri: str | None = None,
                  log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
                  encoding: str = "utf-8") -> ExternalResult:
    """Evaluate a prediction file on ``dataset`` into a new MLflow run (see the module docstring);
    the prediction, ``--val``, ``--class-order`` and ``--metadata`` files are read in ``encoding``."""
    from .. import tracking
    from ..config import resolve_config
    from ..interfaces import Dataset

    descriptor, meta = _external_dataset(dataset, data_dir, metadata, options, encoding)
    label_set = descriptor.labels
    pf = read_prediction_file(path, label_set, order, fmt, ignore, encoding)  # type: ignore[arg-type]
    main = assemble(pf, label_set, meta, split)  # type: ignore[arg-type]
    reference, notes = _val_reference(val, path, main, label_set, meta, order, fmt, ignore, encoding)
    config = resolve_config(None, config_file, overrides, {"tracking.uri": uri, "tracking.experiment": experiment,
                                                          "tracking.run_name": run_name})
    config["plugin"] = PLUGIN
    config["evaluation"]["split"] = split
    data = Dataset(meta.experiment if meta is not None and meta.experiment else descriptor.name,
                   (meta.digest if meta is not None and meta.digest else pf.sha256[:16]),
                   {split: main.split}, descriptor=descriptor,
                   synthetic=bool(meta.synthetic) if meta is not None and meta.synthetic is not None else False,
                   dir=Path(data_dir).expanduser() if data_dir else None)
    experiment = config["tracking"].get("experiment") or data.name
    model = model or Path(path).stem
    name = config["tracking"].get("run_name") or tracking.default_run_name(PLUGIN, data.name, model)
    inputs = _ExternalInputs(Path(path), val, pf, main, reference, notes, descriptor, meta, split)
    uri = config["tracking"].get("uri")
    tracking.configure(uri)
    with tracking.start_run(experiment, run_name=name, tags=_external_tags(inputs, data), uri=uri) as tracker:
        metrics = _log_external_run(tracker, inputs, config, data, model)
        run_id = tracker.run_id
    for note in notes:
        log(f"note: {note}")
    return ExternalResult(run_id, experiment, metrics, notes)


def _external_dataset(dataset: str, data_dir: str | None, metadata: str | None,
                      options: Mapping[str, str] | None, encoding: str):
    """The dataset's descriptor (with the label set of the prepared folder or the options) and
    its metadata (from --data-dir or --metadata; None without)."""
    from ..data.descriptor import DatasetDescriptor
    from ..data.sources import registered_descriptor, registered_names

    if data_dir and metadata:
        raise ExternalError("give --data-dir or --metadata, not both")
    found = registered_descriptor(dataset)
    if found is None:
        raise ExternalError(f"--dataset {dataset}: no such dataset; known: {', '.join(registered_names())}")
    meta: Metadata | None = None
    if data_dir:
        descriptor, meta = prepared_metadata(Path(data_dir).expanduser(), found.name)
    else:
        try:
            opts = found.resolve_options(options)
        except ValueError as exc:
            raise ExternalError(str(exc)) from None
        descriptor = found.with_labels(found.label_set(opts))
        if metadata:
            meta = table_metadata(Path(metadata).expanduser(), found, descriptor.labels, opts, encoding)
    assert isinstance(descriptor, DatasetDescriptor)
    return descriptor, meta


def _val_reference(val: str | None, path, main: Assembled, label_set: LabelSet, meta: Metadata | None,
                   order: str | None, fmt: str | None, ignore: Sequence[str], encoding: str):
    """The --val predictions as the evaluation's reference (None without), and the notes."""
    from ..interfaces import EvalReference

    notes = list(main.notes)
    if not val:
        notes.append("calibration (temperature scaling) and conformal sets skipped: no --val file (predictions on "
                     "validation images) to fit them on")
        return None, notes
    vf = read_prediction_file(val, label_set, order, fmt, ignore, encoding)  # type: ignore[arg-type]
    vset = assemble(vf, label_set, meta, "val")  # type: ignore[arg-type]
    overlap = set(vset.split.ids) & set(main.split.ids)
    if overlap:
        raise ExternalError(f"--val {val}: {len(overlap)} of its images are also in {path} (e.g. "
                            f"{sorted(overlap)[0]}); calibration must be fitted on other images")
    notes += [f"val: {n}" for n in vset.notes]
    return EvalReference(vset.split, vset.predictions), notes


@dataclass
class _ExternalInputs:
    """What an external evaluation evaluates: the prediction file (and --val file), read and
    assembled, the --val reference, the notes, the metadata and the evaluated split's name."""

    path: Path
    val: str | None
    pf: PredictionFile
    main: Assembled
    reference: Any  # EvalReference | None
    notes: list[str]
    descriptor: Any  # DatasetDescriptor
    meta: Metadata | None
    split: str


def _external_tags(inputs: _ExternalInputs, data) -> dict:
    from .. import __version__, tracking

    descriptor, pf = inputs.descriptor, inputs.pf
    return {
        tracking.TAG_PLUGIN: PLUGIN, tracking.TAG_DATASET: data.name,
        tracking.TAG_DATASET_DIGEST: data.digest, tracking.TAG_LABEL_SET: ",".join(descriptor.labels.codes),
        tracking.TAG_DATASET_LICENCE: descriptor.licence or None,
        tracking.TAG_DATASET_CITATION: descriptor.citation or None,
        tracking.TAG_SYNTHETIC: str(data.synthetic).lower(), tracking.TAG_VERSION: __version__,
        tracking.TAG_GIT_SHA: tracking.git_sha(), TAG_SHA256: pf.sha256, TAG_FILE: str(inputs.path.resolve()),
        TAG_FORMAT: pf.format,
    }


def _log_external_run(tracker, inputs: _ExternalInputs, config: dict, data, model: str) -> dict[str, float]:
    """Log the inputs, evaluate and log the evaluation; returns the logged metrics and counts."""
    from ..config import dump_config
    from ..runner import LABEL_SET_ARTIFACT, evaluate, log_evaluation

    path, pf, main, split, meta = inputs.path, inputs.pf, inputs.main, inputs.split, inputs.meta
    tracker.log_params({"plugin": PLUGIN, "eval_split": split, "model": model, "seed": config.get("seed"),
                        "external_format": pf.format})
    tracker.log_text(dump_config(config), "config.yaml")
    tracker.log_dict({"name": data.name, "digest": data.digest, "synthetic": data.synthetic,
                      "dir": str(data.dir) if data.dir else None, "facts": inputs.descriptor.facts(),
                      "metadata": meta.source if meta is not None else None,
                      "predictions_file": {"path": str(path.resolve()), "sha256": pf.sha256,
                                           "format": pf.format}}, "dataset.json")
    tracker.log_dict(inputs.descriptor.labels.to_dict(), LABEL_SET_ARTIFACT)
    tracker.log_artifact(path, "external")
    if inputs.val:
        tracker.log_artifact(Path(inputs.val), "external/val")
    tracker.log_input(main.split.frame[["id", "label", "group_id", "image_path"]],
                      name=f"external/{path.name}", context=split, digest=pf.sha256[:16],
                      source=str(path.resolve()))
    metrics, results = evaluate(main.split, main.predictions, config, data, inputs.reference)
    if inputs.reference is not None:
        tracker.log_table(inputs.reference.predictions.to_frame(inputs.reference.split), "predictions_val.csv")
    prefixed = log_evaluation(tracker, main.split, main.predictions, metrics, results, split)
    counts = {"external_rows": float(len(pf)), "external_evaluated": float(len(main.split)),
              "external_missing_from_metadata": float(main.missing), "external_without_label": float(main.dropped)}
    tracker.log_metrics(counts)
    tracker.log_text("\n".join(inputs.notes) + "\n", "external/notes.txt")
    return {**prefixed, **counts}


__all__ = ["FORMATS", "PLUGIN", "ExternalError", "PredictionFile", "assemble", "class_order", "detect_format",
           "evaluate_file", "image_id", "read_prediction_file", "table_metadata"]
