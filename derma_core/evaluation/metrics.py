"""Point metrics on label indices and probabilities, computed with scikit-learn.

Conventions used everywhere in :mod:`derma_core.evaluation`:

* ``y_true`` holds label indices ``0..6`` in :data:`~derma_core.labels.LABELS` order.
* ``y_pred`` holds label indices, or :data:`INVALID` (``-1``) for an invalid answer (free text
  that names no single class). The sentinel is never part of the label set handed to
  scikit-learn, so an invalid answer is a miss for its true class and a false positive for no
  class: it counts as wrong everywhere, and macro-F1 stays a mean over the 7 labels, exactly as
  the original study computed it.
"""

from __future__ import annotations

import warnings
from typing import Sequence

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
    roc_auc_score,
    roc_curve,
)

from ..labels import LABEL_TO_INDEX, LABELS, NUM_CLASSES

#: The index of an invalid answer in ``y_pred``.
INVALID = -1
#: The class indices handed to scikit-learn as ``labels=`` (the sentinel is left out on purpose).
CLASS_INDICES = list(range(NUM_CLASSES))
#: The melanoma specificities at which sensitivity is reported.
MEL_SPECIFICITIES = (0.80, 0.90)


def encode_labels(values: Sequence[str | None], what: str = "label") -> np.ndarray:
    """Label strings to indices; ``None`` or ``""`` becomes :data:`INVALID`.

    Raises a one-line ``ValueError`` naming the first unknown value and its row.
    """
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            out[i] = INVALID
            continue
        index = LABEL_TO_INDEX.get(str(value))
        if index is None:
            raise ValueError(f"row {i}: unknown {what} {value!r}; expected one of {', '.join(LABELS)} "
                             "(or empty for an invalid answer)")
        out[i] = index
    return out


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and of equal length")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty split")
    if y_true.min() < 0 or y_true.max() >= NUM_CLASSES:
        raise ValueError("y_true must hold label indices 0..6 (true labels cannot be invalid)")
    if y_pred.min() < INVALID or y_pred.max() >= NUM_CLASSES:
        raise ValueError("y_pred must hold label indices 0..6 or -1 for an invalid answer")
    return y_true, y_pred


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1 and weighted_f1 (invalid answers count as wrong).

    * balanced accuracy is the mean per-class recall over the classes present in ``y_true``
      (the ISIC 2018 Task 3 score);
    * macro-F1 is the unweighted mean of the 7 per-class F1 scores; a class with neither true
      nor predicted examples has no F1 and is left out of the mean (``zero_division=nan``) —
      on a split where every class occurs this is exactly the study's 7-label macro-F1;
    * weighted-F1 weights each class's F1 by its support.
    """
    y_true, y_pred = _check(y_true, y_pred)
    with warnings.catch_warnings():
        # balanced_accuracy_score warns that the invalid sentinel "is not in y_true": intended.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, labels=CLASS_INDICES, average="macro", zero_division=np.nan)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=CLASS_INDICES, average="weighted", zero_division=0)),
    }


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """One row per label: precision, recall, F1 and support (true count) plus predicted count.

    Precision of a class that is never predicted is reported as 0 (``zero_division=0``).
    """
    y_true, y_pred = _check(y_true, y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=CLASS_INDICES, average=None, zero_division=0)
    predicted = np.bincount(y_pred[y_pred != INVALID], minlength=NUM_CLASSES)
    return pd.DataFrame({
        "label": list(LABELS),
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


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, include_invalid: bool = True) -> pd.DataFrame:
    """Confusion matrix (rows: true label, columns: predicted label) as a table.

    With ``include_invalid`` an ``invalid`` column counts the invalid answers of each true class.
    """
    y_true, y_pred = _check(y_true, y_pred)
    labels = CLASS_INDICES + ([INVALID] if include_invalid else [])
    keep = slice(None) if include_invalid else (y_pred != INVALID)
    cm = confusion_matrix(y_true[keep], y_pred[keep], labels=labels)
    # confusion_matrix is square over `labels`; the invalid row (no true label is invalid) is dropped.
    columns = list(LABELS) + (["invalid"] if include_invalid else [])
    frame = pd.DataFrame(cm[:NUM_CLASSES], columns=columns)
    frame.insert(0, "true", list(LABELS))
    return frame


def valid_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """7x7 counts over the valid answers only (what the confusion-matrix figures show)."""
    y_true, y_pred = _check(y_true, y_pred)
    valid = y_pred != INVALID
    if not valid.any():  # every answer invalid (a zero-shot VLM can do that): nothing to count
        return np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    return confusion_matrix(y_true[valid], y_pred[valid], labels=CLASS_INDICES)


def answer_distribution(y_true: np.ndarray, y_pred: np.ndarray) -> pd.DataFrame:
    """How often each answer was given (the 7 labels and ``invalid``) next to the true counts."""
    y_true, y_pred = _check(y_true, y_pred)
    n = len(y_pred)
    given = np.bincount(y_pred + 1, minlength=NUM_CLASSES + 1)  # index 0 = invalid
    truth = np.bincount(y_true, minlength=NUM_CLASSES)
    answers = list(LABELS) + ["invalid"]
    counts = np.concatenate([given[1:], given[:1]])
    return pd.DataFrame({
        "answer": answers,
        "count": counts.astype(np.int64),
        "fraction": counts / n,
        "true_count": np.concatenate([truth, [0]]).astype(np.int64),
    })


def invalid_rate(y_pred: np.ndarray) -> float:
    """Fraction of answers that named no single class."""
    y_pred = np.asarray(y_pred)
    return float(np.mean(y_pred == INVALID)) if len(y_pred) else float("nan")


# -- probability-based metrics ---------------------------------------------------------------
def check_probabilities(probabilities: np.ndarray, n: int) -> np.ndarray:
    """(n, 7) finite probabilities in [0, 1]; a one-line error names the first bad row."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (n, NUM_CLASSES):
        raise ValueError(f"probabilities have shape {p.shape}, expected ({n}, {NUM_CLASSES})")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p > 1 + 1e-9).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"probabilities row {row} is not in [0, 1] or not finite: {p[row].tolist()} "
                         f"({int(bad.sum())} bad rows); fix the backend's predict()")
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
    """Multiclass Brier score (Brier 1950): mean over images of sum_c (p_c - y_c)^2, 0 best, 2 worst."""
    return float(brier_score_loss(np.asarray(y_true, dtype=np.int64), probabilities, labels=CLASS_INDICES,
                                  scale_by_half=False))


def probability_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[dict[str, float], pd.DataFrame]:
    """AUROC and average precision (per class, one-vs-rest, and their macro means), the Brier
    score, and melanoma sensitivity at 80% / 90% specificity.

    A class without positives (or without negatives) in ``y_true`` has no AUROC / AP; it is
    left out of the macro means. Returns the metrics and a per-class table.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    p = check_probabilities(probabilities, len(y_true))
    metrics: dict[str, float] = {}
    rows = []
    aurocs, aps = [], []
    for c, label in enumerate(LABELS):
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
    mel = LABEL_TO_INDEX["mel"]
    for spec in MEL_SPECIFICITIES:
        metrics[f"mel_sensitivity_at_spec{round(spec * 100)}"] = sensitivity_at_specificity(
            y_true == mel, p[:, mel], spec)
    return metrics, pd.DataFrame(rows)
