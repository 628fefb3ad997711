"""Lesion-level bootstrap: confidence intervals and paired differences.

HAM10000 has several images of many lesions, and images of one lesion are not independent, so
a bootstrap resample draws *lesions* with replacement (as many as the split has) and keeps all
images of every drawn lesion, each as often as its lesion was drawn.

Speed: calling scikit-learn once per resample costs ~10 ms per metric, i.e. half a minute for
1000 resamples. Instead every image is reduced to a cell of the 7 x 8 (true x predicted-or-
invalid) confusion table, each lesion to its counts per cell, and the confusion tables of a
whole block of resamples come out of one matrix product. The three metrics are then read off
those tables with the definitions of :func:`derma_core.evaluation.metrics.classification_metrics`;
the tests check they equal scikit-learn's ``sample_weight`` results on each resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..labels import NUM_CLASSES
from .metrics import INVALID, _check

#: The metrics that get bootstrap intervals.
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
#: Resamples drawn per block (bounds memory at block x lesions integers).
BLOCK = 250
_COLS = NUM_CLASSES + 1  # predicted class or invalid (last column)


def lesion_index(lesion_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Each image's lesion as an index 0..L-1 (lesion ids in sorted order) and L.

    Sorted order makes the resamples depend on the set of lesions only, not on row order.
    """
    lesion_ids = np.asarray(lesion_ids).astype(str)
    uniques, inverse = np.unique(lesion_ids, return_inverse=True)
    return inverse.ravel().astype(np.int64), len(uniques)


def lesion_cells(y_true: np.ndarray, y_pred: np.ndarray, lesion: np.ndarray, n_lesions: int) -> np.ndarray:
    """(L, 7*8) counts: how many images of each lesion fall in each confusion cell."""
    col = np.where(y_pred == INVALID, NUM_CLASSES, y_pred)
    cell = y_true * _COLS + col
    out = np.zeros((n_lesions, NUM_CLASSES * _COLS), dtype=np.float64)
    np.add.at(out, (lesion, cell), 1.0)
    return out


def resample_counts(n_lesions: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of shape (b, L): how often each lesion is drawn in each resample (seeded)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(BLOCK, n_resamples - done)
        draws = rng.integers(0, n_lesions, size=(b, n_lesions))
        flat = (draws + np.arange(b)[:, None] * n_lesions).ravel()
        yield np.bincount(flat, minlength=b * n_lesions).reshape(b, n_lesions).astype(np.float64)
        done += b


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced_accuracy and macro_f1 of a stack of (…, 7, 8) confusion tables.

    Column 7 holds invalid answers: they add to a class's false negatives and to no class's
    false positives. Balanced accuracy averages recall over classes with true examples; macro-F1
    averages F1 = 2TP / (2TP + FP + FN) over classes with any true or predicted example.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum(axis=(-2, -1))
    tp = np.diagonal(cm[..., :NUM_CLASSES], axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm[..., :NUM_CLASSES].sum(axis=-2)
    fp = predicted - tp
    fn = support - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = tp.sum(axis=-1) / total
        recall = np.where(support > 0, tp / support, np.nan)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
        balanced = _nanmean(recall)
        macro_f1 = _nanmean(f1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": macro_f1}


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.sum(~np.isnan(x), axis=-1)
    s = np.nansum(x, axis=-1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def bootstrap_distribution(y_true: np.ndarray, y_pred: np.ndarray, lesion_ids: np.ndarray,
                           n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Each metric of :data:`BOOTSTRAP_METRICS` on ``n_resamples`` lesion-level resamples."""
    y_true, y_pred = _check(y_true, y_pred)
    lesion, n_lesions = lesion_index(lesion_ids)
    if len(lesion) != len(y_true):
        raise ValueError(f"{len(lesion)} lesion ids for {len(y_true)} images")
    cells = lesion_cells(y_true, y_pred, lesion, n_lesions)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_METRICS}
    for counts in resample_counts(n_lesions, n_resamples, seed):
        cm = (counts @ cells).reshape(-1, NUM_CLASSES, _COLS)
        for name, values in metrics_from_confusion(cm).items():
            parts[name].append(values)
    return {m: np.concatenate(v) if v else np.empty(0) for m, v in parts.items()}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile bootstrap interval at ``confidence`` (NaN resamples ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, lesion_ids: np.ndarray, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 42) -> dict[str, tuple[float, float]]:
    """Percentile intervals for accuracy, balanced accuracy and macro-F1, resampling lesions."""
    if not 0 < confidence < 1:
        raise ValueError(f"evaluation.confidence must be between 0 and 1, got {confidence}")
    if n_resamples <= 0:
        return {}
    dist = bootstrap_distribution(y_true, y_pred, lesion_ids, n_resamples, seed)
    return {m: percentile_interval(v, confidence) for m, v in dist.items()}


@dataclass
class PairedDifference:
    """Run A minus run B on one metric: point difference, interval, and the resamples' spread."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    #: Fraction of resamples in which A - B <= 0 (a one-sided bootstrap tail, for orientation).
    frac_not_better: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, lesion_ids: np.ndarray,
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 42,
                     ) -> dict[str, PairedDifference]:
    """Paired lesion-level bootstrap of metric(A) - metric(B) on the same images.

    Both runs are evaluated on the *same* resample each time, so the interval reflects only
    how differently the two models do on the same lesions.
    """
    y_true, pred_a = _check(y_true, pred_a)
    _, pred_b = _check(y_true, pred_b)
    lesion, n_lesions = lesion_index(lesion_ids)
    cells_a = lesion_cells(y_true, pred_a, lesion, n_lesions)
    cells_b = lesion_cells(y_true, pred_b, lesion, n_lesions)
    full_a = metrics_from_confusion(cells_a.sum(axis=0).reshape(NUM_CLASSES, _COLS))
    full_b = metrics_from_confusion(cells_b.sum(axis=0).reshape(NUM_CLASSES, _COLS))
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in BOOTSTRAP_METRICS}
    if n_resamples > 0:
        for counts in resample_counts(n_lesions, n_resamples, seed):
            ma = metrics_from_confusion((counts @ cells_a).reshape(-1, NUM_CLASSES, _COLS))
            mb = metrics_from_confusion((counts @ cells_b).reshape(-1, NUM_CLASSES, _COLS))
            for m in BOOTSTRAP_METRICS:
                diffs[m].append(ma[m] - mb[m])
    out = {}
    for m in BOOTSTRAP_METRICS:
        values = np.concatenate(diffs[m]) if diffs[m] else np.empty(0)
        low, high = percentile_interval(values, confidence) if len(values) else (float("nan"), float("nan"))
        kept = values[~np.isnan(values)]
        a, b = float(full_a[m]), float(full_b[m])
        out[m] = PairedDifference(m, a, b, a - b, low, high,
                                  float(np.mean(kept <= 0)) if len(kept) else float("nan"))
    return out
