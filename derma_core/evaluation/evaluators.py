"""The built-in evaluators: ``evaluator(split, predictions, config) -> EvalResult``.

Metric names carry no split prefix (the runner adds ``test_`` / ``val_``).

* ``classification`` — always: accuracy, balanced accuracy, macro-/weighted-F1, per-class
  precision/recall/F1/support, lesion-level bootstrap intervals, confusion matrices.
* ``probabilistic`` — when ``predictions.probabilities`` is set: AUROC, average precision,
  Brier score, ECE, melanoma sensitivity at fixed specificity, ROC and reliability figures.
* ``validity`` — when answers can be invalid (``predictions.raw_text`` is set, i.e. a
  free-text backend, or any label is None): invalid-answer rate and answer distribution.
* ``subgroups`` — when the split frame has metadata (sex, localization, dx_type, age): metrics
  per group with lesion-level intervals, worst group and largest gap (:mod:`.subgroups`).
* ``selective`` — with probabilities: risk-coverage curve, AURC, accuracy when a share is referred.
* ``calibration`` — with probabilities: classwise ECE and NLL; with val predictions (the
  runner's :class:`Reference`) also temperature (or vector) scaling fitted on val, applied to
  the evaluated split, and ECE / classwise ECE / Brier / NLL after it.
* ``conformal`` — with probabilities and val predictions: split-conformal LAC and APS sets at
  ``evaluation.conformal.alpha``, coverage overall, per class and per subgroup, set sizes.

Evaluators that set ``uses_reference = True`` are called with ``reference=`` (the calibration
split and its predictions, or None); the runner only predicts val when one of them wants it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..interfaces import EvalResult, Predictions, Split
from ..labels import LABELS
from . import calibration, conformal, figures, metrics, selective, subgroups
from .bootstrap import bootstrap_ci


@dataclass
class Reference:
    """The calibration data handed to evaluators that fit on val: the val split and the
    classifier's predictions on it (never the evaluated split)."""

    split: Split
    predictions: Predictions


@dataclass
class EvalResultWithParams(EvalResult):
    """An EvalResult that also carries run params (e.g. the fitted temperature)."""

    params: dict[str, Any] = field(default_factory=dict)


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


def subgroup_evaluator(split: Split, predictions: Predictions, config: dict) -> EvalResult:
    groups = subgroups.split_groups(split.frame, config)
    if not groups:
        return EvalResult()
    predictions = _aligned(split, predictions)
    n_boot, confidence, seed = bootstrap_settings(config)
    _, bands, min_count = subgroups.subgroup_settings(config)
    table, gaps = subgroups.subgroup_analysis(split.y, predictions.y_pred, split.lesion_ids, groups, n_boot,
                                              confidence, seed, min_count, bands)
    result = EvalResult(metrics=subgroups.subgroup_metrics(table, gaps))
    result.tables["subgroups"] = table
    result.tables["subgroup_gaps"] = gaps
    result.figures["subgroups"] = figures.subgroup_figure(table)
    return result


def selective_evaluator(split: Split, predictions: Predictions, config: dict) -> EvalResult:
    if predictions.probabilities is None:
        return EvalResult()
    predictions = _aligned(split, predictions)
    probs = metrics.check_probabilities(predictions.probabilities, len(split))
    refer = float(get_dotted(config, "evaluation.selective.refer", 0.1))
    conf = selective.confidence_of_answer(predictions.y_pred, probs)
    values, curve = selective.selective_metrics(split.y, predictions.y_pred, conf, refer)
    result = EvalResult(metrics=values)
    result.tables["risk_coverage"] = curve
    result.figures["risk_coverage"] = figures.risk_coverage_figure(curve, values["selective_aurc"])
    return result


def wants_reference(config: dict, eval_split: str) -> bool:
    """Whether the runner should predict val for calibration / conformal sets: they are on,
    selected, and the evaluated split is not val itself (tuning evaluates on val)."""
    if eval_split == "val":
        return False
    selected = get_dotted(config, "evaluation.evaluators")
    names = set(EVALUATORS) if selected is None else set(selected)
    calibrate = bool(get_dotted(config, "evaluation.calibrate", True)) and "calibration" in names
    return calibrate or (conformal_alpha(config) is not None and "conformal" in names)


def conformal_alpha(config: dict) -> float | None:
    """``evaluation.conformal.alpha``; None when it is ``false`` (or null): conformal sets off."""
    alpha = get_dotted(config, "evaluation.conformal.alpha", 0.1)
    if alpha is None or alpha is False:
        return None
    if alpha is True:
        raise ValueError("evaluation.conformal.alpha must be a number such as 0.1, or false to turn sets off")
    return float(alpha)


def _reference_probabilities(reference: Reference | None) -> tuple[np.ndarray, np.ndarray] | None:
    if reference is None or reference.predictions.probabilities is None:
        return None
    ref = _aligned(reference.split, reference.predictions)
    return reference.split.y, metrics.check_probabilities(ref.probabilities, len(reference.split))


