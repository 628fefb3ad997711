"""Point metrics on label indices and probabilities, computed with scikit-learn.

Conventions used everywhere in :mod:`derma_core.evaluation`:

* ``y_true`` holds label indices ``0..K-1`` in the order of the run's
  :class:`~derma_core.labels.LabelSet` (K classes; nothing here assumes a particular K).
  Array-level functions take ``n_classes`` (or read K off a probabilities array); functions
  whose output names classes take the ``label_set``.
* ``y_pred`` holds label indices, or :data:`INVALID` (``-1``) for an invalid answer (free text
  that names no single class). The sentinel is never part of the label set handed to
  scikit-learn, so an invalid answer is a miss for its true class and a false positive for no
  class: it counts as wrong everywhere, and macro-F1 stays a mean over the K classes, exactly as
  the original HAM10000 study computed it.

Grouped metrics: for every grouping of the label set that names a positive group (HAM10000's
``malignancy`` with ``malignant``), a prediction's group is the group of its predicted class
and P(group) is the sum of its classes' probabilities; the positive group against all other
groups gives ``<grouping>_sensitivity``, ``_specificity``, ``_balanced_accuracy``, ``_auroc``
and ``_sensitivity_at_spec80/90`` (see :class:`GroupTarget`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from ..labels import INVALID, LabelSet

#: The specificities at which the focus class's (and each grouping's) sensitivity is reported.
SPECIFICITIES = (0.80, 0.90)
#: Grouped metrics read off predicted labels (they get bootstrap intervals): ``<grouping>_<name>``.
GROUPED_LABEL_METRICS = ("sensitivity", "specificity", "balanced_accuracy")


def class_indices(n_classes: int) -> list[int]:
    """The class indices handed to scikit-learn as ``labels=`` (the invalid sentinel left out)."""
    return list(range(int(n_classes)))


def _check(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and of equal length")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty split")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold label indices 0..{n_classes - 1} (true labels cannot be invalid)")
    if y_pred.min() < INVALID or y_pred.max() >= n_classes:
        raise ValueError(f"y_pred must hold label indices 0..{n_classes - 1} or {INVALID} for an invalid answer")
    return y_true, y_pred


# -- groupings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupTarget:
    """A grouping with a positive group, as a binary target: ``mask[c]`` says whether class
    ``c`` belongs to the positive group. Its metrics are named ``<grouping>_<metric>``."""

    grouping: str
    positive: str
    mask: np.ndarray

    def name(self, metric: str) -> str:
        return f"{self.grouping}_{metric}"

    def of(self, y: np.ndarray) -> np.ndarray:
        """Per image: 1 when the (true or predicted) class is in the positive group, 0 when it is
        not, :data:`INVALID` for an invalid answer."""
        y = np.asarray(y, dtype=np.int64)
        out = np.full(len(y), INVALID, dtype=np.int64)
        valid = y != INVALID
        out[valid] = self.mask[y[valid]].astype(np.int64)
        return out


def group_targets(label_set: LabelSet) -> list[GroupTarget]:
    """One :class:`GroupTarget` per grouping of ``label_set`` that names a positive group."""
    out = []
    for grouping, positive in label_set.positive.items():
        if grouping in label_set:
            raise ValueError(f"label set: grouping {grouping!r} has the name of a class; its metrics "
                             f"({grouping}_sensitivity ...) would mix with the class's. Rename the grouping")
        mapping = label_set.groupings[grouping]
        mask = np.array([mapping[code] == positive for code in label_set.codes], dtype=bool)
        out.append(GroupTarget(grouping, positive, mask))
    return out


def grouped_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                          targets: list[GroupTarget]) -> dict[str, float]:
    """Per target: sensitivity (recall of the positive group), specificity (recall of the other
    groups) and their mean, from predicted labels. An invalid answer is wrong in both (a missed
    positive, and a negative not recognised as one). NaN where the split has no positives
    (or no negatives); the balanced accuracy then averages what there is."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    out: dict[str, float] = {}
    for t in targets:
        truth, pred = t.of(y_true), t.of(y_pred)
        recalls = []
        for metric, cls in (("sensitivity", 1), ("specificity", 0)):
            if (truth == cls).any():
                value = float(recall_score(truth, pred, labels=[cls], average="macro", zero_division=0))
            else:
                value = float("nan")
            out[t.name(metric)] = value
            recalls.append(value)
        present = [r for r in recalls if not np.isnan(r)]
        out[t.name("balanced_accuracy")] = float(np.mean(present)) if present else float("nan")
    return out


