"""The built-in evaluators: ``evaluator(split, predictions, config) -> EvalResult``.

Metric names carry no split prefix (the runner adds ``test_`` / ``val_``).

* ``classification`` — always: accuracy, balanced accuracy, macro-/weighted-F1, per-class
  precision/recall/F1/support, lesion-level bootstrap intervals, confusion matrices.
* ``probabilistic`` — when ``predictions.probabilities`` is set: AUROC, average precision,
  Brier score, ECE, melanoma sensitivity at fixed specificity, ROC and reliability figures.
* ``validity`` — when answers can be invalid (``predictions.raw_text`` is set, i.e. a
  free-text backend, or any label is None): invalid-answer rate and answer distribution.
"""

from __future__ import annotations

import numpy as np

from ..config import get_dotted
from ..interfaces import EvalResult, Predictions, Split
from . import calibration, figures, metrics
from .bootstrap import bootstrap_ci


def _aligned(split: Split, predictions: Predictions) -> Predictions:
    if list(predictions.ids) == split.ids:
        return predictions
    return predictions.aligned_to(split)


def bootstrap_settings(config: dict) -> tuple[int, float, int]:
    """(resamples, confidence, seed) from ``evaluation.bootstrap``, ``evaluation.confidence``, ``seed``."""
    n = int(get_dotted(config, "evaluation.bootstrap", 1000) or 0)
    confidence = float(get_dotted(config, "evaluation.confidence", 0.95))
    if not 0 < confidence < 1:
        raise ValueError(f"evaluation.confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n < 0:
        raise ValueError(f"evaluation.bootstrap must be >= 0 (0 turns intervals off), got {n}")
    seed = int(get_dotted(config, "seed", 42) or 0)
    return n, confidence, seed


def can_be_invalid(predictions: Predictions) -> bool:
    """True for free-text backends (raw text present) and whenever some answer is invalid."""
    return predictions.raw_text is not None or any(label is None for label in predictions.labels)


def classification_evaluator(split: Split, predictions: Predictions, config: dict) -> EvalResult:
    predictions = _aligned(split, predictions)
    y_true, y_pred = split.y, predictions.y_pred
    result = EvalResult()
    result.metrics.update(metrics.classification_metrics(y_true, y_pred))
    report = metrics.per_class_report(y_true, y_pred)
    result.metrics.update(metrics.per_class_metrics(report))
    n_boot, confidence, seed = bootstrap_settings(config)
    for name, (low, high) in bootstrap_ci(y_true, y_pred, split.lesion_ids, n_boot, confidence, seed).items():
        result.metrics[f"{name}_ci_low"] = low
        result.metrics[f"{name}_ci_high"] = high
    result.tables["per_class"] = report
    result.tables["confusion_matrix"] = metrics.confusion_counts(y_true, y_pred, include_invalid=can_be_invalid(predictions))
    cm = metrics.valid_confusion_matrix(y_true, y_pred)
    result.figures["confusion_matrix"] = figures.confusion_matrix_figure(cm, normalize=False, n_total=len(y_true))
    result.figures["confusion_matrix_normalized"] = figures.confusion_matrix_figure(cm, normalize=True,
                                                                                    n_total=len(y_true))
    return result


def probabilistic_evaluator(split: Split, predictions: Predictions, config: dict) -> EvalResult:
    if predictions.probabilities is None:
        return EvalResult()
    predictions = _aligned(split, predictions)
    y_true = split.y
    probs = metrics.check_probabilities(predictions.probabilities, len(y_true))
    result = EvalResult()
    values, per_class = metrics.probability_metrics(y_true, probs)
    result.metrics.update(values)
    table = calibration.reliability_table(y_true, probs)
    ece = calibration.expected_calibration_error(table)
    result.metrics["ece"] = ece
    result.tables["probability_per_class"] = per_class
    result.tables["reliability"] = table
    result.figures["reliability_diagram"] = figures.reliability_figure(table, ece)
    mel_points = {spec: values[f"mel_sensitivity_at_spec{round(spec * 100)}"] for spec in metrics.MEL_SPECIFICITIES}
    result.figures["roc_curves"] = figures.roc_figure(y_true, probs, mel_points)
    return result


def validity_evaluator(split: Split, predictions: Predictions, config: dict) -> EvalResult:
    if not can_be_invalid(predictions):
        return EvalResult()
    predictions = _aligned(split, predictions)
    y_pred = predictions.y_pred
    result = EvalResult()
    result.metrics["invalid_rate"] = metrics.invalid_rate(y_pred)
    result.metrics["invalid_count"] = float(np.sum(y_pred == metrics.INVALID))
    result.tables["answer_distribution"] = metrics.answer_distribution(split.y, y_pred)
    return result


#: name -> evaluator, in the order they run.
EVALUATORS = {
    "classification": classification_evaluator,
    "probabilistic": probabilistic_evaluator,
    "validity": validity_evaluator,
}
