"""Selective prediction (derma_core/evaluation/selective.py) against values worked out by hand
and against a slow reference written from the definition (Geifman & El-Yaniv, 2017): keep the
k most confident images, selective risk = errors among them / k, AURC = the mean over k = 1..n,
E-AURC = AURC minus that of an oracle that ranks every error last.

Mutation testing (`python scripts/mutation.py derma_core/evaluation/selective.py`, see
docs/testing.md). Equivalent mutants (no observable change):
- confidence_of_answer: `np.asarray(probabilities, dtype=np.float64)` with the dtype dropped or
  None: the chosen probabilities are copied into a float64 array either way.
- risk_coverage: `np.asarray(confidence, dtype=np.float64)` with the dtype dropped or None:
  the (float) values are only negated and ordered; `.astype(np.float64)` -> `.astype(None)` on the
  error indicator: numpy's default dtype is float64; `kind="stable"` -> `kind="STABLE"`: numpy
  reads the sort kind case-insensitively.
- selective_metrics: the curve's `np.clip(..., 1, n)` with either bound replaced by None:
  `np.linspace(1, n, m)` runs from 1 to n, so neither bound ever acts. (The lower bound
  replaced by 2 does act, and is killed.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derma_core.evaluation.selective import confidence_of_answer, risk_coverage, selective_metrics
from derma_core.labels import INVALID

# Fixed seeds (derandomize): the same examples on every run and machine.
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


def reference_curve(y_true, y_pred, confidence):
    """Risk at each coverage, from the definition with plain Python: sort by confidence, highest
    first, ties in row order (Python's sort is stable), and count the errors among the first k."""
    ranked = sorted(range(len(y_true)), key=lambda i: -confidence[i])
    errors, risks = 0, []
    for k, i in enumerate(ranked, start=1):
        errors += y_pred[i] != y_true[i]
        risks.append(errors / k)
    return [k / len(y_true) for k in range(1, len(y_true) + 1)], risks


# ---------------------------------------------------------------------------------------------
# worked examples

# Four images, most confident first; the 2nd and 4th are wrong:
#   k:         1    2    3    4
#   errors:    0    1    1    2
#   coverage: 1/4  2/4  3/4  4/4
#   risk:      0   1/2  1/3  2/4   -> AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3
# Oracle with the same 2 errors ranked last: risk 0, 0, 1/3, 2/4 -> 5/24; E-AURC = 1/3 - 5/24 = 1/8.
Y_TRUE = np.array([0, 1, 2, 0])
Y_PRED = np.array([0, 2, 2, 1])
CONF = np.array([0.9, 0.8, 0.7, 0.6])


def test_risk_coverage_worked_example():
    coverage, risk = risk_coverage(Y_TRUE, Y_PRED, CONF)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])


def test_rows_are_ranked_by_confidence_not_by_position():
    # the same four images given in another order: the curve is the same
    perm = np.array([3, 1, 0, 2])
    coverage, risk = risk_coverage(Y_TRUE[perm], Y_PRED[perm], CONF[perm])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 2, 1 / 3, 2 / 4])
    # the most confident image is the wrong one: the curve starts at risk 1
    _, risk = risk_coverage(np.array([0, 0]), np.array([1, 0]), np.array([0.9, 0.1]))
    np.testing.assert_allclose(risk, [1.0, 0.5])


