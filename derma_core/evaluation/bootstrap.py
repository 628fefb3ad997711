"""Group-level bootstrap (lesions or patients): confidence intervals and paired differences.

Images of one lesion (or one patient) are not independent, so a bootstrap resample draws
*groups* with replacement (as many as the split has) and keeps all images of every drawn
group, each as often as its group was drawn. What a group is comes from the dataset
(``split.group_ids``: HAM10000's lesions, a patient id, or each image on its own).

Speed: calling scikit-learn once per resample costs ~10 ms per metric, i.e. half a minute for
1000 resamples. Instead every metric is read off a few counts that are sums over images:
per class its true positives, true images and predicted images, the number of images, and per
grouping its positive / negative images and those predicted in / outside the positive group
(:func:`image_stats`, 3K + 1 + 4 per grouping numbers; not the K x (K + 1) confusion table,
which would be 13,110 numbers at 114 classes). Each group's sums form a sparse
(groups, slots x width) matrix (slots: subgroups side by side, or the two runs of a paired test),
and the sums of a block of resamples come out of one matrix product. The metrics then follow
the definitions of :func:`derma_core.evaluation.metrics.classification_metrics` and
:func:`~derma_core.evaluation.metrics.grouped_label_metrics`; the tests check they equal
scikit-learn's ``sample_weight`` results on each resample. Blocks are split so that no product
holds more than :data:`MAX_PRODUCT` numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import sparse

from ..labels import INVALID
from .metrics import GroupTarget, _check

#: The metrics that get bootstrap intervals (plus each grouping's :data:`~.metrics.GROUPED_LABEL_METRICS`).
BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
#: Resamples drawn per block (the random stream depends on it: keep it fixed).
BLOCK = 250
#: The most numbers one block's matrix product may hold (rows of a block are taken in chunks below it).
MAX_PRODUCT = 1 << 22


def metric_names(targets: Sequence[GroupTarget] = ()) -> tuple[str, ...]:
    """The bootstrapped metric names: :data:`BOOTSTRAP_METRICS` then ``<grouping>_sensitivity``,
    ``_specificity``, ``_balanced_accuracy`` per target."""
    grouped = tuple(t.name(m) for t in targets for m in ("sensitivity", "specificity", "balanced_accuracy"))
    return BOOTSTRAP_METRICS + grouped


def group_index(group_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Each image's group as an index 0..G-1 (group ids in sorted order) and G.

    Sorted order makes the resamples depend on the set of groups only, not on row order.
    """
    group_ids = np.asarray(group_ids).astype(str)
    uniques, inverse = np.unique(group_ids, return_inverse=True)
    return inverse.ravel().astype(np.int64), len(uniques)


def stats_width(n_classes: int, targets: Sequence[GroupTarget] = ()) -> int:
    """Numbers per slot of :func:`image_stats`: tp, support, predicted (K each), total, and per
    target positives, negatives, hits, rejections."""
    return 3 * int(n_classes) + 1 + 4 * len(targets)


def image_stats(y_true: np.ndarray, y_pred: np.ndarray, group: np.ndarray, n_groups: int, n_classes: int,
                targets: Sequence[GroupTarget] = (), slot: np.ndarray | None = None,
                n_slots: int = 1) -> sparse.csr_array:
    """(G, n_slots * width) sparse sums per group of the counts the metrics are read off
    (layout: :func:`stats_width`); with ``slot`` each image counts in the block of its slot.
    An invalid answer is a true image of its class and predicted in no class and no group."""
    k = int(n_classes)
    width = stats_width(k, targets)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    offset = np.zeros(len(y_true), dtype=np.int64) if slot is None else np.asarray(slot, dtype=np.int64) * width
    valid = y_pred != INVALID
    rows, cols = [group, group], [offset + k + y_true, offset + 3 * k]  # support, total
    hit = y_pred == y_true
    rows.append(group[hit])
    cols.append(offset[hit] + y_true[hit])  # true positives
    rows.append(group[valid])
    cols.append(offset[valid] + 2 * k + y_pred[valid])  # predicted
    for j, t in enumerate(targets):
        base = offset + 3 * k + 1 + 4 * j
        truth = t.mask[y_true]
        said = np.zeros(len(y_true), dtype=bool)
        said[valid] = t.mask[y_pred[valid]]
        for col, m in enumerate((truth, ~truth, truth & valid & said, ~truth & valid & ~said)):
            rows.append(group[m])
            cols.append(base[m] + col)
    r, c = np.concatenate(rows), np.concatenate(cols)
    out = sparse.coo_array((np.ones(len(r)), (r, c)), shape=(n_groups, n_slots * width))
    return out.tocsr()  # duplicates summed