def grouped_probability_metrics(y_true: np.ndarray, probabilities: np.ndarray,
                                targets: list[GroupTarget]) -> dict[str, float]:
    """Per target: AUROC of P(positive group) = the sum of its classes' probabilities, and the
    sensitivity at each of :data:`SPECIFICITIES` (names ``<grouping>_auroc``,
    ``<grouping>_sensitivity_at_spec80`` ...). Left out where the split has no positives or no
    negatives."""
    y_true = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    out: dict[str, float] = {}
    for t in targets:
        truth = t.mask[y_true]
        if truth.all() or not truth.any():
            continue
        score = p[:, t.mask].sum(axis=1)
        out[t.name("auroc")] = float(roc_auc_score(truth, score))
        for spec in SPECIFICITIES:
            out[t.name(f"sensitivity_at_spec{round(spec * 100)}")] = sensitivity_at_specificity(truth, score, spec)
    return out


# -- label metrics ---------------------------------------------------------------------------------
def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1 and weighted_f1 (invalid answers count as wrong).

    * balanced accuracy is the mean per-class recall over the classes present in ``y_true``
      (the ISIC 2018 Task 3 score);
    * macro-F1 is the unweighted mean of the K per-class F1 scores; a class with neither true
      nor predicted examples has no F1 and is left out of the mean (``zero_division=nan``) —
      on a split where every class occurs this is exactly the K-label macro-F1;
    * weighted-F1 weights each class's F1 by its support.
    """
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    labels = class_indices(n_classes)
    with warnings.catch_warnings():
        # balanced_accuracy_score warns that the invalid sentinel "is not in y_true": intended.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=np.nan)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
    }


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, label_set: LabelSet) -> pd.DataFrame:
    """One row per class of ``label_set``: precision, recall, F1 and support (true count) plus
    predicted count. Precision of a class that is never predicted is reported as 0."""
    k = len(label_set)
    y_true, y_pred = _check(y_true, y_pred, k)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=class_indices(k), average=None, zero_division=0)
    predicted = np.bincount(y_pred[y_pred != INVALID], minlength=k)
    return pd.DataFrame({
        "label": list(label_set.codes),
        "precision": precision.astype(float),
        "recall": recall.astype(float),
        "f1": f1.astype(float),
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    })


def per_class_metrics(report: pd.DataFrame) -> dict[str, float]:
    """``precision_<label>``, ``recall_<label>``, ``f1_<label>``, ``support_<label>`` from a report."""
    out: dict[str, float] = {}
    for row in report.itertuples(index=False):
        out[f"precision_{row.label}"] = float(row.precision)
        out[f"recall_{row.label}"] = float(row.recall)
        out[f"f1_{row.label}"] = float(row.f1)
        out[f"support_{row.label}"] = float(row.support)
    return out


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, label_set: LabelSet,
                     include_invalid: bool = True) -> pd.DataFrame:
    """Confusion matrix (rows: true label, columns: predicted label) as a table.

    With ``include_invalid`` an ``invalid`` column counts the invalid answers of each true class.
    """
    k = len(label_set)
    y_true, y_pred = _check(y_true, y_pred, k)
    labels = class_indices(k) + ([INVALID] if include_invalid else [])
    keep = slice(None) if include_invalid else (y_pred != INVALID)
    cm = confusion_matrix(y_true[keep], y_pred[keep], labels=labels)
    # confusion_matrix is square over `labels`; the invalid row (no true label is invalid) is dropped.
    columns = list(label_set.codes) + (["invalid"] if include_invalid else [])
    frame = pd.DataFrame(cm[:k], columns=columns)
    frame.insert(0, "true", list(label_set.codes))
    return frame


def valid_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """K x K counts over the valid answers only (what the confusion-matrix figures show)."""
    y_true, y_pred = _check(y_true, y_pred, n_classes)
    valid = y_pred != INVALID
    if not valid.any():  # every answer invalid (a zero-shot VLM can do that): nothing to count
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(y_true[valid], y_pred[valid], labels=class_indices(n_classes))


def answer_distribution(y_true: np.ndarray, y_pred: np.ndarray, label_set: LabelSet) -> pd.DataFrame:
    """How often each answer was given (the K classes and ``invalid``) next to the true counts."""
    k = len(label_set)
    y_true, y_pred = _check(y_true, y_pred, k)
    n = len(y_pred)
    given = np.bincount(y_pred + 1, minlength=k + 1)  # index 0 = invalid
    truth = np.bincount(y_true, minlength=k)
    counts = np.concatenate([given[1:], given[:1]])
    return pd.DataFrame({
        "answer": list(label_set.codes) + ["invalid"],
        "count": counts.astype(np.int64),
        "fraction": counts / n,
        "true_count": np.concatenate([truth, [0]]).astype(np.int64),
    })


def invalid_rate(y_pred: np.ndarray) -> float:
    """Fraction of answers that named no single class."""
    y_pred = np.asarray(y_pred)
    return float(np.mean(y_pred == INVALID)) if len(y_pred) else float("nan")


# -- probability-based metrics ---------------------------------------------------------------
#: How far a probability may lie above 1 (rounding), and a row's sum from 1, before it is refused.
#: A float64 or float32 softmax is well inside both; a row that is not a distribution (scores, a
#: bf16 softmax, a missing renormalisation) is not: it is refused, never clipped into [0, 1].
PROBABILITY_TOLERANCE = 1e-9
SUM_TOLERANCE = 1e-4


def check_probabilities(probabilities: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """(n, K) finite probabilities in [0, 1] whose rows sum to 1 (within :data:`SUM_TOLERANCE`);
    a one-line error names the first bad row. Values within :data:`PROBABILITY_TOLERANCE` above 1
    (float rounding) come back as 1."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (n, n_classes):
        raise ValueError(f"probabilities have shape {p.shape}, expected ({n}, {n_classes})")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p > 1 + PROBABILITY_TOLERANCE).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"probabilities row {row} is not in [0, 1] or not finite: {p[row].tolist()} "
                         f"({int(bad.sum())} bad rows); fix the backend's predict()")
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(f"probabilities row {row} sums to {sums[row]:.6g}, not 1 ({int(off.sum())} such rows); "
                         "fix the backend's predict() to return a softmax computed in float32 or float64 "
                         "(derma_core.evaluation.probabilities.softmax)")
    return np.clip(p, 0.0, 1.0)


