"""Split-conformal sets (derma_core/evaluation/conformal.py): the finite-sample quantile at its
edges (rank exactly n, floating-point ranks), the coverage guarantee as a property of any
exchangeable scores (hypothesis, fixed seeds), LAC / APS scores and sets worked by hand (ties
among classes included, one threshold or one per class), and the coverage intervals against
textbook Clopper-Pearson values and a simulation.

The coverage property is the one conformal prediction rests on: among n + 1 exchangeable
scores, the held-out one is at most the quantile of the other n with probability between
1 - alpha and 1 - alpha + 1 / (n + 1) (distinct scores). Averaging over which of the n + 1 is
held out computes that probability exactly, so no sampling error is involved.

Mutation testing (`python scripts/mutation.py derma_core/evaluation/conformal.py`, see
docs/testing.md): mutants judged equivalent are listed at the end of this module.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derma_core.evaluation.conformal import (
    METHODS,
    calibrate_and_predict,
    class_quantiles,
    conformal_quantile,
    coverage_interval,
    expected_coverage_range,
    min_calibration_images,
    prediction_sets,
    score_of,
    scores,
)

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


# ---------------------------------------------------------------------------------------------
# the quantile


def test_the_rank_is_ceil_n_plus_1_times_1_minus_alpha():
    s = np.arange(1, 10) / 10.0  # n = 9
    assert conformal_quantile(s, 0.1) == 0.9   # ceil(10 * 0.9) = 9 = n: the largest, not infinity
    assert conformal_quantile(s, 0.2) == 0.8   # ceil(10 * 0.8) = 8
    assert conformal_quantile(s, 0.15) == 0.9  # ceil(8.5) = 9
    assert conformal_quantile(s, 0.95) == 0.1  # ceil(0.5) = 1
    assert conformal_quantile(s[:8], 0.1) == math.inf  # ceil(9 * 0.9) = 9 > 8


def test_a_rank_that_is_whole_up_to_rounding_is_not_rounded_up():
    s = np.arange(1, 10) / 10.0
    # (9 + 1) * (1 - 0.7) is 3.0000000000000004 in floating point: the 3rd smallest, not the 4th
    assert (9 + 1) * (1 - 0.7) > 3
    assert conformal_quantile(s, 0.7) == 0.3
    # (19 + 1) * (1 - 0.7) = 6.000000000000001: the 6th of 19
    assert conformal_quantile(np.arange(1, 20) / 20.0, 0.7) == 6 / 20


def test_scores_in_any_order_and_a_single_one():
    rng = np.random.default_rng(0)
    s = rng.permutation(np.arange(1, 20) / 20.0)
    assert conformal_quantile(s, 0.1) == 18 / 20
    assert conformal_quantile([0.3], 0.5) == 0.3    # ceil(2 * 0.5) = 1 <= n = 1
    assert conformal_quantile([0.3], 0.4) == math.inf
    assert conformal_quantile([3, 1, 2], 0.5) == 2.0  # integer scores are fine


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5])
def test_alpha_outside_zero_to_one_is_refused(alpha):
    with pytest.raises(ValueError, match=rf"^evaluation\.conformal\.alpha must be between 0 and 1 \(e\.g\. 0\.1\), "
                                         rf"got {alpha}$"):
        conformal_quantile(np.arange(5) / 5, alpha)


def test_no_calibration_scores_is_refused():
    with pytest.raises(ValueError, match=r"^conformal calibration needs at least one calibration "):
        conformal_quantile(np.zeros(0), 0.1)


def _held_out_coverage(all_scores, alpha):
    """How often the held-out score is within the quantile of the others, over every choice."""
    all_scores = np.asarray(all_scores, dtype=float)
    hits = [all_scores[j] <= conformal_quantile(np.delete(all_scores, j), alpha) for j in range(len(all_scores))]
    return float(np.mean(hits))


ALPHAS = st.integers(1, 99).map(lambda a: a / 100)


@PROPERTY
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=40, unique=True), ALPHAS)
def test_coverage_of_exchangeable_distinct_scores_is_within_the_guarantee(all_scores, alpha):
    n = len(all_scores) - 1
    coverage = _held_out_coverage(all_scores, alpha)
    assert coverage >= 1 - alpha - 1e-12
    assert coverage < 1 - alpha + 1 / (n + 1) + 1e-12


@PROPERTY
@given(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.9]), min_size=2, max_size=40), ALPHAS)
def test_coverage_with_tied_scores_is_at_least_the_level(all_scores, alpha):
    assert _held_out_coverage(all_scores, alpha) >= 1 - alpha - 1e-12


# ---------------------------------------------------------------------------------------------
# scores and sets, by hand

# four classes with probabilities exactly representable in binary, so ties with q are exact
P = np.array([[0.5, 0.25, 0.125, 0.125]])


def test_lac_score_and_set():
    np.testing.assert_array_equal(scores("lac", np.repeat(P, 4, axis=0), np.arange(4)), [0.5, 0.75, 0.875, 0.875])
    np.testing.assert_array_equal(prediction_sets("lac", P, 0.75), [[True, True, False, False]])  # 1 - 0.25 <= 0.75
    np.testing.assert_array_equal(prediction_sets("lac", P, 0.7), [[True, False, False, False]])
    np.testing.assert_array_equal(prediction_sets("lac", P, 0.4), [[False] * 4])  # LAC sets may be empty too


def test_aps_score_is_the_mass_ranked_above_plus_u_times_its_own():
    p4 = np.repeat(P, 4, axis=0)
    # without u (u = 1): the cumulative mass up to and including the class
    np.testing.assert_array_equal(scores("aps", p4, np.arange(4)), [0.5, 0.75, 0.875, 1.0])
    u = np.array([0.5, 0.5, 0.5, 0.25])
    np.testing.assert_array_equal(scores("aps", p4, np.arange(4), u), [0.25, 0.625, 0.8125, 0.90625])


def test_aps_set_is_the_prefix_within_q():
    np.testing.assert_array_equal(prediction_sets("aps", P, 0.75), [[True, True, False, False]])  # 0.75 <= 0.75
    np.testing.assert_array_equal(prediction_sets("aps", P, 0.74), [[True, False, False, False]])
    u = np.array([0.5])
    np.testing.assert_array_equal(prediction_sets("aps", P, 0.8125, u), [[True, True, True, False]])
    np.testing.assert_array_equal(prediction_sets("aps", P, 0.8, u), [[True, True, False, False]])
    np.testing.assert_array_equal(prediction_sets("aps", P, 0.2, u), [[False] * 4])  # may be empty


def test_rows_are_ranked_by_their_own_probabilities():
    p = np.array([[0.125, 0.5, 0.125, 0.25], [0.25, 0.125, 0.5, 0.125]])
    np.testing.assert_array_equal(scores("aps", p, np.array([3, 0])), [0.75, 0.75])
    np.testing.assert_array_equal(prediction_sets("aps", p, 0.75),
                                  [[False, True, False, True], [True, False, True, False]])


def test_tied_classes_are_ranked_by_class_index():
    """40 equally likely classes: the ranking among ties is by class index (a stable sort, which
    numpy's default sort is not beyond 16 items), in scores and sets alike."""
    k = 40
    p = np.full((3, k), 1 / k)
    y = np.array([0, 9, 39])
    np.testing.assert_allclose(scores("aps", p, y), (y + 1) / k)
    sets = prediction_sets("aps", p, 10 / k + 1e-12)
    np.testing.assert_array_equal(sets, np.tile(np.arange(k) < 10, (3, 1)))
    # two tied leaders among 40: class 5 before class 30
    p2 = np.full((1, k), 0.1 / 38)
    p2[0, [5, 30]] = 0.45
    np.testing.assert_allclose(scores("aps", p2, np.array([30])), [0.9])
    np.testing.assert_array_equal(np.flatnonzero(prediction_sets("aps", p2, 0.5)[0]), [5])


def test_ties_behind_distinct_leaders_are_ranked_by_class_index():
    """Ten distinct leaders (classes 30-39), then 30 tied classes: a set that reaches 8 places
    into the tie holds classes 0-7 of it (numpy's default sort would pick others here)."""
    p = np.r_[np.full(30, 0.55 / 30), np.linspace(0.06, 0.03, 10)][None, :]
    q = 0.45 + 8 * 0.55 / 30 + 1e-9
    expected = np.r_[np.arange(8), np.arange(30, 40)]
    np.testing.assert_array_equal(np.flatnonzero(prediction_sets("aps", p, q)[0]), expected)
    s = scores("aps", np.repeat(p, 40, axis=0), np.arange(40))
    np.testing.assert_array_equal(np.flatnonzero(s <= q), expected)


@pytest.mark.parametrize("method", METHODS)
def test_larger_q_gives_larger_sets(method):
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.full(6, 0.5), size=200)
    u = rng.random(200)
    previous = np.zeros_like(p, dtype=bool)
    for q in [*np.linspace(0, 1, 21), 1 + 1e-9]:
        sets = prediction_sets(method, p, q, u)
        assert (sets >= previous).all()
        previous = sets
    assert previous.all()  # q = 1 (up to rounding of the cumulative mass) holds every class


