"""Class-conditional (Mondrian) conformal sets and per-class coverage with intervals and flags
(the ``conformal`` evaluator, derma_core/evaluation/conformal.py).

Split-conformal coverage is an average over images: with a common easy class and a rare hard
one, marginal LAC reaches 90% overall by covering the common class more and the rare one far
less. The classwise methods give each class its own threshold and cover each near 90%.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from derma_core.config import resolve_config
from derma_core.evaluation import conformal
from derma_core.evaluation.evaluators import EVALUATORS, calibration_warnings
from derma_core.interfaces import EvalInput, EvalReference, Predictions, Split
from derma_core.labels import LabelSet
from derma_core.testing import tiny_descriptor

#: a rare, hard class first, then a middling one and a common, easy one
THREE = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"))
SHARES = np.array([0.05, 0.15, 0.80])
SHARPNESS = np.array([0.3, 1.5, 3.0])


def _imbalanced(rng, n, name, lesion_size=1):
    y = rng.choice(3, size=n, p=SHARES)
    z = np.eye(3)[y] * SHARPNESS[y][:, None] + rng.normal(0, 1, (n, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    ids = [f"{name}{i:06d}" for i in range(n)]
    frame = pd.DataFrame({"id": ids, "label": [THREE.codes[i] for i in y],
                          "group_id": [f"L{name}{i // lesion_size:06d}" for i in range(n)], "image_path": "x.jpg"})
    return (Split(name, frame, ".", label_set=THREE),
            Predictions(ids, [THREE.codes[i] for i in p.argmax(axis=1)], p, label_set=THREE))


def _conformal(split, preds, reference, *overrides):
    config = resolve_config(None, overrides=list(overrides))
    inputs = EvalInput(split, preds, config, dataset=tiny_descriptor(THREE), reference=reference)
    return EVALUATORS["conformal"].evaluator(inputs)


def _sd(n_test, n_cal, alpha=0.1):
    return math.sqrt(alpha * (1 - alpha) * (1 / n_test + 1 / n_cal))


def test_marginal_lac_under_covers_the_rare_class_and_classwise_lac_covers_it():
    rng = np.random.default_rng(0)
    cal, cal_preds = _imbalanced(rng, 10000, "cal")
    test, test_preds = _imbalanced(rng, 20000, "test")
    result = _conformal(test, test_preds, EvalReference(cal, cal_preds))
    m = result.metrics
    per_class = result.tables["conformal_per_class"].set_index(["method", "label"])
    n_rare_cal, n_rare_test = int((cal.y == 0).sum()), int((test.y == 0).sum())
    # marginal LAC: 90% overall, far less on the rare class, which is flagged
    assert abs(m["conformal_lac_coverage"] - 0.9) < 4 * _sd(20000, 10000) + 1e-4
    assert m["conformal_lac_coverage_ack"] < 0.9 - 0.15
    assert per_class.loc[("lac", "ack"), "below_target"] and m["conformal_lac_classes_below_target"] >= 1
    assert m["conformal_lac_coverage_ack_ci_high"] < 0.9
    # classwise LAC: every class near 90%, within its own sampling error, none flagged
    for c, code in enumerate(THREE.codes):
        n_cal, n_test = int((cal.y == c).sum()), int((test.y == c).sum())
        assert abs(m[f"conformal_lac_classwise_coverage_{code}"] - 0.9) < 4 * _sd(n_test, n_cal) + 1 / (n_cal + 1), code
        row = per_class.loc[("lac_classwise", code)]
        assert row["calibration_images"] == n_cal and np.isfinite(row["qhat"]) and row["note"] == ""
        assert row["expected_low"] < 0.9 < row["expected_high"]
    assert m["conformal_lac_classwise_coverage_ack"] > m["conformal_lac_coverage_ack"] + 0.15
    assert m["conformal_lac_classwise_classes_below_target"] == 0
    assert m["conformal_lac_classwise_classes_uncalibrated"] == 0
    # the rare class's hard images get larger sets: the price of covering it
    assert per_class.loc[("lac_classwise", "ack"), "mean_set_size"] > per_class.loc[("lac", "ack"), "mean_set_size"]
    assert n_rare_cal > 300 and n_rare_test > 600
    # APS: the same story
    assert m["conformal_aps_classwise_coverage_ack"] > m["conformal_aps_coverage_ack"]
    assert abs(m["conformal_aps_classwise_coverage_ack"] - 0.9) < 4 * _sd(n_rare_test, n_rare_cal) + 1 / n_rare_cal


def test_the_summary_carries_intervals_and_the_range_a_correct_calibration_leaves():
    rng = np.random.default_rng(1)
    cal, cal_preds = _imbalanced(rng, 800, "cal")
    test, test_preds = _imbalanced(rng, 1500, "test", lesion_size=3)
    result = _conformal(test, test_preds, EvalReference(cal, cal_preds))
    summary = result.tables["conformal"].set_index("method")
    assert list(summary.index) == list(conformal.METHODS)
    lac = summary.loc["lac"]
    assert lac["coverage_ci_low"] < lac["coverage"] < lac["coverage_ci_high"]
    assert lac["expected_low"] < 0.9 < lac["expected_high"] and lac["calibration_images"] == 800
    assert math.isnan(summary.loc["lac_classwise", "qhat"]) and np.isfinite(lac["qhat"])
    # group-level interval: lesions of three images count as 500 trials, not 1500
    g_low, g_high = conformal.coverage_interval(np.r_[np.ones(1350), np.zeros(150)], np.arange(1500) // 3)
    i_low, i_high = conformal.coverage_interval(np.r_[np.ones(1350), np.zeros(150)], np.arange(1500))
    assert g_high - g_low > 1.5 * (i_high - i_low)


def test_coverage_interval_is_clopper_pearson_and_does_not_collapse():
    from scipy.stats import beta

    covered = np.r_[np.ones(18), np.zeros(2)]
    low, high = conformal.coverage_interval(covered, np.arange(20), 0.95)
    assert low == pytest.approx(beta.ppf(0.025, 18, 3)) and high == pytest.approx(beta.ppf(0.975, 19, 2))
    low, high = conformal.coverage_interval(np.ones(4), np.arange(4), 0.95)  # 4 of 4: not [1, 1]
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 4))
    assert conformal.coverage_interval(np.zeros(3), np.arange(3))[0] == 0.0
    assert all(math.isnan(v) for v in conformal.coverage_interval(np.zeros(0), np.zeros(0)))


def test_expected_range_matches_simulated_calibrations():
    """The beta-binomial range: the share of simulated (calibration, test) draws whose test
    coverage falls inside it is about the confidence."""
    rng = np.random.default_rng(2)
    n_cal, n_test, alpha = 50, 200, 0.1
    low, high = conformal.expected_coverage_range(n_cal, n_test, alpha, 0.9)
    inside = []
    for _ in range(2000):
        s = rng.random(n_cal + n_test)  # continuous exchangeable scores
        q = conformal.conformal_quantile(s[:n_cal], alpha)
        cov = np.mean(s[n_cal:] <= q)
        inside.append(low <= cov <= high)
    assert 0.87 < np.mean(inside) < 0.95
    assert all(math.isnan(v) for v in conformal.expected_coverage_range(5, 100, 0.1))


def test_a_class_with_too_few_calibration_images_says_so():
    rng = np.random.default_rng(3)
    cal, cal_preds = _imbalanced(rng, 100, "cal")  # about 5 rare images: fewer than 9
    test, test_preds = _imbalanced(rng, 400, "test")
    n_rare = int((cal.y == 0).sum())
    assert n_rare < 9
    result = _conformal(test, test_preds, EvalReference(cal, cal_preds))
    row = result.tables["conformal_per_class"].set_index(["method", "label"]).loc[("lac_classwise", "ack")]
    assert row["note"] == (f"too few calibration images of ack ({n_rare} < 9 for alpha = 0.1): no threshold, "
                           "ack is in every set")
    assert math.isnan(row["qhat"]) and row["coverage"] == 1.0
    assert result.metrics["conformal_lac_classwise_classes_uncalibrated"] == 1
    summary = result.tables["conformal"].set_index("method")
    assert summary.loc["lac_classwise", "note"].startswith("1 of 3 classes have fewer than 9 calibration images")
    assert summary.loc["lac", "note"] == ""
    config = resolve_config(None)
    assert calibration_warnings(config, cal) == [
        f"lac_classwise, aps_classwise: 1 of 3 classes have fewer than 9 calibration images (alpha = 0.1) and are in "
        "every set: ack"]
    only_marginal = resolve_config(None, overrides=["evaluation.conformal.methods=[lac, aps]"])
    assert calibration_warnings(only_marginal, cal) == []
    off = resolve_config(None, overrides=["evaluation.conformal.alpha=false"])
    assert calibration_warnings(off, cal) == []


def test_an_unknown_method_in_the_config_is_refused_in_one_line():
    rng = np.random.default_rng(4)
    cal, cal_preds = _imbalanced(rng, 50, "cal")
    with pytest.raises(ValueError, match=r"^unknown conformal method 'raps'; use one of lac, aps, lac_classwise, "
                                         r"aps_classwise$"):
        _conformal(cal, cal_preds, EvalReference(cal, cal_preds), "evaluation.conformal.methods=[lac, raps]")
