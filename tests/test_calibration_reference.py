"""Calibration (derma_core/evaluation/calibration.py) against worked examples, slow references
written from the definitions, and data whose true calibration map is known:

* the reliability table and ECE on a hand-binned case (right edges inclusive, the top bin
  included) and against scikit-learn's ``calibration_curve`` binning;
* classwise ECE against a per-class, per-bin loop (Kull et al., 2019);
* temperature scaling against a dense grid search of the validation NLL, inside its bounds;
* vector scaling on labels drawn with a known per-class bias far from 0, so a bias of the wrong
  sign cannot fit (the older test's data have a true bias of about 0);
* a probability of exactly 0 keeps every log-likelihood finite.

Mutation testing (`python scripts/mutation.py derma_core/evaluation/calibration.py`, see
docs/testing.md): mutants judged equivalent (no observable change) are listed in a comment at
the end of this module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from derma_core.evaluation.calibration import (
    DEFAULT_BINS,
    Scaler,
    classwise_ece,
    expected_calibration_error,
    fit_scaler,
    nll,
    reliability_table,
    top_label,
)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _draw(rng, p):
    """One label per row drawn from the row's probabilities."""
    return (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(0, p.shape[1] - 1)


# ---------------------------------------------------------------------------------------------
# reliability table and ECE

# Two classes, 4 bins with edges 0, .25, .5, .75, 1 (right edges inclusive):
#   probabilities   arg-max  confidence  true  correct  bin
#   [0.5,  0.5 ]    0        0.5         0     1        1  (0.5 is the right edge of bin 1)
#   [0.75, 0.25]    0        0.75        1     0        2
#   [0.2,  0.8 ]    1        0.8         1     1        3
#   [1.0,  0.0 ]    0        1.0         0     1        3  (the top bin holds 1.0)
#   [0.4,  0.6 ]    1        0.6         0     0        2
# bin 0 empty; bin 1: 1 image, conf .5, acc 1; bin 2: 2 images, conf .675, acc 0;
# bin 3: 2 images, conf .9, acc 1. ECE = 1/5 * .5 + 2/5 * .675 + 2/5 * .1 = 0.41
P_HAND = np.array([[0.5, 0.5], [0.75, 0.25], [0.2, 0.8], [1.0, 0.0], [0.4, 0.6]])
Y_HAND = np.array([0, 1, 1, 0, 0])


def test_top_label_is_the_arg_max_and_whether_it_is_right():
    confidence, correct = top_label(Y_HAND, P_HAND)
    np.testing.assert_allclose(confidence, [0.5, 0.75, 0.8, 1.0, 0.6])
    np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0, 1.0, 0.0])
    assert correct.dtype == np.float64


