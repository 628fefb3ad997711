"""Split-conformal sets: the finite-sample quantile, set membership, exact average coverage on
exchangeable draws, and coverage within sampling error of 1 - alpha on the synthetic set."""

import math

import numpy as np
import pandas as pd
import pytest

from derma_core.config import resolve_config
from derma_core.evaluation import conformal
from derma_core.evaluation.evaluators import EVALUATORS, Reference
from derma_core.interfaces import Predictions, Split
from derma_core.labels import LABELS


def _draws(rng, n, k=7, concentration=0.6):
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
    for c in range(7):
        s = conformal.scores(method, p, np.full(300, c), u)
        assert np.array_equal(sets[:, c], s <= q), c
    if method == "aps":  # APS sets are prefixes of the probability ranking
        order = np.argsort(-p, axis=1, kind="stable")
        ranked = np.take_along_axis(sets, order, axis=1)
        assert (np.diff(ranked.astype(int), axis=1) <= 0).all()


@pytest.mark.parametrize("method", conformal.METHODS)
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


def _synthetic_probabilities():
    """The synthetic set's metadata (5,000 images, lesions of 1-6 images) split by lesion, and a
    logistic regression on what a perfect image model would see (each lesion's drawn appearance,
    atypical lesions included) plus age and dx_type: real, imperfect probabilities."""
    from sklearn.linear_model import LogisticRegression

    from derma_core.data.splits import grouped_split
    from derma_core.data.synthetic import build_metadata

    meta = build_metadata(5000, seed=11)
    split = grouped_split(meta, (0.4, 0.3, 0.3), seed=3)
    rng = np.random.default_rng(0)
    feats = pd.get_dummies(meta[["draw_as", "dx_type"]]).to_numpy(dtype=float)
    age = pd.to_numeric(meta["age"].replace("", np.nan), errors="coerce").fillna(50).to_numpy()[:, None] / 100
    x = np.hstack([feats + rng.normal(0, 0.8, feats.shape), age])
    y = meta["dx"].map({l: i for i, l in enumerate(LABELS)}).to_numpy()
    parts = {s: (split == s).to_numpy() for s in ("train", "val", "test")}
    model = LogisticRegression(max_iter=2000).fit(x[parts["train"]], y[parts["train"]])
    probs = np.zeros((len(meta), 7))
    probs[:, model.classes_] = model.predict_proba(x)
    return meta, parts, probs, y


def test_coverage_on_the_synthetic_set_is_within_sampling_error_of_the_target():
    meta, parts, probs, y = _synthetic_probabilities()
    alpha = 0.1
    config = resolve_config(None, overrides=[f"evaluation.conformal.alpha={alpha}", "evaluation.subgroups.min_count=50"])

    def split_of(name):
        m = parts[name]
        frame = pd.DataFrame({"id": meta["image_id"][m].to_numpy(), "label": meta["dx"][m].to_numpy(),
                              "lesion_id": meta["lesion_id"][m].to_numpy(), "image_path": "x.jpg",
                              "sex": meta["sex"][m].to_numpy(), "age": meta["age"][m].to_numpy()})
        pr = probs[m]
        return Split(name, frame, "."), Predictions(frame["id"].tolist(), [LABELS[i] for i in pr.argmax(1)], pr)

    (val, pv), (test, pt) = split_of("val"), split_of("test")
    result = EVALUATORS["conformal"](test, pt, config, reference=Reference(val, pv))
    n_cal, n_test = len(val), len(test)
    # sd of test coverage: binomial on the test images plus the spread of the calibrated quantile
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n_test + 1 / n_cal))
    for method in conformal.METHODS:
        cov = result.metrics[f"conformal_{method}_coverage"]
        assert abs(cov - (1 - alpha)) < 4 * sd + 1 / (n_cal + 1), (method, cov, sd)
        assert 1 <= result.metrics[f"conformal_{method}_mean_set_size"] < 7  # informative, not everything
    assert 0.8 < result.metrics["conformal_lac_coverage_sex_male"] <= 1.0
    assert set(result.tables["conformal_per_class"]["label"]) == set(LABELS)
    assert result.params["conformal_alpha"] == alpha
    # a larger alpha gives smaller sets and lower coverage
    loose = resolve_config(None, overrides=["evaluation.conformal.alpha=0.3"])
    r2 = EVALUATORS["conformal"](test, pt, loose, reference=Reference(val, pv))
    assert r2.metrics["conformal_lac_mean_set_size"] < result.metrics["conformal_lac_mean_set_size"]
    assert abs(r2.metrics["conformal_lac_coverage"] - 0.7) < 4 * math.sqrt(0.21 * (1 / n_test + 1 / n_cal)) + 1 / n_cal


def test_conformal_is_off_without_val_predictions_or_when_disabled():
    frame = pd.DataFrame({"id": ["a", "b"], "label": ["nv", "mel"], "lesion_id": ["a", "b"], "image_path": "x"})
    split = Split("test", frame, ".")
    pr = np.full((2, 7), 1 / 7)
    preds = Predictions(["a", "b"], ["nv", "nv"], pr)
    assert EVALUATORS["conformal"](split, preds, resolve_config(None)).metrics == {}
    off = resolve_config(None, overrides=["evaluation.conformal.alpha=false"])
    assert EVALUATORS["conformal"](split, preds, off, reference=Reference(split, preds)).metrics == {}
