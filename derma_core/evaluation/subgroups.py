"""Subgroup evaluation: metrics per value of a metadata column, with lesion-level intervals.

For every configured column of the split frame (HAM10000's ``sex``, ``localization``,
``dx_type``, and ``age`` cut into bands) each group gets accuracy, balanced accuracy and
macro-F1 with percentile intervals from the lesion-level bootstrap of :mod:`.bootstrap`, plus,
per column, the worst group and the largest gap (best minus worst group) with its interval.

Groups below ``evaluation.subgroups.min_count`` images are reported (and flagged ``small``) but
do not take part in the worst group and the gap; neither does the ``missing`` group (no value).

Speed: one set of lesion resamples serves every group of every column. Each group's images are
reduced to per-lesion confusion cells (zero for lesions outside the group), the cells of all
groups sit side by side in one (L, G * 56) matrix, and one matrix product per block of resamples
yields every group's confusion table on every resample.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..labels import NUM_CLASSES
from .bootstrap import (BOOTSTRAP_METRICS, _COLS, lesion_cells, lesion_index, metrics_from_confusion,
                        percentile_interval, resample_counts)
from .metrics import _check

DEFAULT_COLUMNS = ("sex", "localization", "dx_type", "age")
#: Age band edges in years: <30, 30-44, 45-59, 60-74, 75+.
DEFAULT_AGE_BANDS = (30, 45, 60, 75)
DEFAULT_MIN_COUNT = 30
MISSING = "missing"
#: The metrics whose worst group and gap are reported.
GAP_METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


def subgroup_settings(config: dict) -> tuple[list[str], list[float], int]:
    """(columns, age band edges, small-group threshold) from ``evaluation.subgroups``."""
    columns = get_dotted(config, "evaluation.subgroups.columns", list(DEFAULT_COLUMNS))
    bands = get_dotted(config, "evaluation.subgroups.age_bands", list(DEFAULT_AGE_BANDS))
    min_count = int(get_dotted(config, "evaluation.subgroups.min_count", DEFAULT_MIN_COUNT))
    columns = list(columns or [])
    bands = [float(b) for b in (bands or [])]
    if any(b >= c for b, c in zip(bands, bands[1:])):
        raise ValueError(f"evaluation.subgroups.age_bands must increase, got {bands}")
    return columns, bands, min_count


def slug(value: str) -> str:
    """A group value as part of an MLflow metric name: ``lower extremity`` -> ``lower_extremity``."""
    text = str(value).strip().lower().replace("<", "lt").replace("+", "plus")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_") or MISSING


def _num(edge: float) -> str:
    return f"{edge:g}"


def age_band_labels(bands: list[float]) -> list[str]:
    if not bands:
        return ["all"]
    labels = [f"<{_num(bands[0])}"]
    labels += [f"{_num(a)}-{_num(b - 1) if float(b).is_integer() else _num(b)}" for a, b in zip(bands, bands[1:])]
    return labels + [f"{_num(bands[-1])}+"]


def age_bands(ages: pd.Series, bands: list[float]) -> np.ndarray:
    """Ages (numbers or strings; empty = missing) to band labels (``<30``, ``30-44`` ... ``75+``)."""
    values = pd.to_numeric(pd.Series(ages).replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
    labels = np.asarray(age_band_labels(bands), dtype=object)
    idx = np.searchsorted(np.asarray(bands, dtype=np.float64), values, side="right")
    out = labels[np.minimum(idx, len(labels) - 1)]
    out[np.isnan(values)] = MISSING
    return out.astype(str)


def group_labels(frame: pd.DataFrame, column: str, bands: list[float]) -> np.ndarray | None:
    """Each row's group in ``column`` (age cut into bands); None when the frame has no such values."""
    if column not in frame.columns:
        return None
    if column == "age":
        out = age_bands(frame[column], bands)
    else:
        raw = frame[column]
        out = raw.astype(str).str.strip().to_numpy(dtype=object)
        out[raw.isna().to_numpy() | (out == "") | (out == "nan")] = MISSING
        out = out.astype(str)
    if (out == MISSING).all():
        return None
    return out


def split_groups(frame: pd.DataFrame, config: dict) -> dict[str, np.ndarray]:
    """column -> per-row group labels, for the configured columns the frame has values for."""
    columns, bands, _ = subgroup_settings(config)
    out = {}
    for column in columns:
        labels = group_labels(frame, column, bands)
        if labels is not None:
            out[column] = labels
    return out


def _order(values: np.ndarray, column: str, bands: list[float]) -> list[str]:
    present = set(values.tolist())
    if column == "age":
        base = [b for b in age_band_labels(bands) if b in present]
    else:
        base = sorted(v for v in present if v != MISSING)
    return base + ([MISSING] if MISSING in present else [])


