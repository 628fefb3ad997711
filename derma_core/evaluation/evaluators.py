"""The built-in evaluators: ``evaluator(inputs: EvalInput) -> EvalResult``.

Every evaluator receives one :class:`~derma_core.interfaces.EvalInput`: the evaluated split,
the predictions aligned to it, the run config, the dataset's descriptor (label set, grouping,
subgroup columns) and, for evaluators registered with ``needs_reference=True``, the
calibration split with its predictions (``inputs.reference``, or None). Nothing here assumes
a particular label set: class names, the focus class and the groupings come from
``inputs.label_set``. Metric names carry no split prefix (the runner adds ``test_`` / ``val_``).

* ``classification`` — always: accuracy, balanced accuracy, macro-/weighted-F1, per-class
  precision/recall/F1/support, each grouping's sensitivity / specificity / balanced accuracy
  (``malignancy_sensitivity``), group-level (lesion / patient) bootstrap intervals, confusion
  matrices and per-class bars.
* ``probabilistic`` — when ``predictions.probabilities`` is set: AUROC, average precision,
  Brier score, ECE, the focus class's sensitivity at fixed specificity
  (``mel_sensitivity_at_spec80`` on HAM10000), each grouping's AUROC and sensitivity at fixed
  specificity, ROC and reliability figures.
* ``validity`` — when answers can be invalid (``predictions.raw_text`` is set, i.e. a
  free-text backend, or any label is None): invalid-answer rate and answer distribution.
* ``subgroups`` — when the split frame has values for the dataset's subgroup columns (or
  ``evaluation.subgroups.columns``): metrics per group with group-level intervals, worst group
  and largest gap (:mod:`.subgroups`).
* ``selective`` — with probabilities: risk-coverage curve, AURC, accuracy when a share is referred.
* ``calibration`` (needs the reference) — with probabilities: classwise ECE and NLL; with the
  calibration split's predictions also temperature (or vector) scaling fitted on them, applied
  to the evaluated split, and ECE / classwise ECE / Brier / NLL after it.
* ``conformal`` (needs the reference) — with probabilities and the calibration split's
  predictions: split-conformal LAC and APS sets, marginal and class-conditional
  (``lac_classwise``, ``aps_classwise``), at ``evaluation.conformal.alpha``; coverage overall,
  per class (with intervals, flagged below target) and per subgroup, set sizes.

The reference is the calibration split: images of val that neither training nor model
selection saw (:mod:`derma_core.data.calibration_split`). :data:`EVALUATORS` maps each name to
``(evaluator, needs_reference)``; the runner only predicts the calibration split when
:func:`wants_reference` says a selected evaluator will use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..interfaces import EvalInput, EvalReference, EvalResult, Predictions, Split
from ..labels import INVALID
from . import calibration, conformal, figures, metrics, selective, subgroups
from .bootstrap import bootstrap_ci


@dataclass
class EvalResultWithParams(EvalResult):
    """An EvalResult that also carries run params (e.g. the fitted temperature)."""

    params: dict[str, Any] = field(default_factory=dict)


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


def _probabilities(inputs: EvalInput) -> np.ndarray | None:
    p = inputs.predictions.probabilities
    return None if p is None else metrics.check_probabilities(p, len(inputs.split), len(inputs.label_set))


def classification_evaluator(inputs: EvalInput) -> EvalResult:
    label_set = inputs.label_set
    k = len(label_set)
    y_true, y_pred = inputs.y_true, inputs.y_pred
    targets = metrics.group_targets(label_set)
    result = EvalResult()
    result.metrics.update(metrics.classification_metrics(y_true, y_pred, k))
    result.metrics.update(metrics.grouped_label_metrics(y_true, y_pred, k, targets))
    report = metrics.per_class_report(y_true, y_pred, label_set)
    result.metrics.update(metrics.per_class_metrics(report))
    n_boot, confidence, seed = bootstrap_settings(inputs.config)
    for name, (low, high) in bootstrap_ci(y_true, y_pred, inputs.groups, k, n_boot, confidence, seed,
                                          targets).items():
        result.metrics[f"{name}_ci_low"] = low
        result.metrics[f"{name}_ci_high"] = high
    result.tables["per_class"] = report
    result.tables["confusion_matrix"] = metrics.confusion_counts(
        y_true, y_pred, label_set, include_invalid=can_be_invalid(inputs.predictions))
    cm = metrics.valid_confusion_matrix(y_true, y_pred, k)
    for name, normalize in (("confusion_matrix", False), ("confusion_matrix_normalized", True)):
        result.figures[name] = figures.confusion_matrix_figure(cm, label_set.codes, normalize=normalize,
                                                               n_total=len(y_true),
                                                               free_text=can_be_invalid(inputs.predictions))
    result.figures["per_class"] = figures.per_class_figure(report)
    return result


def probabilistic_evaluator(inputs: EvalInput) -> EvalResult:
    probs = _probabilities(inputs)
    if probs is None:
        return EvalResult()
    label_set, y_true = inputs.label_set, inputs.y_true
    result = EvalResult()
    values, per_class = metrics.probability_metrics(y_true, probs, label_set)
    result.metrics.update(values)
    table = calibration.reliability_table(y_true, probs)
    ece = calibration.expected_calibration_error(table)
    result.metrics["ece"] = ece
    result.tables["probability_per_class"] = per_class
    result.tables["reliability"] = table
    result.figures["reliability_diagram"] = figures.reliability_figure(table, ece)
    focus_points = {spec: values[name] for spec, name in metrics.focus_metric_names(label_set).items()}
    result.figures["roc_curves"] = figures.roc_figure(y_true, probs, label_set, focus_points)
    return result


def validity_evaluator(inputs: EvalInput) -> EvalResult:
    if not can_be_invalid(inputs.predictions):
        return EvalResult()
    y_pred = inputs.y_pred
    result = EvalResult()
    result.metrics["invalid_rate"] = metrics.invalid_rate(y_pred)
    result.metrics["invalid_count"] = float(np.sum(y_pred == INVALID))
    result.tables["answer_distribution"] = metrics.answer_distribution(inputs.y_true, y_pred, inputs.label_set)
    return result


def subgroup_evaluator(inputs: EvalInput) -> EvalResult:
    groups = subgroups.split_groups(inputs.metadata, inputs.config, inputs.dataset)
    if not groups:
        return EvalResult()
    n_boot, confidence, seed = bootstrap_settings(inputs.config)
    _, min_count = subgroups.subgroup_settings(inputs.config, inputs.dataset)
    table, gaps = subgroups.subgroup_analysis(inputs.y_true, inputs.y_pred, inputs.groups, groups,
                                              len(inputs.label_set), n_boot, confidence, seed, min_count,
                                              metrics.group_targets(inputs.label_set), inputs.label_set.codes)
    result = EvalResult(metrics=subgroups.subgroup_metrics(table, gaps))
    result.tables["subgroups"] = table
    result.tables["subgroup_gaps"] = gaps
    result.figures["subgroups"] = figures.subgroup_figure(table)
    return result


def selective_evaluator(inputs: EvalInput) -> EvalResult:
    probs = _probabilities(inputs)
    if probs is None:
        return EvalResult()
    refer = float(get_dotted(inputs.config, "evaluation.selective.refer", 0.1))
    conf = selective.confidence_of_answer(inputs.y_pred, probs)
    values, curve = selective.selective_metrics(inputs.y_true, inputs.y_pred, conf, refer)
    result = EvalResult(metrics=values)
    result.tables["risk_coverage"] = curve
    result.figures["risk_coverage"] = figures.risk_coverage_figure(curve, values["selective_aurc"])
    return result


def wants_reference(config: dict, eval_split: str) -> bool:
    """Whether the runner should predict the calibration split for calibration / conformal
    sets: they are on, selected, and the evaluated split is not val (tuning evaluates on val's
    selection part, and a study never sees the calibration images)."""
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


def calibration_warnings(config: dict, calibration_split: Split) -> list[str]:
    """One line each for what makes the run's conformal sets uninformative: a calibration split
    too small for ``evaluation.conformal.alpha`` and, for the classwise methods, the classes with
    too few calibration images (those are in every set)."""
    alpha = conformal_alpha(config)
    selected = get_dotted(config, "evaluation.evaluators")
    if alpha is None or (selected is not None and "conformal" not in selected):
        return []
    small = conformal.too_small_message(len(calibration_split), alpha)
    if small:
        return [small]
    classwise = [m for m in conformal_methods(config) if conformal.score_of(m)[1]]
    need = conformal.min_calibration_images(alpha)
    counts = np.bincount(calibration_split.y, minlength=len(calibration_split.label_set))
    few = [code for code, n in zip(calibration_split.label_set.codes, counts) if n < need]
    if classwise and few:
        return [f"{', '.join(classwise)}: {len(few)} of {len(counts)} classes have fewer than {need} calibration images "
                f"(alpha = {alpha:g}) and are in every set: {', '.join(few[:10])}{', ...' if len(few) > 10 else ''}"]
    return []


def _reference_probabilities(inputs: EvalInput) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, probabilities) of the calibration split, or None when there is none."""
    reference: EvalReference | None = inputs.reference
    if reference is None or reference.predictions.probabilities is None:
        return None
    inputs.label_set.require_same(reference.split.label_set, f"the calibration split {reference.split.name!r}",
                                  "calibrate on a split of the evaluated dataset")
    inputs.label_set.require_same(reference.predictions.label_set, "the calibration split's predictions",
                                  "predict the calibration split with the same classifier")
    probs = metrics.check_probabilities(reference.predictions.probabilities, len(reference.split),
                                        len(inputs.label_set))
    return reference.split.y, probs


