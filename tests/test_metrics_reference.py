"""Point metrics: more values worked out by hand, the boundaries of the input checks, and
probabilities that are not a distribution refused (never clipped into [0, 1]).

Equivalent mutants (no observable change):
- invalid_rate, probability_metrics: ``float("nan")`` -> ``float("NAN")``: Python reads both as NaN.
- ``np.asarray(..., dtype=np.int64)`` / ``dtype=np.float64`` -> no dtype, in _check (y_pred),
  probability_metrics, grouped_probability_metrics and multiclass_brier: every caller passes
  integer label indices and float probabilities already, and what follows reads them the same.
- grouped_label_metrics: ``... if present else float("nan")`` -> ``if present or True``: a split
  is never empty (_check), so each target has positives or negatives and ``present`` is never empty.
- per_class_metrics: ``report.itertuples(index=False)`` -> ``index=True``: the fields are read
  by name, and the added Index field is never read.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from derma_core.evaluation import metrics
from derma_core.labels import INVALID, LabelSet

ABC = LabelSet(codes=("a", "b", "c"), groupings={"kind": {"a": "bad", "b": "bad", "c": "fine"}},
               positive={"kind": "bad"}, focus="b")


# ------------------------------------------------------------------------------- input checks
def test_check_boundaries_and_messages():
    metrics.classification_metrics(np.array([0, 1]), np.array([1, INVALID]), 2)  # the smallest valid input
    with pytest.raises(ValueError, match="^n_classes must be at least 2, got 1$"):
        metrics.classification_metrics(np.array([0]), np.array([0]), 1)
    with pytest.raises(ValueError, match=r"^y_true \(2,\) and y_pred \(3,\) must be 1-D and of equal length$"):
        metrics.classification_metrics(np.array([0, 1]), np.array([0, 1, 1]), 2)
    with pytest.raises(ValueError, match="must be 1-D"):
        metrics.classification_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), 2)
    with pytest.raises(ValueError, match=r"^y_true must hold label indices 0\.\.1 \(true labels cannot be invalid\)$"):
        metrics.classification_metrics(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"^y_pred must hold label indices 0\.\.2 or -1 for an invalid answer$"):
        metrics.classification_metrics(np.array([0, 2]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="y_pred must hold"):
        metrics.classification_metrics(np.array([0, 1]), np.array([0, -2]), 3)
    assert metrics.class_indices(3) == [0, 1, 2] and metrics.class_indices(np.int64(2)) == [0, 1]


def test_probabilities_above_one_or_not_summing_to_one_are_refused():
    good = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(metrics.check_probabilities(good, 2, 3), good)
    # rounding just above 1 is accepted and comes back as exactly 1
    rounded = np.array([[0.2, 0.3, 0.5], [1 + 5e-10, 0.0, 0.0]])
    assert metrics.check_probabilities(rounded, 2, 3)[1, 0] == 1.0
    over = np.array([[0.2, 0.3, 0.5], [1.2, -0.1, -0.1]])
    with pytest.raises(ValueError, match=r"^probabilities row 1 is not in \[0, 1\] or not finite: "
                                         r"\[1\.2, -0\.1, -0\.1\] \(1 bad rows\); fix the backend's predict\(\)$"):
        metrics.check_probabilities(over, 2, 3)
    just_over = np.array([[0.2, 0.3, 0.5], [1 + 1e-6, 0.0, 0.0]])
    with pytest.raises(ValueError, match="row 1 is not in"):
        metrics.check_probabilities(just_over, 2, 3)
    negative = np.array([[0.5, 0.5, 0.0], [0.6, 0.5, -0.1]])
    with pytest.raises(ValueError, match=r"row 1 is not in \[0, 1\].*\(1 bad rows\)"):
        metrics.check_probabilities(negative, 2, 3)
    infinite = np.array([[0.5, 0.5, 0.0], [np.inf, 0.0, 0.0], [np.nan, 0.0, 0.0]])
    with pytest.raises(ValueError, match=r"row 1 .*\(2 bad rows\)"):
        metrics.check_probabilities(infinite, 3, 3)
    # scores in [0, 1] that are not a distribution: refused, naming the row and its sum
    unnormalised = np.array([[0.2, 0.3, 0.5], [0.9, 0.8, 0.1], [0.1, 0.1, 0.1]])
    with pytest.raises(ValueError, match=r"^probabilities row 1 sums to 1\.8, not 1 \(2 such rows\); fix the backend's "
                                         r"predict\(\) to return a softmax"):
        metrics.check_probabilities(unnormalised, 3, 3)
    with pytest.raises(ValueError, match="row 0 sums to 0.99"):
        metrics.check_probabilities(np.array([[0.2, 0.3, 0.49]]), 1, 3)
    # a float32 softmax is well inside the tolerance
    logits = np.random.default_rng(0).normal(size=(50, 114)).astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    metrics.check_probabilities(e / e.sum(axis=1, keepdims=True), 50, 114)
    with pytest.raises(ValueError, match=r"^probabilities have shape \(2, 3\), expected \(3, 3\)$"):
        metrics.check_probabilities(good, 3, 3)
    with pytest.raises(ValueError, match="sums to"):
        metrics.probability_metrics(np.array([0, 1, 2]), unnormalised, ABC)


# ------------------------------------------------------------------------------- label metrics
def test_tables_by_hand():
    # true a a b c c c; predicted a b b c INVALID a
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, INVALID, 0])
    with_invalid = metrics.confusion_counts(y_true, y_pred, ABC)
    assert list(with_invalid.columns) == ["true", "a", "b", "c", "invalid"]
    assert with_invalid.to_numpy().tolist() == [["a", 1, 1, 0, 0], ["b", 0, 1, 0, 0], ["c", 1, 0, 1, 1]]
    without = metrics.confusion_counts(y_true, y_pred, ABC, include_invalid=False)
    assert list(without.columns) == ["true", "a", "b", "c"]
    assert without.to_numpy().tolist() == [["a", 1, 1, 0], ["b", 0, 1, 0], ["c", 1, 0, 1]]
    assert metrics.valid_confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    nothing = metrics.valid_confusion_matrix(y_true, np.full(6, INVALID), 3)
    assert nothing.tolist() == [[0] * 3] * 3 and nothing.dtype == np.int64
    dist = metrics.answer_distribution(y_true, y_pred, ABC)
    assert dist["answer"].tolist() == ["a", "b", "c", "invalid"]
    assert dist["count"].tolist() == [2, 2, 1, 1]
    assert dist["fraction"].tolist() == pytest.approx([2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert dist["true_count"].tolist() == [2, 1, 3, 0]
    assert metrics.invalid_rate(y_pred) == pytest.approx(1 / 6)
    assert math.isnan(metrics.invalid_rate(np.array([])))
    report = metrics.per_class_report(y_true, y_pred, ABC)
    # a: TP 1 FP 1 FN 1; b: TP 1 FP 1 FN 0; c: TP 1 FP 0 FN 2
    assert report["precision"].tolist() == pytest.approx([1 / 2, 1 / 2, 1])
    assert report["recall"].tolist() == pytest.approx([1 / 2, 1, 1 / 3])
    assert report["f1"].tolist() == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert report["support"].tolist() == [2, 1, 3] and report["predicted"].tolist() == [2, 2, 1]
    m = metrics.classification_metrics(y_true, y_pred, 3)
    assert m == pytest.approx({"accuracy": 3 / 6, "balanced_accuracy": (1 / 2 + 1 + 1 / 3) / 3,
                               "macro_f1": (1 / 2 + 2 / 3 + 1 / 2) / 3,
                               "weighted_f1": (2 * 1 / 2 + 1 * 2 / 3 + 3 * 1 / 2) / 6})


def test_grouped_metrics_by_hand():
    targets = metrics.group_targets(ABC)
    assert len(targets) == 1 and targets[0].mask.tolist() == [True, True, False]
    assert targets[0].name("sensitivity") == "kind_sensitivity"
    assert targets[0].of(np.array([2, 0, INVALID, 1])).tolist() == [0, 1, INVALID, 1]
    # bad = a, b. True a a b c c c; predicted a c INVALID c b c
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 2, INVALID, 2, 1, 2])
    m = metrics.grouped_label_metrics(y_true, y_pred, 3, targets)
    # sensitivity: of a a b, only the first is called bad: 1/3; specificity: c c c -> c b c: 2/3
    assert m == pytest.approx({"kind_sensitivity": 1 / 3, "kind_specificity": 2 / 3, "kind_balanced_accuracy": 1 / 2})
    only_bad = metrics.grouped_label_metrics(np.array([0, 1]), np.array([1, 2]), 3, targets)
    assert only_bad["kind_sensitivity"] == 0.5 and math.isnan(only_bad["kind_specificity"])
    assert only_bad["kind_balanced_accuracy"] == 0.5
    assert metrics.grouped_label_metrics(y_true, y_pred, 3, []) == {}


# -------------------------------------------------------------------------- probability metrics
def test_sensitivity_at_specificity_on_the_boundary():
    # 5 negatives: one false positive is exactly 80% specificity (FPR 0.2, while 1 - 0.8 is
    # 0.19999999999999996 in floating point): it is allowed
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.35, 0.05])
    # thresholds: 0.9 (FP 1, TP 0), 0.8 (FP 1, TP 1), 0.7 (FP 1, TP 2), 0.4 (FP 2, ...)
    assert metrics.sensitivity_at_specificity(y, s, 0.8) == pytest.approx(2 / 4)
    # 90% specificity allows no false positive: nothing above 0.9 -> sensitivity 0
    assert metrics.sensitivity_at_specificity(y, s, 0.9) == 0.0
    assert metrics.sensitivity_at_specificity(y, s, 0.0) == 1.0
    assert math.isnan(metrics.sensitivity_at_specificity(np.ones(3), np.ones(3) / 2, 0.8))
    assert math.isnan(metrics.sensitivity_at_specificity(np.zeros(3), np.ones(3) / 2, 0.8))


def test_probability_metrics_by_hand():
    # true a b c c; AUROC by counting (positive, negative) pairs, a tie counting 1/2
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1],
                  [0.2, 0.6, 0.2],
                  [0.1, 0.2, 0.7],
                  [0.3, 0.6, 0.1]])
    m, table = metrics.probability_metrics(y, p, ABC)
    assert m["auroc_a"] == 1.0  # 0.7 against 0.2, 0.1, 0.3
    # b: positive 0.6 against negatives 0.2, 0.2, 0.6: wins 2, tie 1 -> 2.5 / 3
    assert m["auroc_b"] == pytest.approx(2.5 / 3)
    # c: positives 0.7, 0.1 against 0.1, 0.2: 0.7 wins twice, 0.1 ties once -> 2.5 / 4
    assert m["auroc_c"] == pytest.approx(2.5 / 4)
    assert m["macro_auroc"] == pytest.approx((1 + 2.5 / 3 + 2.5 / 4) / 3)
    # AP of c: ranked 0.7 (pos), 0.2 (neg), 0.1 (pos, tied with a neg): recall 1/2 at precision 1,
    # then all four at precision 2/4 -> 1/2 * 1 + 1/2 * 1/2 = 3/4
    assert m["average_precision_c"] == pytest.approx(3 / 4)
    ap_a, ap_b = m["average_precision_a"], m["average_precision_b"]
    assert (ap_a, ap_b) == (1.0, pytest.approx(1 / 2))  # b's positive ties the top negative: precision 1/2
    assert m["macro_average_precision"] == pytest.approx((1 + 1 / 2 + 3 / 4) / 3)
    # Brier: per image sum of squares to one-hot
    hand = [0.09 + 0.04 + 0.01, 0.04 + 0.16 + 0.04, 0.01 + 0.04 + 0.09, 0.09 + 0.36 + 0.81]
    assert m["brier"] == pytest.approx(np.mean(hand))
    # the focus class b: negatives 0.2, 0.2, 0.6; at 80% or 90% specificity no false positive
    # is allowed among 3, so only a threshold above 0.6 counts: nothing -> 0
    assert m["b_sensitivity_at_spec80"] == 0.0 and m["b_sensitivity_at_spec90"] == 0.0
    # the grouping: P(bad) = P(a) + P(b) = 0.9, 0.8 (bad images) against 0.3, 0.9 (fine images):
    # 0.9 beats 0.3 and ties 0.9, 0.8 beats 0.3 and loses to 0.9 -> (1 + 0.5 + 1 + 0) / 4
    assert m["kind_auroc"] == pytest.approx(2.5 / 4)
    assert table["label"].tolist() == ["a", "b", "c"] and table["positives"].tolist() == [1, 1, 2]
    assert set(m) == {"auroc_a", "auroc_b", "auroc_c", "average_precision_a", "average_precision_b",
                      "average_precision_c", "macro_auroc", "macro_average_precision", "brier",
                      "b_sensitivity_at_spec80", "b_sensitivity_at_spec90", "kind_auroc",
                      "kind_sensitivity_at_spec80", "kind_sensitivity_at_spec90"}


def test_probability_metrics_of_one_class_have_no_auroc():
    y = np.array([2, 2])
    p = np.array([[0.1, 0.1, 0.8], [0.2, 0.3, 0.5]])
    m, table = metrics.probability_metrics(y, p, ABC)
    assert math.isnan(m["macro_auroc"]) and math.isnan(m["macro_average_precision"])
    assert not any(k.startswith(("auroc_", "average_precision_", "kind_")) for k in m)
    assert table["auroc"].isna().all() and table["positives"].tolist() == [0, 0, 2]
    assert math.isnan(m["b_sensitivity_at_spec80"])
    assert metrics.grouped_probability_metrics(y, p, metrics.group_targets(ABC)) == {}


def test_multiclass_brier_is_not_halved():
    assert metrics.multiclass_brier(np.array([0]), np.array([[0.0, 1.0, 0.0]])) == pytest.approx(2.0)
    assert metrics.multiclass_brier(np.array([1, 0]), np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(0.25)


def test_classes_never_predicted_give_zeros_without_warnings():
    # c is never predicted (precision 0/0) and b never true: scikit-learn would warn "ill-defined"
    # unless told what 0/0 is; derma says it (0), so a run's log carries no such warning
    import warnings

    y_true = np.array([0, 0, 2, 2])
    y_pred = np.array([0, 1, 0, INVALID])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = metrics.classification_metrics(y_true, y_pred, 3)
        report = metrics.per_class_report(y_true, y_pred, ABC)
    assert report["precision"].tolist() == pytest.approx([1 / 2, 0.0, 0.0])
    assert report["f1"].tolist() == pytest.approx([1 / 2, 0.0, 0.0])
    assert m["weighted_f1"] == pytest.approx((2 * 1 / 2 + 2 * 0) / 4)


def test_every_grouping_is_reported_even_after_one_without_negatives():
    two = LabelSet(codes=("a", "b", "c"), groupings={"all": {"a": "in", "b": "in", "c": "out"},
                                                     "kind": {"a": "bad", "b": "fine", "c": "fine"}},
                   positive={"all": "in", "kind": "bad"})
    y = np.array([0, 1, 1])  # every image is "in": the first grouping has no negatives, the second has both
    p = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    m = metrics.grouped_probability_metrics(y, p, metrics.group_targets(two))
    assert m == pytest.approx({"kind_auroc": 1.0, "kind_sensitivity_at_spec80": 1.0,
                               "kind_sensitivity_at_spec90": 1.0})