def test_reliability_table_worked_example():
    table = reliability_table(Y_HAND, P_HAND, n_bins=4)
    assert list(table.columns) == ["bin_low", "bin_high", "count", "confidence", "accuracy"]
    np.testing.assert_allclose(table["bin_low"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(table["bin_high"], [0.25, 0.5, 0.75, 1.0])
    assert table["count"].tolist() == [0, 1, 2, 2]
    assert table["count"].dtype == np.int64
    np.testing.assert_allclose(table["confidence"], [np.nan, 0.5, 0.675, 0.9])
    np.testing.assert_allclose(table["accuracy"], [np.nan, 1.0, 0.0, 1.0])
    assert expected_calibration_error(table) == pytest.approx(0.41)


def test_the_top_bin_holds_confidences_up_to_one():
    p = np.array([[0.999, 0.001], [1.0, 0.0], [0.97, 0.03], [0.6, 0.4]])
    table = reliability_table(np.array([0, 0, 1, 0]), p)
    assert len(table) == DEFAULT_BINS == 15
    assert table["count"].iloc[-1] == 3 and table["count"].sum() == 4
    assert table["confidence"].iloc[-1] == pytest.approx((0.999 + 1.0 + 0.97) / 3)
    assert table["accuracy"].iloc[-1] == pytest.approx(2 / 3)


def test_reliability_table_matches_sklearn_binning():
    rng = np.random.default_rng(5)
    p = _softmax(rng.normal(0, 2.0, size=(3000, 5)))
    y = _draw(rng, _softmax(np.log(p) * 0.6))
    confidence, correct = top_label(y, p)
    table = reliability_table(y, p)
    used = table[table["count"] > 0]
    frac, mean = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    np.testing.assert_allclose(used["accuracy"], frac)
    np.testing.assert_allclose(used["confidence"], mean)
    assert table["count"].sum() == 3000 and table["accuracy"].isna().sum() == (table["count"] == 0).sum()


def test_ece_is_the_count_weighted_gap_and_nan_without_images():
    perfect = reliability_table(np.array([0, 0, 1, 1]), np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))
    assert expected_calibration_error(perfect) == 0.0
    empty = reliability_table(np.zeros(0, dtype=int), np.zeros((0, 3)))
    assert empty["count"].sum() == 0 and math.isnan(expected_calibration_error(empty))


# ---------------------------------------------------------------------------------------------
# classwise ECE


def _classwise_reference(y, p, n_bins):
    """Per class, per bin (right edges inclusive): (n_b / n) * |mean p - frequency|, averaged."""
    n, k = p.shape
    total = 0.0
    for c in range(k):
        for b in range(n_bins):
            low, high = b / n_bins, (b + 1) / n_bins
            members = [i for i in range(n) if (low < p[i, c] <= high) or (b == 0 and p[i, c] == 0.0)]
            if members:
                mean_p = sum(p[i, c] for i in members) / len(members)
                freq = sum(y[i] == c for i in members) / len(members)
                total += len(members) / n * abs(mean_p - freq)
    return total / k


def test_classwise_ece_worked_example():
    # three classes, 4 bins; 0.25 / 0.5 / 0.75 sit on bin edges and go to the lower bin
    p = np.array([[0.5, 0.25, 0.25], [0.75, 0.25, 0.0], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    y = np.array([0, 1, 2, 2])
    # class 0: bins {0.1}: |0.1-0| ; {0.3, 0.5}: |0.4-1/2|*2 ; {0.75}: |0.75-0| -> (0.1+0.2+0.75)/4
    # class 1: {0.25, 0.25, 0.1}: |0.6/3-1/3|*3 ; {0.6}: |0.6-0| -> (0.4+0.6)/4
    # class 2: {0.25, 0.0, 0.1 (true)}: |0.35/3-1/3|*3 ; {0.8 (true)}: |0.8-1| -> (0.65+0.2)/4
    expected = ((0.1 + 0.2 + 0.75) / 4 + (0.4 + 0.6) / 4 + (0.65 + 0.2) / 4) / 3
    assert _classwise_reference(y, p, 4) == pytest.approx(expected)
    assert classwise_ece(y, p, n_bins=4) == pytest.approx(expected)


@pytest.mark.parametrize("seed, k, n_bins", [(0, 2, 15), (1, 4, 10), (2, 6, 5)])
def test_classwise_ece_matches_the_definition(seed, k, n_bins):
    rng = np.random.default_rng(seed)
    p = _softmax(rng.normal(0, 1.5, size=(300, k)))
    p[:5] = np.eye(k)[np.arange(5) % k]  # probabilities of exactly 0 and 1
    y = _draw(rng, p)
    assert classwise_ece(y, p, n_bins=n_bins) == pytest.approx(_classwise_reference(y, p, n_bins))
    if n_bins == 15:
        assert classwise_ece(y, p) == pytest.approx(_classwise_reference(y, p, 15))


# ---------------------------------------------------------------------------------------------
# NLL and the log floor


def test_nll_worked_example_and_the_floor_for_a_zero_probability():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    assert nll(np.array([0, 1]), p) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    # a true class given probability exactly 0 costs log(1e12), not infinity
    zero = nll(np.array([1]), np.array([[1.0, 0.0]]))
    assert math.isfinite(zero) and zero == pytest.approx(-math.log(1e-12))


def test_a_zero_probability_does_not_send_the_temperature_to_a_bound():
    """Overconfident probabilities (true temperature 2) rounded to 2 decimals: many become exactly
    0, some of them for the true class. The fit must stay a finite interior optimum (softer than
    for the unrounded data, since a true class at 0 asks for flatter probabilities) and the
    calibrated NLL finite."""
    rng = np.random.default_rng(11)
    z = rng.normal(0, 1.5, size=(3000, 4))
    y = _draw(rng, _softmax(z))
    exact = _softmax(2.0 * z)
    rounded = np.round(exact, 2)
    rounded /= rounded.sum(axis=1, keepdims=True)
    assert (rounded == 0).any() and (rounded[np.arange(3000), y] == 0).any()
    t_exact = fit_scaler(y, exact).temperature
    scaler = fit_scaler(y, rounded)
    assert t_exact == pytest.approx(2.0, abs=0.2)
    assert t_exact < scaler.temperature < 19.0
    assert math.isfinite(nll(y, scaler.apply(rounded)))
    assert nll(y, scaler.apply(rounded)) < nll(y, rounded)


# ---------------------------------------------------------------------------------------------
# applying a fitted map


def test_apply_is_softmax_of_weight_times_log_p_plus_bias():
    vector = Scaler("vector", np.array([1.0, 1.0]), np.array([math.log(2.0), 0.0]))
    # softmax(log 0.5 + log 2, log 0.5) = softmax(0, -log 2) = (2/3, 1/3)
    np.testing.assert_allclose(vector.apply(np.array([[0.5, 0.5]])), [[2 / 3, 1 / 3]])
    weighted = Scaler("vector", np.array([2.0, 1.0]), np.zeros(2))
    # softmax(2 log 0.5, log 0.5) = (0.25, 0.5) / 0.75
    np.testing.assert_allclose(weighted.apply(np.array([[0.5, 0.5]])), [[1 / 3, 2 / 3]])
    assert math.isnan(vector.temperature)


def test_a_temperature_map_has_its_temperature_and_keeps_the_ranking():
    scaler = Scaler("temperature", np.full(3, 0.5), np.zeros(3))
    assert scaler.temperature == 2.0
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    out = scaler.apply(p)
    expected = np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)  # p ** (1 / 2), renormalised
    np.testing.assert_allclose(out, expected)


def test_apply_stays_finite_for_extreme_maps():
    """Weights of 40 on log-probabilities down to log(1e-12) give logits near -1100, whose exp
    underflows to 0 unless the softmax subtracts the row maximum first."""
    p = np.array([[1e-13, 1e-13, 1.0 - 2e-13], [1e-12, 1e-12, 1e-12], [0.5, 0.25, 0.25]])
    out = Scaler("temperature", np.full(3, 40.0), np.zeros(3)).apply(p)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[1], 1 / 3)
    np.testing.assert_allclose(out[0], [0, 0, 1], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# fitting


def _grid_temperature(y, p):
    """The validation-NLL minimiser by grid search over log T in [log 0.05, log 20]: a coarse grid,
    then a fine one between the neighbours of the coarse minimum (steps of about 1e-4 in T / T)."""
    lp = np.log(np.clip(p, 1e-12, 1.0))
    rows = np.arange(len(y))

    def loss(t):
        z = lp / t
        z = z - z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y])

    coarse = np.linspace(np.log(0.05), np.log(20.0), 301)
    i = int(np.argmin([loss(np.exp(g)) for g in coarse]))
    fine = np.linspace(coarse[max(i - 1, 0)], coarse[min(i + 1, 300)], 201)
    return float(np.exp(fine[int(np.argmin([loss(np.exp(g)) for g in fine]))]))


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_is_the_nll_minimiser(true_t):
    """Reported probabilities softmax(true_t * z) for labels drawn from softmax(z): an under-
    (0.5) or over- (2.0) confident model. The fit equals a grid search of the same NLL."""
    rng = np.random.default_rng(int(true_t * 10))
    z = rng.normal(0, 1.2, size=(2500, 4))
    y = _draw(rng, _softmax(z))
    p = _softmax(z * true_t)
    scaler = fit_scaler(y, p)  # temperature is the default method
    assert scaler.method == "temperature"
    assert scaler.temperature == pytest.approx(_grid_temperature(y, p), rel=2e-3)
    assert scaler.temperature == pytest.approx(true_t, rel=0.15)
    np.testing.assert_array_equal(scaler.bias, np.zeros(4))
    np.testing.assert_allclose(scaler.weights, np.full(4, 1.0 / scaler.temperature))