def calibration_evaluator(inputs: EvalInput) -> EvalResult:
    probs = _probabilities(inputs)
    if probs is None:
        return EvalResult()
    config, y_true = inputs.config, inputs.y_true
    result = EvalResultWithParams()
    result.metrics["classwise_ece"] = calibration.classwise_ece(y_true, probs)
    result.metrics["nll"] = calibration.nll(y_true, probs)
    ref = _reference_probabilities(inputs)
    if ref is None or not bool(get_dotted(config, "evaluation.calibrate", True)):
        return result
    method = str(get_dotted(config, "evaluation.calibration_method", "temperature"))
    scaler = calibration.fit_scaler(ref[0], ref[1], method)  # calibration split only: never the evaluated split
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
        f"Reliability after {method} scaling fitted on the calibration split (ECE = {ece:.3f})", fontsize=10)
    return result


def conformal_methods(config: dict) -> list[str]:
    """``evaluation.conformal.methods``, each checked (one line naming the unknown one)."""
    methods = [str(m) for m in get_dotted(config, "evaluation.conformal.methods", list(conformal.METHODS))]
    for method in methods:
        conformal.score_of(method)
    return methods


def conformal_evaluator(inputs: EvalInput) -> EvalResult:
    config = inputs.config
    alpha = conformal_alpha(config)
    probs = _probabilities(inputs)
    ref = _reference_probabilities(inputs)
    if alpha is None or probs is None or ref is None:
        return EvalResult()
    label_set, y_true, groups = inputs.label_set, inputs.y_true, inputs.groups
    target = 1.0 - alpha
    _, confidence, seed = bootstrap_settings(config)
    cal_y, cal_probs = ref
    n_cal = len(cal_y)
    cal_counts = np.bincount(cal_y, minlength=len(label_set))
    need = conformal.min_calibration_images(alpha)
    subgroup_columns = subgroups.split_groups(inputs.metadata, config, inputs.dataset)
    _, min_count = subgroups.subgroup_settings(config, inputs.dataset)
    result = EvalResultWithParams(params={"conformal_alpha": alpha, "conformal_calibration_images": n_cal})
    too_small = conformal.too_small_message(n_cal, alpha)
    summary, per_class, per_group = [], [], []
    for method in conformal_methods(config):
        _, classwise = conformal.score_of(method)
        qhat, sets = conformal.calibrate_and_predict(method, cal_probs, cal_y, probs, alpha, seed)
        covered = sets[np.arange(len(y_true)), y_true]
        size = sets.sum(axis=1)
        low, high = conformal.coverage_interval(covered, groups, confidence)
        expected = ((np.nan, np.nan) if classwise
                    else conformal.expected_coverage_range(n_cal, len(y_true), alpha, confidence))
        values = {"coverage": float(covered.mean()), "coverage_ci_low": low, "coverage_ci_high": high,
                  "mean_set_size": float(size.mean()), "singleton_rate": float(np.mean(size == 1)),
                  "empty_rate": float(np.mean(size == 0)), "qhat": np.nan if classwise else float(qhat)}
        rows, below, uncalibrated = _conformal_class_rows(
            inputs, method, classwise, qhat, covered, size, cal_counts=cal_counts, need=need, alpha=alpha,
            target=target, confidence=confidence, metrics=result.metrics)
        per_class += rows
        values["classes_below_target"] = float(below)
        if classwise:
            values["classes_uncalibrated"] = float(len(uncalibrated))
        for key, value in values.items():
            if np.isfinite(value):  # q is infinite when the calibration split is too small for 1 - alpha
                result.metrics[f"conformal_{method}_{key}"] = value
        note = too_small or ""
        if not note and uncalibrated:
            note = (f"{len(uncalibrated)} of {len(label_set)} classes have fewer than {need} calibration images "
                    f"and are in every set: {', '.join(uncalibrated)}")
        summary.append({"method": method, "alpha": alpha, "target_coverage": target, **values,
                        "expected_low": expected[0], "expected_high": expected[1],
                        "calibration_images": n_cal, "note": note})
        if subgroup_columns:
            table = subgroups.coverage_by_group(covered, size, subgroup_columns, min_count)
            table.insert(0, "method", method)
            per_group.append(table)
            for row in table.itertuples(index=False):
                result.metrics[f"conformal_{method}_coverage_{subgroups.slug(row.column)}_{subgroups.slug(row.group)}"] = row.coverage
    result.tables["conformal"] = pd.DataFrame(summary)
    result.tables["conformal_per_class"] = pd.DataFrame(per_class)
    if per_group:
        result.tables["conformal_subgroups"] = pd.concat(per_group, ignore_index=True)
    return result