@pytest.mark.parametrize("function", [scores, prediction_sets])
def test_an_unknown_method_is_refused(function):
    expected = rf"^unknown conformal method 'raps'; use one of {re.escape(', '.join(METHODS))}$"
    with pytest.raises(ValueError, match=expected):
        function("raps", P, np.array([0]) if function is scores else 0.5)


# ---------------------------------------------------------------------------------------------
# calibrate, then predict


def test_lac_end_to_end_by_hand():
    # calibration scores 1 - p_y: 0.5, 0.25, 0.75, 0.125 (n = 4); alpha = 0.4: ceil(5 * 0.6) = 3 -> q = 0.5
    cal = np.array([[0.5, 0.5], [0.75, 0.25], [0.75, 0.25], [0.125, 0.875]])
    cal_y = np.array([0, 0, 1, 1])
    test = np.array([[0.5, 0.5], [0.25, 0.75], [0.875, 0.125]])
    q, sets = calibrate_and_predict("lac", cal, cal_y, test, alpha=0.4)
    assert q == 0.5
    np.testing.assert_array_equal(sets, [[True, True], [False, True], [True, False]])
    q, sets = calibrate_and_predict("lac", cal, cal_y, test, alpha=0.1)  # ceil(4.5) = 5 > 4
    assert q == math.inf and sets.all()