def test_uninformative_probabilities_run_the_temperature_to_its_upper_bound():
    """Labels independent of confident probabilities: the NLL keeps falling as the temperature
    grows, and the fit stops at the largest allowed temperature, 20."""
    rng = np.random.default_rng(3)
    p = _softmax(rng.normal(0, 3.0, size=(2000, 3)))
    y = rng.integers(0, 3, 2000)
    assert fit_scaler(y, p, "temperature").temperature == pytest.approx(20.0, rel=1e-3)


def test_vector_scaling_recovers_a_bias_far_from_zero():
    """Labels drawn from softmax(log p + b) with b = (1.5, 0, -1.5): the model's probabilities
    are right up to a per-class shift. Vector scaling must find w = 1 and b (up to a shared
    constant, which softmax ignores) and bring test NLL and ECE to those of the true map."""
    b_true = np.array([1.5, 0.0, -1.5])
    rng = np.random.default_rng(21)

    def sample(n):
        p = _softmax(rng.normal(0, 1.5, size=(n, 3)))
        truth = _softmax(np.log(p) + b_true)
        return p, _draw(rng, truth), truth

    p_val, y_val, _ = sample(15000)
    p_test, y_test, truth_test = sample(4000)
    scaler = fit_scaler(y_val, p_val, "vector")
    assert scaler.method == "vector"
    np.testing.assert_allclose(scaler.weights, 1.0, atol=0.1)
    np.testing.assert_allclose(scaler.bias - scaler.bias.mean(), b_true - b_true.mean(), atol=0.12)
    calibrated = scaler.apply(p_test)
    assert nll(y_test, calibrated) == pytest.approx(nll(y_test, truth_test), abs=0.01)
    assert nll(y_test, calibrated) < nll(y_test, p_test) - 0.2
    ece = expected_calibration_error(reliability_table(y_test, calibrated))
    assert ece < 0.03 < expected_calibration_error(reliability_table(y_test, p_test))
    assert math.isnan(scaler.temperature)