def _conformal_class_rows(inputs: EvalInput, method: str, classwise: bool, qhat, covered: np.ndarray,
                          size: np.ndarray, *, cal_counts: np.ndarray, need: int, alpha: float, target: float,
                          confidence: float, metrics: dict) -> tuple[list[dict], int, list[str]]:
    """The per-class rows of one conformal method (coverage per class into ``metrics``), how
    many classes fall below the target, and the classes too rare in calibration for a threshold."""
    label_set, y_true, groups = inputs.label_set, inputs.y_true, inputs.groups
    rows: list[dict] = []
    below, uncalibrated = 0, []
    for c, label in enumerate(label_set.codes):
        m = y_true == c
        q_c = float(qhat[c]) if classwise else float(qhat)  # type: ignore[index]
        row = {"method": method, "label": label, "images": int(m.sum()),
               "groups": int(len(np.unique(groups[m]))), "calibration_images": int(cal_counts[c]),
               "coverage": np.nan, "coverage_ci_low": np.nan, "coverage_ci_high": np.nan,
               "below_target": False, "mean_set_size": np.nan, "qhat": q_c if np.isfinite(q_c) else np.nan,
               "expected_low": np.nan, "expected_high": np.nan, "note": ""}
        if classwise and cal_counts[c] < need:
            uncalibrated.append(label)
            row["note"] = (f"too few calibration images of {label} ({cal_counts[c]} < {need} for alpha = "
                           f"{alpha:g}): no threshold, {label} is in every set")
        if m.any():
            c_low, c_high = conformal.coverage_interval(covered[m], groups[m], confidence)
            row.update({"coverage": float(covered[m].mean()), "coverage_ci_low": c_low, "coverage_ci_high": c_high,
                        "below_target": bool(c_high < target), "mean_set_size": float(size[m].mean())})
            if classwise:
                row["expected_low"], row["expected_high"] = conformal.expected_coverage_range(
                    int(cal_counts[c]), int(m.sum()), alpha, confidence)
            below += row["below_target"]
            metrics[f"conformal_{method}_coverage_{label}"] = row["coverage"]
            metrics[f"conformal_{method}_coverage_{label}_ci_low"] = c_low
            metrics[f"conformal_{method}_coverage_{label}_ci_high"] = c_high
        elif not row["note"]:
            row["note"] = f"no {inputs.split.name} images of {label}"
        rows.append(row)
    return rows, below, uncalibrated


class Builtin(NamedTuple):
    """A built-in evaluator and whether the runner hands it the calibration split (``reference``)."""

    evaluator: Callable[[EvalInput], EvalResult]
    needs_reference: bool = False


#: name -> (evaluator, needs_reference), in the order they run; registered by
#: :func:`derma_core.evaluation.register_evaluators`.
EVALUATORS: dict[str, Builtin] = {
    "classification": Builtin(classification_evaluator),
    "probabilistic": Builtin(probabilistic_evaluator),
    "validity": Builtin(validity_evaluator),
    "subgroups": Builtin(subgroup_evaluator),
    "selective": Builtin(selective_evaluator),
    "calibration": Builtin(calibration_evaluator, needs_reference=True),
    "conformal": Builtin(conformal_evaluator, needs_reference=True),
}
