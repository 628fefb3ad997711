"""Subgroup evaluation: metrics per value of a metadata column, with group-level intervals.

Which columns, and how their values form groups, comes from the dataset's descriptor
(:attr:`~derma_core.data.descriptor.DatasetDescriptor.subgroups`):

* ``categorical``: each value is a group (HAM10000's ``sex``, ``localization``, ``dx_type``);
* ``banded``: a number cut into bands at the column's edges (HAM10000's ``age``: ``<30``,
  ``30-44`` ... ``75+``);
* ``ordinal``: ordered levels (Fitzpatrick skin types I-VI); values listed as unknown are the
  ``missing`` group.

``evaluation.subgroups.columns`` (a list) replaces the descriptor's columns: those columns are
categorical unless the descriptor declares them otherwise. ``evaluation.subgroups.age_bands``
replaces the edges of a banded ``age`` column. Empty values form the group ``missing``.

Each group gets accuracy, balanced accuracy and macro-F1 (and each grouping's sensitivity,
specificity and balanced accuracy, e.g. ``malignancy_sensitivity``) with percentile intervals
from the group-level bootstrap of :mod:`.bootstrap` (lesions or patients), plus, per column,
the worst group and the largest gap (best minus worst group) with its interval. Groups below
``evaluation.subgroups.min_count`` images are reported (and flagged ``small``) but do not take
part in the worst group and the gap; neither does ``missing``.

Metrics that cannot mislead in a group that holds only some classes: balanced accuracy is the
mean recall over the classes **present** in the group (those with a true image there), and the
table gives each present class's recall (``present_recall``: ``nv 0.860 (86/100); mel ...``),
how many classes are present (``classes_present``) and flags a group with a single true class
(``single_class``). Macro-F1 averages F1 over every class that is true *or predicted* in the
group, so in a single-class group each wrong answer adds a class with F1 0: a model right on
86% of a group of nevi gets ~0.13, and one that calls everything a nevus 1.0. It is therefore
left empty (NaN: not logged, not in the worst group or gap) for single-class groups; read
accuracy (= that class's recall) there.

Speed: one set of resamples serves every group of every column: the per-image counts the
metrics are read off (:func:`~.bootstrap.image_stats`) of all groups sit side by side in one
sparse (units, groups x width) matrix, and one matrix product per block of resamples yields
every group's sums on every resample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..data.descriptor import SubgroupColumn
from .bootstrap import group_index, image_stats, metric_names, percentile_interval, point_metrics, resampled_metrics
from .metrics import GroupTarget, _check

if TYPE_CHECKING:  # pragma: no cover
    from ..data.descriptor import DatasetDescriptor

DEFAULT_MIN_COUNT = 30
MISSING = "missing"
#: The metrics whose worst group and gap are reported (plus each grouping's sensitivity).
GAP_METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


@dataclass
class SubgroupValues:
    """One subgroup column of a split: its declaration, each row's group, and the groups in
    report order (bands / ordinal levels in their order, categories sorted, ``missing`` last)."""

    spec: SubgroupColumn
    labels: np.ndarray
    order: list[str]

    @property
    def title(self) -> str:
        return self.spec.title or self.spec.column


def subgroup_settings(config: dict, descriptor: "DatasetDescriptor | None") -> tuple[list[SubgroupColumn], int]:
    """(the subgroup columns to evaluate, small-group threshold) from ``evaluation.subgroups``
    and the dataset's descriptor."""
    declared = {s.column: s for s in (descriptor.subgroups if descriptor is not None else ())}
    columns = get_dotted(config, "evaluation.subgroups.columns", None)
    if columns is None:
        specs = list(declared.values())
    else:
        if isinstance(columns, str) or not isinstance(columns, Sequence):
            raise ValueError(f"evaluation.subgroups.columns must be a list of metadata columns or null, got {columns!r}")
        specs = [declared.get(str(c), SubgroupColumn(str(c))) for c in columns]
    age_bands = get_dotted(config, "evaluation.subgroups.age_bands", None)
    if age_bands is not None:
        edges = tuple(float(b) for b in age_bands)
        if not any(s.column == "age" and s.kind == "banded" for s in specs):
            name = descriptor.name if descriptor is not None else "this dataset"
            raise ValueError(f"evaluation.subgroups.age_bands is set but {name} has no banded age subgroup "
                             "column; set it to null")
        specs = [SubgroupColumn(s.column, "banded", edges, s.order, s.unknown, s.title)
                 if s.column == "age" and s.kind == "banded" else s for s in specs]
    for s in specs:
        if s.kind == "banded" and any(a >= b for a, b in zip(s.bands, s.bands[1:])):
            raise ValueError(f"subgroup column {s.column!r}: band edges must increase, got {list(s.bands)}")
    min_count = int(get_dotted(config, "evaluation.subgroups.min_count", DEFAULT_MIN_COUNT))
    return specs, min_count


