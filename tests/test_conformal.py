"""Split-conformal sets: the finite-sample quantile, set membership, exact average coverage on
exchangeable draws, and coverage within sampling error of 1 - alpha on the synthetic set."""

import math

import numpy as np
import pandas as pd
import pytest

from derma_core.config import resolve_config
from derma_core.evaluation import conformal
from derma_core.data.datasets.ham10000 import CLASS_COUNTS, LABEL_SET as HAM
from derma_core.evaluation.evaluators import EVALUATORS
from derma_core.interfaces import EvalInput, EvalReference, Predictions, Split
from derma_core.testing import tiny_descriptor

LABELS = HAM.codes
K = len(LABELS)


def _conformal(split, preds, config, reference=None):
    inputs = EvalInput(split, preds, config, dataset=tiny_descriptor(), reference=reference)
    return EVALUATORS["conformal"].evaluator(inputs)


def _draws(rng, n, k=K, concentration=0.6):
    p = rng.dirichlet(np.full(k, concentration), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)  # y ~ p: exchangeable, calibrated
    return p, np.minimum(y, k - 1)


def test_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 20) / 20.0  # n = 19
    # ceil(20 * 0.9) = 18 -> the 18th smallest
    assert conformal.conformal_quantile(scores, 0.1) == pytest.approx(18 / 20)
    assert conformal.conformal_quantile(scores[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5
    with pytest.raises(ValueError, match="alpha"):
        conformal.conformal_quantile(scores, 1.5)


@pytest.mark.parametrize("method", conformal.METHODS)
def test_a_class_is_in_the_set_exactly_when_its_score_is_below_q(method):
    rng = np.random.default_rng(1)
    p, _ = _draws(rng, 300)
    u = rng.random(300)
    q = 0.8
    sets = conformal.prediction_sets(method, p, q, u)
    for c in range(K):
        s = conformal.scores(method, p, np.full(300, c), u)
        assert np.array_equal(sets[:, c], s <= q), c
    if method == "aps":  # APS sets are prefixes of the probability ranking
        order = np.argsort(-p, axis=1, kind="stable")
        ranked = np.take_along_axis(sets, order, axis=1)
        assert (np.diff(ranked.astype(int), axis=1) <= 0).all()


@pytest.mark.parametrize("method", conformal.SCORES)
def test_average_coverage_is_exactly_the_finite_sample_level(method):
    """With n = 20 calibration points the guarantee is coverage ceil(21 * 0.9) / 21 = 19/21 on
    average over calibration draws (continuous scores). The version without the +1 correction
    would average 18/21 = 0.857 and fail."""
    rng = np.random.default_rng(7)
    trials, n_cal, n_test, alpha = 1500, 20, 40, 0.1
    cover = np.empty(trials)
    for t in range(trials):
        p, y = _draws(rng, n_cal + n_test)
        _, sets = conformal.calibrate_and_predict(method, p[:n_cal], y[:n_cal], p[n_cal:], alpha, seed=t)
        cover[t] = sets[np.arange(n_test), y[n_cal:]].mean()
    se = cover.std(ddof=1) / math.sqrt(trials)
    assert abs(cover.mean() - 19 / 21) < 4 * se + 1e-3, (cover.mean(), se)


@pytest.mark.parametrize("method", ["lac_classwise", "aps_classwise"])
def test_classwise_coverage_is_exactly_the_finite_sample_level_in_every_class(method):
    """Three classes of very different difficulty, 20 calibration images of each: the classwise
    threshold of class c uses only class c's scores, so each class's coverage averages
    ceil(21 * 0.9) / 21 = 19/21 over calibration draws, the hard class included."""
    rng = np.random.default_rng(3)
    trials, n_per, n_test, alpha, k = 1500, 20, 30, 0.1, 3
    sharpness = np.array([3.0, 1.0, 0.2])  # class 0 easy, class 2 nearly uninformative
    cover = np.empty((trials, k))
    for t in range(trials):
        y = np.repeat(np.arange(k), n_per + n_test)
        z = rng.normal(0, 1, (len(y), k)) + np.eye(k)[y] * sharpness[y][:, None]
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        cal = np.concatenate([np.arange(c * (n_per + n_test), c * (n_per + n_test) + n_per) for c in range(k)])
        test = np.setdiff1d(np.arange(len(y)), cal)
        q, sets = conformal.calibrate_and_predict(method, p[cal], y[cal], p[test], alpha, seed=t)
        assert q.shape == (k,) and np.isfinite(q).all()
        hit = sets[np.arange(len(test)), y[test]]
        cover[t] = [hit[y[test] == c].mean() for c in range(k)]
    se = cover.std(axis=0, ddof=1) / math.sqrt(trials)
    assert (np.abs(cover.mean(axis=0) - 19 / 21) < 4 * se + 1e-3).all(), (cover.mean(axis=0), se)


def test_a_class_with_too_few_calibration_images_is_in_every_set():
    """alpha = 0.1 needs 9 images of a class (n >= 1/alpha - 1); with 8 its threshold is infinite."""
    assert conformal.min_calibration_images(0.1) == 9 and conformal.min_calibration_images(0.05) == 19
    assert conformal.min_calibration_images(0.5) == 1 and conformal.min_calibration_images(0.3) == 3
    for alpha in (0.1, 0.05, 0.2, 0.3, 0.5, 0.01):
        n = conformal.min_calibration_images(alpha)
        assert math.isfinite(conformal.conformal_quantile(np.arange(n) / n, alpha))
        if n > 1:
            assert conformal.conformal_quantile(np.arange(n - 1) / n, alpha) == math.inf
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=40)
    y = np.r_[np.zeros(20, int), np.ones(12, int), np.full(8, 2)]
    q, sets = conformal.calibrate_and_predict("lac_classwise", p, y, p, 0.1)
    assert np.isfinite(q[:2]).all() and q[2] == math.inf and sets[:, 2].all()
    assert conformal.too_small_message(9, 0.1) is None
    assert conformal.too_small_message(8, 0.1) == (
        "the calibration split has 8 images, fewer than the 9 that conformal sets at alpha = 0.1 need (n >= 1/alpha "
        "- 1), so every set holds every class: enlarge it (evaluation.calibration_split.share or a larger val split) "
        "or raise evaluation.conformal.alpha")


def _synthetic_probabilities(n=5000, seed=11):
    """A HAM10000-like set: lesions of 1-6 images in HAM10000's class proportions, about 1.5%
    of them looking like another class, with sex and age; split by lesion 40/30/30. The
    probabilities come from a logistic regression on what a perfect image model would see (each
    lesion's appearance, with noise) plus age: real, imperfect probabilities."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    share = np.array([CLASS_COUNTS[c] for c in LABELS], dtype=float)
    rows, lesion = [], 0
    while len(rows) < n:
        y = int(rng.choice(K, p=share / share.sum()))
        look = y if rng.random() > 0.15 else int(rng.integers(K))
        sex = str(rng.choice(["male", "female"]))
        age = float(np.clip(rng.normal(50 + 3 * y, 15), 5, 85))
        part = str(rng.choice(["train", "val", "test"], p=[0.4, 0.3, 0.3]))
        for _ in range(int(rng.integers(1, 7))):
            rows.append({"image_id": f"ISIC_{len(rows):07d}", "lesion_id": f"HAM_{lesion:07d}", "y": y,
                         "look": look, "sex": sex, "age": age, "part": part})
        lesion += 1
    meta = pd.DataFrame(rows[:n])
    x = np.hstack([np.eye(K)[meta["look"]] + rng.normal(0, 0.8, (len(meta), K)), meta[["age"]].to_numpy() / 100])
    y = meta["y"].to_numpy()
    parts = {s: (meta["part"] == s).to_numpy() for s in ("train", "val", "test")}
    model = LogisticRegression(max_iter=2000).fit(x[parts["train"]], y[parts["train"]])
    probs = np.zeros((len(meta), K))
    probs[:, model.classes_] = model.predict_proba(x)
    return meta, parts, probs, y


def test_coverage_on_a_synthetic_set_is_within_sampling_error_of_the_target():
    meta, parts, probs, y = _synthetic_probabilities()
    alpha = 0.1
    config = resolve_config(None, overrides=[f"evaluation.conformal.alpha={alpha}", "evaluation.subgroups.min_count=50"])

    def split_of(name):
        m = parts[name]
        frame = pd.DataFrame({"id": meta["image_id"][m].to_numpy(), "label": [LABELS[i] for i in y[m]],
                              "group_id": meta["lesion_id"][m].to_numpy(), "image_path": "x.jpg",
                              "sex": meta["sex"][m].to_numpy(), "age": meta["age"][m].to_numpy()})
        pr = probs[m]
        return (Split(name, frame, ".", label_set=HAM),
                Predictions(frame["id"].tolist(), [LABELS[i] for i in pr.argmax(1)], pr, label_set=HAM))

    (val, pv), (test, pt) = split_of("val"), split_of("test")
    result = _conformal(test, pt, config, EvalReference(val, pv))
    n_cal, n_test = len(val), len(test)
    # sd of test coverage: binomial on the test images plus the spread of the calibrated quantile
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n_test + 1 / n_cal))
    for method in conformal.METHODS:
        cov = result.metrics[f"conformal_{method}_coverage"]
        assert abs(cov - (1 - alpha)) < 4 * sd + 1 / (n_cal + 1), (method, cov, sd)
        assert 1 <= result.metrics[f"conformal_{method}_mean_set_size"] < K  # informative, not everything
    assert 0.8 < result.metrics["conformal_lac_coverage_sex_male"] <= 1.0
    assert "conformal_lac_coverage_age_45_59" in result.metrics  # HAM10000's banded age column
    assert set(result.tables["conformal_per_class"]["label"]) == set(LABELS)
    assert result.params["conformal_alpha"] == alpha
    # a larger alpha gives smaller sets and lower coverage
    loose = resolve_config(None, overrides=["evaluation.conformal.alpha=0.3"])
    r2 = _conformal(test, pt, loose, EvalReference(val, pv))
    assert r2.metrics["conformal_lac_mean_set_size"] < result.metrics["conformal_lac_mean_set_size"]
    assert abs(r2.metrics["conformal_lac_coverage"] - 0.7) < 4 * math.sqrt(0.21 * (1 / n_test + 1 / n_cal)) + 1 / n_cal


def test_conformal_is_off_without_val_predictions_or_when_disabled():
    frame = pd.DataFrame({"id": ["a", "b"], "label": ["nv", "mel"], "group_id": ["a", "b"], "image_path": "x"})
    split = Split("test", frame, ".", label_set=HAM)
    pr = np.full((2, K), 1 / K)
    preds = Predictions(["a", "b"], ["nv", "nv"], pr, label_set=HAM)
    assert _conformal(split, preds, resolve_config(None)).metrics == {}
    off = resolve_config(None, overrides=["evaluation.conformal.alpha=false"])
    assert _conformal(split, preds, off, EvalReference(split, preds)).metrics == {}