def test_aps_draws_depend_on_the_seed_only():
    rng = np.random.default_rng(9)
    cal, test = rng.dirichlet(np.ones(5), size=300), rng.dirichlet(np.ones(5), size=200)
    cal_y = rng.integers(0, 5, 300)
    q1, s1 = calibrate_and_predict("aps", cal, cal_y, test, alpha=0.2, seed=3)
    q2, s2 = calibrate_and_predict("aps", cal, cal_y, test, alpha=0.2, seed=3)
    q3, s3 = calibrate_and_predict("aps", cal, cal_y, test, alpha=0.2, seed=4)
    assert q1 == q2 and np.array_equal(s1, s2)
    assert q1 != q3 and not np.array_equal(s1, s3)
    # the calibration draws are randomised: not the deterministic (u = 1) quantile
    assert q1 != conformal_quantile(scores("aps", cal, cal_y), 0.2)
    # and so are the test draws: not the deterministic sets at the same q
    assert not np.array_equal(s1, prediction_sets("aps", test, q1))


def test_the_default_seed_is_zero():
    rng = np.random.default_rng(2)
    cal, test = rng.dirichlet(np.ones(4), size=100), rng.dirichlet(np.ones(4), size=50)
    cal_y = rng.integers(0, 4, 100)
    q0, s0 = calibrate_and_predict("aps", cal, cal_y, test, alpha=0.2, seed=0)
    q, s = calibrate_and_predict("aps", cal, cal_y, test, alpha=0.2)
    assert q == q0 and np.array_equal(s, s0)


def test_each_calibration_image_gets_its_own_uniform_draw():
    """2,000 identical images, p = (0.5, 0.5), true class 0 (nothing ranked above it): the
    randomised APS scores u * 0.5 are uniform on [0, 0.5], so their 80% quantile is near 0.4."""
    n = 2000
    p = np.full((n, 2), 0.5)
    q, _ = calibrate_and_predict("aps", p, np.zeros(n, dtype=int), p[:10], alpha=0.2, seed=1)
    assert q == pytest.approx(0.4, abs=0.02)


def test_test_draws_are_independent_of_the_calibration_draws():
    """Calibrating and testing on the same images: were the test draws those of calibration,
    every test score would equal its calibration score, and exactly k of the n would be covered
    (k = ceil((n + 1)(1 - alpha))). Independent draws cover a number that varies around it."""
    rng = np.random.default_rng(6)
    n, alpha = 600, 0.2
    p = rng.dirichlet(np.ones(5), size=n)
    y = rng.integers(0, 5, n)
    covered = []
    for seed in range(5):
        _, sets = calibrate_and_predict("aps", p, y, p, alpha=alpha, seed=seed)
        covered.append(int(sets[np.arange(n), y].sum()))
    k = math.ceil((n + 1) * (1 - alpha))
    # identical draws would give k, or k - 1 when rounding puts the k-th score just above q
    assert max(abs(c - k) for c in covered) > 2
    assert all(abs(c - k) < 60 for c in covered)


# ---------------------------------------------------------------------------------------------
# class-conditional (classwise) thresholds