def subgroup_analysis(y_true: np.ndarray, y_pred: np.ndarray, lesion_ids: np.ndarray,
                      groups: dict[str, np.ndarray], n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 42, min_count: int = DEFAULT_MIN_COUNT,
                      bands: list[float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics with intervals, and per column the worst group and the largest gap.

    Returns ``(groups_table, gaps_table)``. ``groups_table`` has one row per (column, group):
    images, lesions, ``small``, and each metric of :data:`BOOTSTRAP_METRICS` with ``_ci_low`` /
    ``_ci_high``. ``gaps_table`` has one row per (column, metric): the worst and best group among
    the groups that are neither small nor missing, the gap best - worst and its interval (the same
    two groups compared on every resample).
    """
    y_true, y_pred = _check(y_true, y_pred)
    bands = list(DEFAULT_AGE_BANDS if bands is None else bands)
    lesion, n_lesions = lesion_index(lesion_ids)
    if len(lesion) != len(y_true):
        raise ValueError(f"{len(lesion)} lesion ids for {len(y_true)} images")
    keys: list[tuple[str, str]] = []
    blocks = []
    for column, labels in groups.items():
        labels = np.asarray(labels).astype(str)
        if len(labels) != len(y_true):
            raise ValueError(f"subgroup column {column!r} has {len(labels)} values for {len(y_true)} images")
        for value in _order(labels, column, bands):
            m = labels == value
            keys.append((column, value))
            blocks.append(lesion_cells(y_true[m], y_pred[m], lesion[m], n_lesions))
    if not keys:
        return pd.DataFrame(), pd.DataFrame()
    cells = np.concatenate(blocks, axis=1)  # (L, G * 56)
    g = len(keys)
    point = metrics_from_confusion(cells.sum(axis=0).reshape(g, NUM_CLASSES, _COLS))
    dist: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_METRICS}
    if n_resamples > 0:
        for counts in resample_counts(n_lesions, n_resamples, seed):
            cm = (counts @ cells).reshape(-1, g, NUM_CLASSES, _COLS)
            for name, values in metrics_from_confusion(cm).items():
                dist[name].append(values)
    samples = {m: np.concatenate(v, axis=0) if v else np.empty((0, g)) for m, v in dist.items()}
    rows = []
    for j, (column, value) in enumerate(keys):
        m = np.asarray(groups[column]).astype(str) == value
        n = int(m.sum())
        row: dict[str, Any] = {"column": column, "group": value, "images": n,
                               "lesions": int(len(np.unique(lesion[m]))), "small": bool(n < min_count)}
        for name in BOOTSTRAP_METRICS:
            row[name] = float(point[name][j])
            low, high = percentile_interval(samples[name][:, j], confidence) if n_resamples > 0 else (np.nan, np.nan)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        rows.append(row)
    table = pd.DataFrame(rows)
    gap_rows = []
    for column in groups:
        eligible = [j for j, (c, v) in enumerate(keys)
                    if c == column and v != MISSING and not table.at[j, "small"]]
        for name in GAP_METRICS:
            usable = [j for j in eligible if np.isfinite(point[name][j])]
            row = {"column": column, "metric": name, "groups_compared": len(usable)}
            if len(usable) >= 1:
                worst = min(usable, key=lambda j: point[name][j])
                best = max(usable, key=lambda j: point[name][j])
                row.update({"worst_group": keys[worst][1], "worst": float(point[name][worst]),
                            "best_group": keys[best][1], "best": float(point[name][best]),
                            "gap": float(point[name][best] - point[name][worst])})
                if len(usable) >= 2 and n_resamples > 0:
                    diff = samples[name][:, best] - samples[name][:, worst]
                    row["gap_ci_low"], row["gap_ci_high"] = percentile_interval(diff, confidence)
            gap_rows.append(row)
    gaps = pd.DataFrame(gap_rows)
    for col in ("worst_group", "worst", "best_group", "best", "gap", "gap_ci_low", "gap_ci_high"):
        if col not in gaps:
            gaps[col] = np.nan
    return table, gaps


def subgroup_metrics(table: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, float]:
    """MLflow names that line up across runs: ``subgroup_sex_female_macro_f1`` (and ``_ci_low``,
    ``_ci_high``, ``_n``), ``subgroup_sex_worst_macro_f1``, ``subgroup_sex_gap_macro_f1`` (+ interval)."""
    out: dict[str, float] = {}
    for row in table.itertuples(index=False):
        base = f"subgroup_{slug(row.column)}_{slug(row.group)}"
        out[f"{base}_n"] = float(row.images)
        for name in BOOTSTRAP_METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                out[f"{base}_{name}{suffix}"] = float(getattr(row, f"{name}{suffix}"))
    for row in gaps.itertuples(index=False):
        base = f"subgroup_{slug(row.column)}"
        out[f"{base}_worst_{row.metric}"] = float(row.worst)
        out[f"{base}_gap_{row.metric}"] = float(row.gap)
        out[f"{base}_gap_{row.metric}_ci_low"] = float(row.gap_ci_low)
        out[f"{base}_gap_{row.metric}_ci_high"] = float(row.gap_ci_high)
    return {k: v for k, v in out.items() if np.isfinite(v)}


def coverage_by_group(covered: np.ndarray, set_size: np.ndarray, groups: dict[str, np.ndarray],
                      min_count: int, bands: list[float] | None = None) -> pd.DataFrame:
    """Conformal coverage and mean set size per (column, group), groups in the order of the subgroup table."""
    bands = list(DEFAULT_AGE_BANDS if bands is None else bands)
    rows = []
    for column, labels in groups.items():
        labels = np.asarray(labels).astype(str)
        for value in _order(labels, column, bands):
            m = labels == value
            rows.append({"column": column, "group": value, "images": int(m.sum()), "small": bool(m.sum() < min_count),
                         "coverage": float(covered[m].mean()), "mean_set_size": float(set_size[m].mean())})
    return pd.DataFrame(rows)