def slug(value: str) -> str:
    """A group value as part of an MLflow metric name: ``lower extremity`` -> ``lower_extremity``."""
    text = str(value).strip().lower().replace("<", "lt").replace("+", "plus")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or MISSING


def _num(edge: float) -> str:
    return f"{edge:g}"


def band_labels(bands: Sequence[float]) -> list[str]:
    """``<30``, ``30-44`` ... ``75+`` for the edges (30, 45, 60, 75)."""
    if not bands:
        return ["all"]
    labels = [f"<{_num(bands[0])}"]
    labels += [f"{_num(a)}-{_num(b - 1) if float(b).is_integer() else _num(b)}" for a, b in zip(bands, bands[1:])]
    return labels + [f"{_num(bands[-1])}+"]


def banded(values: pd.Series, bands: Sequence[float]) -> np.ndarray:
    """Numbers (or number strings; empty or not a number = missing) to band labels."""
    numbers = pd.to_numeric(pd.Series(values).replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
    labels = np.asarray(band_labels(bands), dtype=object)
    idx = np.searchsorted(np.asarray(bands, dtype=np.float64), numbers, side="right")
    out = labels[np.minimum(idx, len(labels) - 1)]
    out[np.isnan(numbers)] = MISSING
    return out.astype(str)


def _level(value: Any) -> str:
    """A value as a group name; integral numbers without a decimal part (``3.0`` -> ``3``), so
    an ordinal column read as floats matches its declared levels."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if np.isfinite(number) and number.is_integer() else text


def group_labels(frame: pd.DataFrame, spec: SubgroupColumn | str) -> np.ndarray | None:
    """Each row's group in the column; None when the frame has no values for it."""
    spec = spec if isinstance(spec, SubgroupColumn) else SubgroupColumn(spec)
    if spec.column not in frame.columns:
        return None
    raw = frame[spec.column]
    if spec.kind == "banded":
        out = banded(raw, spec.bands)
    else:
        out = np.array([_level(v) if spec.kind == "ordinal" else str(v).strip() for v in raw], dtype=object)
        unknown = {_level(u) if spec.kind == "ordinal" else u for u in spec.unknown}
        empty = raw.isna().to_numpy() | (out == "") | (out == "nan") | np.isin(out, list(unknown))
        out[empty] = MISSING
        out = out.astype(str)
    if (out == MISSING).all():
        return None
    return out


def group_order(labels: np.ndarray, spec: SubgroupColumn) -> list[str]:
    """The groups present, in report order (bands and ordinal levels in their order, then
    categories sorted), ``missing`` last."""
    present = set(np.asarray(labels).astype(str).tolist())
    if spec.kind == "banded":
        base = [b for b in band_labels(spec.bands) if b in present]
    elif spec.kind == "ordinal":
        levels = [_level(o) for o in spec.order]
        base = [v for v in levels if v in present]
        base += sorted(v for v in present if v not in levels and v != MISSING)
    else:
        base = sorted(v for v in present if v != MISSING)
    return base + ([MISSING] if MISSING in present else [])


def split_groups(frame: pd.DataFrame, config: dict, descriptor: "DatasetDescriptor | None") -> dict[str, SubgroupValues]:
    """column -> its :class:`SubgroupValues`, for the subgroup columns the frame has values for."""
    specs, _ = subgroup_settings(config, descriptor)
    out = {}
    for spec in specs:
        labels = group_labels(frame, spec)
        if labels is not None:
            out[spec.column] = SubgroupValues(spec, labels, group_order(labels, spec))
    return out


def _values(column: str, groups: SubgroupValues | np.ndarray) -> SubgroupValues:
    if isinstance(groups, SubgroupValues):
        return groups
    labels = np.asarray(groups).astype(str)
    spec = SubgroupColumn(column)
    return SubgroupValues(spec, labels, group_order(labels, spec))


def subgroup_analysis(y_true: np.ndarray, y_pred: np.ndarray, group_ids: np.ndarray,
                      groups: Mapping[str, SubgroupValues | np.ndarray], n_classes: int, n_resamples: int = 1000,
                      confidence: float = 0.95, seed: int = 42, min_count: int = DEFAULT_MIN_COUNT,
                      targets: Sequence[GroupTarget] = (),
                      codes: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics with intervals, and per column the worst group and the largest gap.

    ``groups`` maps a column to its :class:`SubgroupValues` (or to plain per-row values,
    categorical). Returns ``(groups_table, gaps_table)``. ``groups_table`` has one row per
    (column, group): images, units (distinct lesions / patients, what the bootstrap resamples),
    ``small`` (fewer than ``min_count`` images) and ``min_count``, ``classes_present`` (classes
    with a true image in the group), ``single_class``, ``present_recall`` (each present class's
    recall with its counts, class names from ``codes``, else class indices), and each metric of
    :func:`~.bootstrap.metric_names` with ``_ci_low`` / ``_ci_high`` (macro-F1 NaN in a
    single-class group: see the module docstring).
    ``gaps_table`` has one row per (column, metric): the worst and best group among the groups
    that are neither small nor missing, the gap best - worst and its interval (the same two
    groups compared on every resample).
    """
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    unit, n_units = group_index(group_ids)
    if len(unit) != len(y_true):
        raise ValueError(f"{len(unit)} group ids for {len(y_true)} images")
    values = {column: _values(column, g) for column, g in groups.items()}
    keys: list[tuple[str, str]] = []
    rows_idx, slots = [], []
    for column, v in values.items():
        if len(v.labels) != len(y_true):
            raise ValueError(f"subgroup column {column!r} has {len(v.labels)} values for {len(y_true)} images")
        for value in v.order:
            rows = np.flatnonzero(v.labels == value)
            rows_idx.append(rows)
            slots.append(np.full(len(rows), len(keys)))
            keys.append((column, value))
    if not keys:
        return pd.DataFrame(), pd.DataFrame()
    g = len(keys)
    rows_all, slot_all = np.concatenate(rows_idx), np.concatenate(slots)
    stats = image_stats(y_true[rows_all], y_pred[rows_all], unit[rows_all], n_units, n_classes, targets, slot_all, g)
    names = metric_names(targets)
    point = point_metrics(stats, n_classes, targets)
    samples = (resampled_metrics(stats, n_classes, n_resamples, seed, targets) if n_resamples > 0
               else {m: np.empty((0, g)) for m in names})
    table = pd.DataFrame([_group_row(j, column, value, values[column].labels == value, y_true, y_pred, unit, point,
                                     samples, names, n_classes, n_resamples, confidence, min_count, codes)
                          for j, (column, value) in enumerate(keys)])
    gap_metrics = GAP_METRICS + tuple(t.name("sensitivity") for t in targets)
    gap_rows = []
    for column in values:
        eligible = [j for j, (c, v) in enumerate(keys)
                    if c == column and v != MISSING and not table.at[j, "small"]]
        for name in gap_metrics:
            gap_rows.append(_gap_row(column, name, eligible, keys, point, samples, n_resamples, confidence))
    gaps = pd.DataFrame(gap_rows)
    for col in ("worst_group", "worst", "best_group", "best", "gap", "gap_ci_low", "gap_ci_high"):
        if col not in gaps:
            gaps[col] = np.nan
    return table, gaps


def _group_row(j: int, column: str, value: str, m: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
               unit: np.ndarray, point: dict, samples: dict, names: Sequence[str], n_classes: int, n_resamples: int,
               confidence: float, min_count: int, codes: Sequence[str] | None) -> dict[str, Any]:
    """The groups table's row of group ``j`` (rows ``m``); a single-class group's macro-F1 is
    NaN, in ``point`` too (so no gap uses it)."""
    n = int(m.sum())
    support = np.bincount(y_true[m], minlength=n_classes)
    hits = np.bincount(y_true[m][y_pred[m] == y_true[m]], minlength=n_classes)
    present = np.flatnonzero(support)
    single = len(present) == 1
    row: dict[str, Any] = {"column": column, "group": value, "images": n,
                           "units": int(len(np.unique(unit[m]))), "small": bool(n < min_count),
                           "min_count": int(min_count), "classes_present": int(len(present)),
                           "single_class": bool(single),
                           "present_recall": "; ".join(f"{_code(codes, c)} {hits[c] / support[c]:.3f} "
                                                       f"({hits[c]}/{support[c]})" for c in present)}
    for name in names:
        row[name] = float(point[name][j])
        low, high = percentile_interval(samples[name][:, j], confidence) if n_resamples > 0 else (np.nan, np.nan)
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
    if single:  # macro-F1 over the wrongly predicted classes (F1 0 each) says nothing here
        row["macro_f1"] = row["macro_f1_ci_low"] = row["macro_f1_ci_high"] = np.nan
        point["macro_f1"][j] = np.nan
    return row


def _gap_row(column: str, name: str, eligible: list[int], keys: list[tuple[str, str]], point: dict, samples: dict,
             n_resamples: int, confidence: float) -> dict[str, Any]:
    """The gaps table's row of ``column`` and metric ``name``: the worst and best of the
    ``eligible`` groups, the gap and its interval."""
    usable = [j for j in eligible if np.isfinite(point[name][j])]
    row = {"column": column, "metric": name, "groups_compared": len(usable)}
    if len(usable) >= 1:
        worst = min(usable, key=lambda j: point[name][j])
        best = max(usable, key=lambda j: point[name][j])
        row.update({"worst_group": keys[worst][1], "worst": float(point[name][worst])})
        if len(usable) >= 2:  # a gap needs two groups (one group against itself is no gap)
            row.update({"best_group": keys[best][1], "best": float(point[name][best]),
                        "gap": float(point[name][best] - point[name][worst])})
        if len(usable) >= 2 and n_resamples > 0:
            diff = samples[name][:, best] - samples[name][:, worst]
            row["gap_ci_low"], row["gap_ci_high"] = percentile_interval(diff, confidence)
    return row


def _code(codes: Sequence[str] | None, c: int) -> str:
    return str(codes[c]) if codes is not None and 0 <= c < len(codes) else str(c)


def table_metric_names(table: pd.DataFrame) -> list[str]:
    """The metrics a subgroup table holds (every column with an interval), in table order."""
    return [c for c in table.columns if f"{c}_ci_low" in table.columns]


def subgroup_metrics(table: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, float]:
    """MLflow names that line up across runs: ``subgroup_sex_female_macro_f1`` (and ``_ci_low``,
    ``_ci_high``, ``_n``), ``subgroup_sex_worst_macro_f1``, ``subgroup_sex_gap_macro_f1`` (+ interval)."""
    out: dict[str, float] = {}
    names = table_metric_names(table)
    for row in table.to_dict("records"):
        base = f"subgroup_{slug(row['column'])}_{slug(row['group'])}"
        out[f"{base}_n"] = float(row["images"])
        for name in names:
            for suffix in ("", "_ci_low", "_ci_high"):
                out[f"{base}_{name}{suffix}"] = float(row[f"{name}{suffix}"])
    for row in gaps.to_dict("records"):
        base = f"subgroup_{slug(row['column'])}"
        out[f"{base}_worst_{row['metric']}"] = float(row["worst"])
        out[f"{base}_gap_{row['metric']}"] = float(row["gap"])
        out[f"{base}_gap_{row['metric']}_ci_low"] = float(row["gap_ci_low"])
        out[f"{base}_gap_{row['metric']}_ci_high"] = float(row["gap_ci_high"])
    return {k: v for k, v in out.items() if np.isfinite(v)}


def coverage_by_group(covered: np.ndarray, set_size: np.ndarray, groups: Mapping[str, SubgroupValues | np.ndarray],
                      min_count: int) -> pd.DataFrame:
    """Conformal coverage and mean set size per (column, group), groups in the order of the subgroup table."""
    rows = []
    for column, g in groups.items():
        v = _values(column, g)
        for value in v.order:
            m = v.labels == value
            rows.append({"column": column, "group": value, "images": int(m.sum()), "small": bool(m.sum() < min_count),
                         "coverage": float(covered[m].mean()), "mean_set_size": float(set_size[m].mean())})
    return pd.DataFrame(rows)