def test_method_names_split_into_score_and_classwise():
    assert score_of("lac") == ("lac", False) and score_of("aps") == ("aps", False)
    assert score_of("lac_classwise") == ("lac", True) and score_of("aps_classwise") == ("aps", True)
    for bad in ("raps_classwise", "classwise", "_classwise", "LAC"):
        with pytest.raises(ValueError, match=rf"^unknown conformal method {re.escape(repr(bad))}; use one of "):
            score_of(bad)


def test_class_quantiles_by_hand():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.15, 0.25])
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    q = class_quantiles(s, y, 3, 0.1)
    # class 0: 9 scores, ceil(10 * 0.9) = 9 -> the largest; class 1: 2 scores, too few; class 2: none
    np.testing.assert_array_equal(q, [0.9, np.inf, np.inf])
    # alpha 0.5: class 0 ceil(10 * 0.5) = 5 -> 0.5; class 1 ceil(3 * 0.5) = 2 -> 0.25
    np.testing.assert_array_equal(class_quantiles(s, y, 2, 0.5), [0.5, 0.25])


def test_per_class_thresholds_in_sets():
    p = np.array([[0.5, 0.25, 0.25]])
    # LAC: class c is in the set when 1 - p_c <= q_c; scores 0.5, 0.75, 0.75
    np.testing.assert_array_equal(prediction_sets("lac", p, np.array([0.5, 0.7, 0.8])), [[True, False, True]])
    # APS (u = 1): scores in the ranking 0.5 (class 0), 0.75 (class 1), 1.0 (class 2)
    np.testing.assert_array_equal(prediction_sets("aps", p, np.array([0.5, 0.8, 0.9])), [[True, True, False]])
    # per-class thresholds need not give a prefix of the ranking
    np.testing.assert_array_equal(prediction_sets("aps", p, np.array([0.4, 0.8, 1.0])), [[False, True, True]])
    # a scalar threshold is every class's
    np.testing.assert_array_equal(prediction_sets("lac", p, 0.75), prediction_sets("lac", p, np.full(3, 0.75)))


def test_classwise_end_to_end_by_hand():
    # class 0: 9 calibration images with p_0 = 0.1 .. 0.9 -> LAC scores 0.9 .. 0.1; alpha 0.1 -> q_0 = 0.9
    # class 1: 9 images with p_1 = 0.95 -> scores 0.05 (all equal) -> q_1 = 0.05
    p0 = np.arange(1, 10) / 10
    cal = np.r_[np.c_[p0, 1 - p0], np.tile([[0.05, 0.95]], (9, 1))]
    cal_y = np.r_[np.zeros(9, int), np.ones(9, int)]
    test = np.array([[0.2, 0.8], [0.96, 0.04]])
    q, sets = calibrate_and_predict("lac_classwise", cal, cal_y, test, alpha=0.1)
    np.testing.assert_allclose(q, [0.9, 0.05])
    # row 1: class 0 score 0.8 <= 0.9 in, class 1 score 0.2 > 0.05 out; row 2: 0.04 in, 0.96 out
    np.testing.assert_array_equal(sets, [[True, False], [True, False]])
    with pytest.raises(ValueError, match="^conformal calibration needs at least one calibration "):
        calibrate_and_predict("aps_classwise", np.zeros((0, 2)), np.zeros(0, int), test, alpha=0.1)


# ---------------------------------------------------------------------------------------------
# intervals on coverage


def test_coverage_interval_is_clopper_pearson_over_groups():
    # textbook exact 95% intervals: 5 of 10 -> (0.1871, 0.8129); 0 of 10 -> (0, 0.3085); 10 of 10 -> (0.6915, 1)
    five = np.r_[np.ones(5), np.zeros(5)]
    np.testing.assert_allclose(coverage_interval(five, np.arange(10)), (0.18709, 0.81291), atol=1e-5)
    np.testing.assert_allclose(coverage_interval(np.zeros(10), np.arange(10)), (0.0, 0.30850), atol=1e-5)
    np.testing.assert_allclose(coverage_interval(np.ones(10), np.arange(10)), (0.69150, 1.0), atol=1e-5)
    # 20 images in 10 lesions of two, covered together: the interval of 5 of 10, not of 10 of 20
    np.testing.assert_allclose(coverage_interval(np.repeat(five, 2), np.repeat(np.arange(10), 2)),
                               (0.18709, 0.81291), atol=1e-5)
    low90, high90 = coverage_interval(five, np.arange(10), confidence=0.9)
    assert 0.18709 < low90 < 0.5 < high90 < 0.81291  # 90% is narrower (0.2224, 0.7776)
    np.testing.assert_allclose((low90, high90), (0.22244, 0.77756), atol=1e-5)
    assert all(math.isnan(v) for v in coverage_interval(np.zeros(0), np.zeros(0)))
    # 9 of 10: the upper end is below 1 (0.55498, 0.99747); one image, covered: (0.025, 1)
    np.testing.assert_allclose(coverage_interval(np.r_[np.ones(9), 0.0], np.arange(10)), (0.55498, 0.99747),
                               atol=1e-5)
    np.testing.assert_allclose(coverage_interval(np.ones(1), np.zeros(1)), (0.025, 1.0), atol=1e-9)
    # 1 of 10: the lower end is above 0 (0.00253, 0.44502)
    np.testing.assert_allclose(coverage_interval(np.r_[1.0, np.zeros(9)], np.arange(10)), (0.00253, 0.44502),
                               atol=1e-5)