def calibration_evaluator(split: Split, predictions: Predictions, config: dict,
                          reference: Reference | None = None) -> EvalResult:
    if predictions.probabilities is None:
        return EvalResult()
    predictions = _aligned(split, predictions)
    y_true = split.y
    probs = metrics.check_probabilities(predictions.probabilities, len(y_true))
    result = EvalResultWithParams()
    result.metrics["classwise_ece"] = calibration.classwise_ece(y_true, probs)
    result.metrics["nll"] = calibration.nll(y_true, probs)
    ref = _reference_probabilities(reference)
    if ref is None or not bool(get_dotted(config, "evaluation.calibrate", True)):
        return result
    method = str(get_dotted(config, "evaluation.calibration_method", "temperature"))
    scaler = calibration.fit_scaler(ref[0], ref[1], method)  # val only: the evaluated split never enters the fit
    scaled = scaler.apply(probs)
    table = calibration.reliability_table(y_true, scaled)
    ece = calibration.expected_calibration_error(table)
    result.metrics.update({
        "calibrated_ece": ece,
        "calibrated_classwise_ece": calibration.classwise_ece(y_true, scaled),
        "calibrated_brier": metrics.multiclass_brier(y_true, scaled),
        "calibrated_nll": calibration.nll(y_true, scaled),
    })
    result.params["calibration_method"] = method
    result.params["calibration_images"] = len(ref[0])
    if method == "temperature":
        result.params["calibration_temperature"] = round(scaler.temperature, 6)
    else:
        result.params["calibration_weights"] = [round(float(w), 6) for w in scaler.weights]
        result.params["calibration_bias"] = [round(float(b), 6) for b in scaler.bias]
    result.tables["calibrated_reliability"] = table
    result.figures["calibrated_reliability_diagram"] = figures.reliability_figure(table, ece)
    result.figures["calibrated_reliability_diagram"].axes[0].set_title(
        f"Reliability after {method} scaling fitted on val (ECE = {ece:.3f})", fontsize=10)
    return result


def conformal_evaluator(split: Split, predictions: Predictions, config: dict,
                        reference: Reference | None = None) -> EvalResult:
    alpha = conformal_alpha(config)
    ref = _reference_probabilities(reference)
    if alpha is None or predictions.probabilities is None or ref is None:
        return EvalResult()
    predictions = _aligned(split, predictions)
    y_true = split.y
    probs = metrics.check_probabilities(predictions.probabilities, len(y_true))
    methods = list(get_dotted(config, "evaluation.conformal.methods", list(conformal.METHODS)))
    seed = int(get_dotted(config, "seed", 42) or 0)
    groups = subgroups.split_groups(split.frame, config)
    _, bands, min_count = subgroups.subgroup_settings(config)
    result = EvalResultWithParams(params={"conformal_alpha": alpha, "conformal_calibration_images": len(ref[0])})
    summary, per_class, per_group = [], [], []
    for method in methods:
        qhat, sets = conformal.calibrate_and_predict(method, ref[1], ref[0], probs, alpha, seed)
        covered = sets[np.arange(len(y_true)), y_true]
        size = sets.sum(axis=1)
        values = {"coverage": float(covered.mean()), "mean_set_size": float(size.mean()),
                  "singleton_rate": float(np.mean(size == 1)), "empty_rate": float(np.mean(size == 0)),
                  "qhat": qhat}
        for key, value in values.items():
            if np.isfinite(value):  # q is infinite when val is too small for 1 - alpha
                result.metrics[f"conformal_{method}_{key}"] = value
        summary.append({"method": method, "alpha": alpha, "target_coverage": 1 - alpha, **values})
        for c, label in enumerate(LABELS):
            m = y_true == c
            row = {"method": method, "label": label, "images": int(m.sum()),
                   "coverage": float(covered[m].mean()) if m.any() else np.nan,
                   "mean_set_size": float(size[m].mean()) if m.any() else np.nan}
            per_class.append(row)
            if m.any():
                result.metrics[f"conformal_{method}_coverage_{label}"] = row["coverage"]
        if groups:
            table = subgroups.coverage_by_group(covered, size, groups, min_count, bands)
            table.insert(0, "method", method)
            per_group.append(table)
            for row in table.itertuples(index=False):
                result.metrics[f"conformal_{method}_coverage_{subgroups.slug(row.column)}_{subgroups.slug(row.group)}"] = row.coverage
    result.tables["conformal"] = pd.DataFrame(summary)
    result.tables["conformal_per_class"] = pd.DataFrame(per_class)
    if per_group:
        result.tables["conformal_subgroups"] = pd.concat(per_group, ignore_index=True)
    return result


calibration_evaluator.uses_reference = True  # type: ignore[attr-defined]
conformal_evaluator.uses_reference = True  # type: ignore[attr-defined]


#: name -> evaluator, in the order they run.
EVALUATORS = {
    "classification": classification_evaluator,
    "probabilistic": probabilistic_evaluator,
    "validity": validity_evaluator,
    "subgroups": subgroup_evaluator,
    "selective": selective_evaluator,
    "calibration": calibration_evaluator,
    "conformal": conformal_evaluator,
}