def resample_counts(n_groups: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of shape (b, G): how often each group is drawn in each resample (seeded)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(BLOCK, n_resamples - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = (draws + np.arange(b)[:, None] * n_groups).ravel()
        yield np.bincount(flat, minlength=b * n_groups).reshape(b, n_groups).astype(np.float64)
        done += b


def metrics_from_stats(stats: np.ndarray, n_classes: int, targets: Sequence[GroupTarget] = ()) -> dict[str, np.ndarray]:
    """The metrics of :func:`metric_names` from a stack of (…, width) sums of :func:`image_stats`.

    Invalid answers are in a class's true images but no class's predicted images: they add to
    its false negatives and to no false positives. Balanced accuracy averages recall over classes
    with true images; macro-F1 averages F1 = 2TP / (2TP + FP + FN) over classes with any true or
    predicted image. A target's sensitivity is the share of its positive-group images predicted
    in the positive group, its specificity the share of the others predicted (validly) outside it.
    """
    stats = np.asarray(stats, dtype=np.float64)
    k = int(n_classes)
    tp, support, predicted = stats[..., :k], stats[..., k:2 * k], stats[..., 2 * k:3 * k]
    total = stats[..., 3 * k]
    fp = predicted - tp
    fn = support - tp
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["accuracy"] = tp.sum(axis=-1) / total
        recall = np.where(support > 0, tp / support, np.nan)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
        out["balanced_accuracy"] = _nanmean(recall)
        out["macro_f1"] = _nanmean(f1)
        for j, t in enumerate(targets):
            base = 3 * k + 1 + 4 * j
            positives, negatives, hit, rejected = (stats[..., base + i] for i in range(4))
            sens = np.where(positives > 0, hit / positives, np.nan)
            spec = np.where(negatives > 0, rejected / negatives, np.nan)
            out[t.name("sensitivity")] = sens
            out[t.name("specificity")] = spec
            out[t.name("balanced_accuracy")] = _nanmean(np.stack([sens, spec], axis=-1))
    return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.sum(~np.isnan(x), axis=-1)
    s = np.nansum(x, axis=-1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def resampled_metrics(stats: sparse.csr_array, n_classes: int, n_resamples: int, seed: int,
                      targets: Sequence[GroupTarget] = ()) -> dict[str, np.ndarray]:
    """Each metric of :func:`metric_names` on ``n_resamples`` group-level resamples, for every
    slot of ``stats`` (from :func:`image_stats`): arrays of shape (n_resamples, n_slots)."""
    width = stats_width(n_classes, targets)
    n_groups, total_width = stats.shape
    n_slots = total_width // width
    parts: dict[str, list[np.ndarray]] = {m: [] for m in metric_names(targets)}
    rows = max(1, MAX_PRODUCT // max(1, total_width))
    for counts in resample_counts(n_groups, n_resamples, seed):
        for start in range(0, len(counts), rows):
            sums = np.asarray(counts[start:start + rows] @ stats).reshape(-1, n_slots, width)
            for name, values in metrics_from_stats(sums, n_classes, targets).items():
                parts[name].append(values)
    return {m: np.concatenate(v, axis=0) if v else np.empty((0, n_slots)) for m, v in parts.items()}


def point_metrics(stats: sparse.csr_array, n_classes: int, targets: Sequence[GroupTarget] = ()) -> dict[str, np.ndarray]:
    """The metrics of the un-resampled sums, one value per slot."""
    sums = np.asarray(stats.sum(axis=0)).reshape(-1, stats_width(n_classes, targets))
    return metrics_from_stats(sums, n_classes, targets)


def bootstrap_distribution(y_true: np.ndarray, y_pred: np.ndarray, group_ids: np.ndarray, n_classes: int,
                           n_resamples: int, seed: int, targets: Sequence[GroupTarget] = ()) -> dict[str, np.ndarray]:
    """Each metric of :func:`metric_names` on ``n_resamples`` group-level resamples."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    group, n_groups = group_index(group_ids)
    if len(group) != len(y_true):
        raise ValueError(f"{len(group)} group ids for {len(y_true)} images")
    stats = image_stats(y_true, y_pred, group, n_groups, n_classes, targets)
    return {m: v[:, 0] for m, v in resampled_metrics(stats, n_classes, n_resamples, seed, targets).items()}


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile bootstrap interval at ``confidence`` (NaN resamples ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, group_ids: np.ndarray, n_classes: int,
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 42,
                 targets: Sequence[GroupTarget] = ()) -> dict[str, tuple[float, float]]:
    """Percentile intervals for accuracy, balanced accuracy, macro-F1 (and each target's
    sensitivity, specificity and balanced accuracy), resampling groups."""
    if not 0 < confidence < 1:
        raise ValueError(f"evaluation.confidence must be between 0 and 1, got {confidence}")
    if n_resamples <= 0:
        return {}
    dist = bootstrap_distribution(y_true, y_pred, group_ids, n_classes, n_resamples, seed, targets)
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


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, group_ids: np.ndarray,
                     n_classes: int, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 42,
                     targets: Sequence[GroupTarget] = ()) -> dict[str, PairedDifference]:
    """Paired group-level bootstrap of metric(A) - metric(B) on the same images.

    Both runs are evaluated on the *same* resample each time (their sums are two slots of one
    matrix), so the interval reflects only how differently the two models do on the same groups.
    """
    y_true, pred_a = _check(y_true, pred_a, n_classes)
    _, pred_b = _check(y_true, pred_b, n_classes)
    group, n_groups = group_index(group_ids)
    if len(group) != len(y_true):
        raise ValueError(f"{len(group)} group ids for {len(y_true)} images")
    n = len(y_true)
    stats = image_stats(np.concatenate([y_true, y_true]), np.concatenate([pred_a, pred_b]),
                        np.concatenate([group, group]), n_groups, n_classes, targets,
                        slot=np.repeat([0, 1], n), n_slots=2)
    full = point_metrics(stats, n_classes, targets)
    dist = resampled_metrics(stats, n_classes, n_resamples, seed, targets) if n_resamples > 0 else {}
    out = {}
    for m in metric_names(targets):
        values = dist[m][:, 0] - dist[m][:, 1] if m in dist else np.empty(0)
        low, high = percentile_interval(values, confidence) if len(values) else (float("nan"), float("nan"))
        kept = values[~np.isnan(values)]
        a, b = float(full[m][0]), float(full[m][1])
        out[m] = PairedDifference(m, a, b, a - b, low, high,
                                  float(np.mean(kept <= 0)) if len(kept) else float("nan"))
    return out