def test_vector_scaling_recovers_per_class_weights():
    """Labels from softmax(w * log p) with a different w per class."""
    w_true = np.array([0.5, 1.0, 2.0])
    rng = np.random.default_rng(8)
    p = _softmax(rng.normal(0, 1.0, size=(8000, 3)))
    y = _draw(rng, _softmax(np.log(p) * w_true))
    scaler = fit_scaler(y, p, "vector")
    np.testing.assert_allclose(scaler.weights, w_true, atol=0.15)
    np.testing.assert_allclose(scaler.bias - scaler.bias.mean(), 0.0, atol=0.12)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError,
                       match=r"^evaluation\.calibration_method must be temperature or vector, got 'platt'$"):
        fit_scaler(Y_HAND, P_HAND, "platt")



# Equivalent mutants of calibration.py (no observable change; 34 of 355 at the last full run):
# - dtype=np.float64 dropped or None in np.asarray / to_numpy / astype (top_label, classwise_ece,
#   _log_probs, expected_calibration_error, fit_scaler's y_true): the values end up float64
#   (astype(None) is float64; np.clip and divisions promote integers) or are integer labels.
# - _log_probs: the upper clip 1.0 -> 2.0 or None: probabilities never exceed 1.
# - classwise_ece: `count = np.bincount(...)` replaced or its minlength dropped: `count` is unused.
# - expected_calibration_error: float("nan") -> float("NAN"): Python reads both.
# - reliability_table: np.errstate(invalid=..., divide=...) arguments dropped or None: the
#   divisions are by max(count, 1), so nothing is ever invalid or divided by zero.
# - fit_scaler, temperature: `z - z.max(...)` -> `z + z.max(...)`, or the max over the whole
#   array: a constant added to a row cancels in log-sum-exp minus the true logit, and the logits
#   (log p / T with T >= 0.05 and a row maximum >= log(1/K) / 0.05) never underflow; method
#   "bounded" -> None / dropped / "BOUNDED": scipy picks "bounded" when bounds are given and reads
#   the name case-insensitively; options={"xatol": 1e-6} -> None / dropped / a misspelt key:
#   scipy's default xatol (1e-5 on log T) moves T by under 1e-5 relative, below any use.
# - fit_scaler, vector: method "L-BFGS-B" -> None / dropped / "l-bfgs-b": the loss is convex with
#   an exact gradient, and BFGS (scipy's default without bounds) reaches the same optimum; the
#   log floor of the true-class probability 1e-300 -> None: a softmax of finite logits is never 0.