def test_expected_coverage_range_holds_the_simulated_coverage():
    """Calibrate on n_cal continuous scores, cover n_test more: 95% of such runs must fall in the
    range (it is a 95% beta-binomial range, so a little more, never much less)."""
    rng = np.random.default_rng(12)
    n_cal, n_test, alpha, runs = 40, 60, 0.1, 4000
    low, high = expected_coverage_range(n_cal, n_test, alpha)
    k = math.ceil((n_cal + 1) * (1 - alpha))
    q = np.sort(rng.random((runs, n_cal)), axis=1)[:, k - 1]
    coverage = (rng.random((runs, n_test)) <= q[:, None]).mean(axis=1)
    inside = np.mean((coverage >= low - 1e-12) & (coverage <= high + 1e-12))
    assert 0.94 <= inside <= 0.99
    assert low < 1 - alpha < high
    narrow = expected_coverage_range(n_cal, n_test, alpha, confidence=0.5)
    assert low < narrow[0] <= narrow[1] < high
    for args in ((8, 60, 0.1), (40, 0, 0.1), (0, 60, 0.1)):  # too few to calibrate; nothing to cover
        assert all(math.isnan(v) for v in expected_coverage_range(*args))
    assert not math.isnan(expected_coverage_range(9, 60, 0.1)[0])
    # one calibration image is enough at alpha = 0.5 (rank ceil(2 * 0.5) = 1): test coverage ~ U(0, 1)
    # (discrete uniform on 0..100 covered: the 2.5% and 97.5% points are 2 and 98)
    assert expected_coverage_range(1, 100, 0.5) == (0.02, 0.98)
    one = expected_coverage_range(40, 1, 0.1)  # a single test image: covered or not
    assert one == (0.0, 1.0)


@pytest.mark.parametrize("alpha", [0, 1, 1.5])
def test_min_calibration_images_refuses_alpha_outside_zero_to_one(alpha):
    with pytest.raises(ValueError, match=rf"^evaluation\.conformal\.alpha must be between 0 and 1 \(e\.g\. 0\.1\), "
                                         rf"got {alpha}$"):
        min_calibration_images(alpha)


# Equivalent mutants of conformal.py (no observable change):
# - dtype=np.float64 / np.int64 dropped or None in np.asarray (scores, prediction_sets,
#   conformal_quantile, class_quantiles): probabilities and scores are floats, labels integers.
# - `axis=1` dropped in np.argsort / np.take_along_axis on 2-D arrays: the default is the last
#   axis, which is axis 1; `kind="stable"` -> `kind="STABLE"`: numpy reads it case-insensitively.
# - float("inf") / float("nan") -> float("INF") / float("NAN"): Python reads both.
# - coverage_interval: `covered` as given (booleans) rather than float64: its mean is the same.
# - calibrate_and_predict: the uniforms drawn for LAC too (`... if score == "aps" or True`): LAC
#   ignores u.
# - `axis=1` dropped in np.take_along_axis / np.argsort(order) (2-D: the last axis is 1);
#   qhat's dtype dropped in prediction_sets (compared with floats either way).
# - min_calibration_images: the loop's starting guess lowered ((1 - alpha) * alpha, or - 2):
#   the loop climbs to the same smallest n.
# - coverage_interval: `x <= 1e-9` -> `x < 1e-9`, `x >= g - 1e-9` -> `x > g - 1e-9`: x is a count
#   of groups up to rounding, never within 1e-9 of those ends without being at them.
# - expected_coverage_range: `n_cal <= 0` -> `n_cal < 0`, or `or l > n_cal` -> `and l > n_cal`:
#   a calibration too small for a rank gives nan either way (scipy's beta-binomial with b <= 0).
# Not equivalent, but no property tells it apart: the test draws' stream 2 -> 3 (another stream,
# still independent of the calibration draws': an equally valid random draw).