def sensitivity_at_specificity(y_binary: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """Highest sensitivity (TPR) among thresholds whose specificity (1 - FPR) is >= ``specificity``.

    ``drop_intermediate=False`` because a dropped collinear ROC point can be the best one below
    the FPR limit. NaN when the split has no positives or no negatives.
    """
    y_binary = np.asarray(y_binary).astype(bool)
    if y_binary.all() or not y_binary.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_binary, scores, drop_intermediate=False)
    ok = fpr <= (1.0 - specificity) + 1e-12
    return float(tpr[ok].max())


def multiclass_brier(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Multiclass Brier score (Brier 1950): mean over images of sum_c (p_c - y_c)^2, 0 best, 2 worst.
    K is read off the probabilities' shape."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(brier_score_loss(np.asarray(y_true, dtype=np.int64), p, labels=class_indices(p.shape[1]),
                                  scale_by_half=False))


def focus_metric_names(label_set: LabelSet) -> dict[float, str]:
    """specificity -> the name of the focus class's sensitivity metric (``mel_sensitivity_at_spec80``);
    empty when the label set has no focus class."""
    if label_set.focus is None:
        return {}
    return {spec: f"{label_set.focus}_sensitivity_at_spec{round(spec * 100)}" for spec in SPECIFICITIES}


def probability_metrics(y_true: np.ndarray, probabilities: np.ndarray,
                        label_set: LabelSet) -> tuple[dict[str, float], pd.DataFrame]:
    """AUROC and average precision (per class, one-vs-rest, and their macro means), the Brier
    score, the focus class's sensitivity at 80% / 90% specificity (``<focus>_sensitivity_at_spec80``;
    none without a focus class) and the grouped AUROC / sensitivity at specificity.

    A class without positives (or without negatives) in ``y_true`` has no AUROC / AP; it is
    left out of the macro means. Returns the metrics and a per-class table.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    p = check_probabilities(probabilities, len(y_true), len(label_set))
    metrics: dict[str, float] = {}
    rows = []
    aurocs, aps = [], []
    for c, label in enumerate(label_set.codes):
        positive = y_true == c
        n_pos = int(positive.sum())
        if 0 < n_pos < len(y_true):
            auroc = float(roc_auc_score(positive, p[:, c]))
            ap = float(average_precision_score(positive, p[:, c]))
            metrics[f"auroc_{label}"] = auroc
            metrics[f"average_precision_{label}"] = ap
            aurocs.append(auroc)
            aps.append(ap)
        else:
            auroc = ap = float("nan")
        rows.append({"label": label, "auroc": auroc, "average_precision": ap, "positives": n_pos})
    metrics["macro_auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
    metrics["macro_average_precision"] = float(np.mean(aps)) if aps else float("nan")
    metrics["brier"] = multiclass_brier(y_true, p)
    if label_set.focus is not None:
        focus = label_set.index(label_set.focus)
        for spec, name in focus_metric_names(label_set).items():
            metrics[name] = sensitivity_at_specificity(y_true == focus, p[:, focus], spec)
    metrics.update(grouped_probability_metrics(y_true, p, group_targets(label_set)))
    return metrics, pd.DataFrame(rows)


__all__ = ["INVALID", "SPECIFICITIES", "GROUPED_LABEL_METRICS", "GroupTarget", "group_targets", "class_indices",
           "classification_metrics", "grouped_label_metrics", "grouped_probability_metrics", "per_class_report",
           "per_class_metrics", "confusion_counts", "valid_confusion_matrix", "answer_distribution", "invalid_rate",
           "check_probabilities", "sensitivity_at_specificity", "multiclass_brier", "focus_metric_names",
           "probability_metrics"]