def test_ties_keep_row_order_beyond_numpys_small_array_sort():
    """Ties in confidence are kept in row order (a deterministic curve). numpy's default sort is
    stable only for short arrays, so the check uses 40 tied images, errors in the first half."""
    n = 40
    y_true = np.zeros(n, dtype=int)
    y_pred = np.r_[np.ones(n // 2, dtype=int), np.zeros(n // 2, dtype=int)]
    _, risk = risk_coverage(y_true, y_pred, np.full(n, 0.5))
    np.testing.assert_allclose(risk[: n // 2], 1.0)  # every one of the first 20 is an error
    np.testing.assert_allclose(risk[-1], 0.5)
    _, flipped = risk_coverage(y_true, y_pred[::-1], np.full(n, 0.5))
    np.testing.assert_allclose(flipped[: n // 2], 0.0)


def test_selective_metrics_worked_example():
    metrics, curve = selective_metrics(Y_TRUE, Y_PRED, CONF, refer=0.25)
    assert metrics["selective_aurc"] == pytest.approx(1 / 3)
    assert metrics["selective_eaurc"] == pytest.approx(1 / 3 - 5 / 24)
    # refer the least confident quarter: keep 3, of which 1 is wrong
    assert metrics["selective_accuracy_refer25"] == pytest.approx(2 / 3)
    assert metrics["selective_coverage_refer25"] == pytest.approx(0.75)
    assert set(metrics) == {"selective_aurc", "selective_eaurc", "selective_accuracy_refer25",
                            "selective_coverage_refer25"}
    assert list(curve.columns) == ["coverage", "risk", "accuracy"]
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["risk"], [0.0, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 1 / 2, 2 / 3, 2 / 4])


def test_refer_nothing_keeps_every_image():
    metrics, _ = selective_metrics(Y_TRUE, Y_PRED, CONF, refer=0.0)
    assert metrics["selective_accuracy_refer0"] == pytest.approx(0.5)  # plain accuracy
    assert metrics["selective_coverage_refer0"] == 1.0


def test_the_default_refers_ten_percent():
    y_true = np.zeros(10, dtype=int)
    y_pred = np.r_[np.zeros(8, dtype=int), 1, 1]  # the two least confident are wrong
    conf = np.linspace(1.0, 0.1, 10)
    metrics, _ = selective_metrics(y_true, y_pred, conf)
    assert metrics["selective_coverage_refer10"] == pytest.approx(0.9)
    assert metrics["selective_accuracy_refer10"] == pytest.approx(8 / 9)


@pytest.mark.parametrize("refer, n, kept", [
    (0.7, 10, 3),   # (1 - 0.7) * 10 = 3.0000000000000004 in floating point: 3 kept, not 4
    (0.8, 10, 2),   # 1.9999999999999996: 2
    (0.9, 10, 1),
    (0.9, 4, 1),    # 0.4 images: at least one is kept
    (0.75, 4, 1),
    (0.5, 4, 2),
    (0.3, 7, 5),    # 4.9 -> 5
    (1 - 1e-12, 5, 1),
])
def test_the_kept_count_rounds_up_and_keeps_at_least_one(refer, n, kept):
    y_true = np.zeros(n, dtype=int)
    y_pred = (np.arange(n) % 2).astype(int)  # wrong on every second image, confidence falling
    conf = np.linspace(1.0, 0.0, n)
    metrics, _ = selective_metrics(y_true, y_pred, conf, refer=refer)
    pct = round(refer * 100)
    assert metrics[f"selective_coverage_refer{pct}"] == pytest.approx(kept / n)
    errors = int(np.sum(y_pred[:kept]))
    assert metrics[f"selective_accuracy_refer{pct}"] == pytest.approx(1 - errors / kept)


def test_metric_names_round_the_referred_percentage():
    metrics, _ = selective_metrics(Y_TRUE, Y_PRED, CONF, refer=0.9)
    assert "selective_accuracy_refer90" in metrics and "selective_coverage_refer90" in metrics
    metrics, _ = selective_metrics(Y_TRUE, Y_PRED, CONF, refer=0.125)
    assert "selective_accuracy_refer12" in metrics  # 12.5 rounds to even


@pytest.mark.parametrize("refer", [1.0, 1.5, -0.1])
def test_refer_outside_zero_to_one_is_refused(refer):
    with pytest.raises(ValueError, match=r"^evaluation\.selective\.refer must be in \[0, 1\), e\.g\. 0\.1, got "):
        selective_metrics(Y_TRUE, Y_PRED, CONF, refer=refer)


def test_all_right_and_all_wrong():
    n = 6
    conf = np.linspace(0.9, 0.4, n)
    right, _ = selective_metrics(np.arange(n) % 3, np.arange(n) % 3, conf)
    assert right["selective_aurc"] == 0.0 and right["selective_eaurc"] == 0.0
    assert right["selective_accuracy_refer10"] == 1.0
    wrong, curve = selective_metrics(np.zeros(n, dtype=int), np.ones(n, dtype=int), conf)
    assert wrong["selective_aurc"] == 1.0
    assert wrong["selective_eaurc"] == pytest.approx(0.0)  # no ranking of all-wrong answers is better
    assert wrong["selective_accuracy_refer10"] == 0.0
    np.testing.assert_allclose(curve["accuracy"], 0.0)


def test_worst_ranking_has_the_largest_eaurc():
    # one error among 4, ranked first: risk 1, 1/2, 1/3, 1/4; the oracle's 0, 0, 0, 1/4
    y_true = np.zeros(4, dtype=int)
    y_pred = np.array([1, 0, 0, 0])
    worst, _ = selective_metrics(y_true, y_pred, np.array([0.9, 0.8, 0.7, 0.6]))
    best, _ = selective_metrics(y_true, y_pred, np.array([0.1, 0.8, 0.7, 0.6]))
    assert worst["selective_aurc"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert worst["selective_eaurc"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert best["selective_aurc"] == pytest.approx(1 / 16)
    assert best["selective_eaurc"] == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# the logged curve


def test_a_short_curve_has_one_row_per_image():
    n = 7
    y_true = np.zeros(n, dtype=int)
    y_pred = np.array([0, 1, 0, 0, 1, 1, 0])
    conf = np.linspace(1.0, 0.3, n)
    _, curve = selective_metrics(y_true, y_pred, conf)
    _, ref_risk = reference_curve(list(y_true), list(y_pred), list(conf))
    assert len(curve) == n
    np.testing.assert_allclose(curve["coverage"], np.arange(1, n + 1) / n)
    np.testing.assert_allclose(curve["risk"], ref_risk)


@pytest.mark.parametrize("n", [101, 102, 250, 1000])
def test_a_long_curve_has_101_points_from_the_first_image_to_all(n):
    rng = np.random.default_rng(n)
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.3, (y_true + 1) % 3, y_true)
    conf = rng.random(n)
    _, curve = selective_metrics(y_true, y_pred, conf)
    _, full_risk = risk_coverage(y_true, y_pred, conf)
    assert len(curve) == 101
    k = np.rint(curve["coverage"].to_numpy() * n).astype(int)
    assert k[0] == 1 and k[-1] == n
    assert np.all(np.diff(k) >= 1) and np.diff(k).max() <= math.ceil((n - 1) / 100)  # evenly spread
    np.testing.assert_allclose(curve["risk"], full_risk[k - 1])  # each row is the curve at its coverage
    np.testing.assert_allclose(curve["accuracy"] + curve["risk"], 1.0)


# ---------------------------------------------------------------------------------------------
# confidence of the given answer


def test_confidence_is_the_probability_of_the_given_label():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    conf = confidence_of_answer(np.array([0, 2, INVALID, 1]), p)
    assert conf.dtype == np.float64
    np.testing.assert_array_equal(conf, [0.7, 0.6, -np.inf, 0.2])  # not the row maximum for row 4


def test_labels_read_as_floats_still_index_the_probabilities():
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    np.testing.assert_array_equal(confidence_of_answer(np.array([1.0, 0.0]), p), [0.3, 0.4])


def test_invalid_answers_are_referred_first():
    y_true = np.array([0, 0, 0, 0])
    y_pred = np.array([0, INVALID, 0, 0])
    p = np.array([[0.5, 0.5], [0.99, 0.01], [0.8, 0.2], [0.6, 0.4]])
    conf = confidence_of_answer(y_pred, p)
    _, risk = risk_coverage(y_true, y_pred, conf)
    np.testing.assert_allclose(risk, [0, 0, 0, 1 / 4])  # the invalid answer is the last one kept
    metrics, _ = selective_metrics(y_true, y_pred, conf, refer=0.25)
    assert metrics["selective_accuracy_refer25"] == 1.0


# ---------------------------------------------------------------------------------------------
# properties on random cases


@st.composite
def cases(draw):
    n = draw(st.integers(1, 30))
    y_true = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    # few distinct values, so ties are common
    confidence = draw(st.lists(st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9]), min_size=n, max_size=n))
    return y_true, y_pred, confidence


@PROPERTY
@given(cases())
def test_curve_matches_the_definition(case):
    y_true, y_pred, confidence = case
    coverage, risk = risk_coverage(np.array(y_true), np.array(y_pred), np.array(confidence))
    ref_coverage, ref_risk = reference_curve(y_true, y_pred, confidence)
    np.testing.assert_allclose(coverage, ref_coverage)
    np.testing.assert_allclose(risk, ref_risk)


@PROPERTY
@given(cases())
def test_eaurc_is_aurc_above_the_best_ranking_of_the_same_errors(case):
    y_true, y_pred, confidence = (np.array(v) for v in case)
    metrics, _ = selective_metrics(y_true, y_pred, confidence)
    errors = (y_true != y_pred).astype(float)
    _, oracle_risk = reference_curve(list(errors * 0), list(errors), list(-errors))  # errors last
    _, ref_risk = reference_curve(list(y_true), list(y_pred), list(confidence))
    assert metrics["selective_aurc"] == pytest.approx(np.mean(ref_risk))
    assert metrics["selective_eaurc"] == pytest.approx(np.mean(ref_risk) - np.mean(oracle_risk), abs=1e-12)
    assert metrics["selective_eaurc"] >= -1e-12
    # ranking by correctness itself is the oracle: E-AURC 0
    best, _ = selective_metrics(y_true, y_pred, 1.0 - errors)
    assert best["selective_eaurc"] == pytest.approx(0.0, abs=1e-12)
