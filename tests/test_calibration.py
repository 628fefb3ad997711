"""Post-hoc calibration: temperature / vector scaling fitted on val only, classwise ECE, and
the runner's val-prediction step (on for test runs, off for tuning's val runs)."""

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.calibration import calibration_curve

from derma_core.cli import cli
from derma_core.config import resolve_config
from derma_core.evaluation import calibration
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation.evaluators import EVALUATORS, wants_reference
from derma_core.interfaces import EvalInput, EvalReference, Predictions, Split
from derma_core.testing import tiny_descriptor

LABELS = HAM.codes
K = len(LABELS)


def _overconfident(rng, n, sharpen=2.0):
    """Labels drawn from softmax(z); the model reports softmax(sharpen * z): true temperature = sharpen."""
    z = rng.normal(0, 1.5, size=(n, K))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(true_p, axis=1)).sum(axis=1).clip(0, K - 1)
    reported = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)
    return reported, y


def test_temperature_scaling_recovers_the_true_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    p_val, y_val = _overconfident(rng, 6000)
    p_test, y_test = _overconfident(rng, 4000)
    scaler = calibration.fit_scaler(y_val, p_val, "temperature")
    assert scaler.temperature == pytest.approx(2.0, abs=0.15)
    before = calibration.expected_calibration_error(calibration.reliability_table(y_test, p_test))
    scaled = scaler.apply(p_test)
    after = calibration.expected_calibration_error(calibration.reliability_table(y_test, scaled))
    assert after < before / 2
    assert calibration.nll(y_test, scaled) < calibration.nll(y_test, p_test)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    assert (scaled.argmax(1) == p_test.argmax(1)).all()  # a temperature never changes the ranking


def test_vector_scaling_fits_per_class_weights():
    rng = np.random.default_rng(1)
    p_val, y_val = _overconfident(rng, 5000)
    scaler = calibration.fit_scaler(y_val, p_val, "vector")
    assert scaler.weights.shape == (K,) and scaler.bias.shape == (K,)
    np.testing.assert_allclose(scaler.weights, 0.5, atol=0.08)  # = 1 / T for every class here
    assert calibration.nll(y_val, scaler.apply(p_val)) < calibration.nll(y_val, p_val)
    with pytest.raises(ValueError, match="temperature or vector"):
        calibration.fit_scaler(y_val, p_val, "platt")


def test_classwise_ece_matches_sklearn_binning():
    rng = np.random.default_rng(2)
    p, y = _overconfident(rng, 800)
    expected = []
    for c in range(K):
        pos = (y == c).astype(int)
        frac, mean = calibration_curve(pos, p[:, c], n_bins=15, strategy="uniform")
        edges = np.linspace(0, 1, 16)
        counts = np.bincount(np.searchsorted(edges[1:-1], p[:, c]), minlength=15)
        counts = counts[counts > 0]
        expected.append(np.sum(counts / len(y) * np.abs(frac - mean)))
    assert calibration.classwise_ece(y, p) == pytest.approx(np.mean(expected))


def _split_and_preds(name, p, y):
    ids = [f"{name}{i}" for i in range(len(y))]
    frame = pd.DataFrame({"id": ids, "label": [LABELS[i] for i in y], "group_id": ids, "image_path": "x.jpg"})
    return (Split(name, frame, ".", label_set=HAM),
            Predictions(ids, [LABELS[i] for i in p.argmax(1)], p, label_set=HAM))


def _calibrate(split, preds, config, reference=None):
    inputs = EvalInput(split, preds, config, dataset=tiny_descriptor(), reference=reference)
    return EVALUATORS["calibration"].evaluator(inputs)


def test_the_evaluated_split_never_enters_the_fit():
    rng = np.random.default_rng(3)
    val, pv = _split_and_preds("val", *_overconfident(rng, 1500))
    p_test, y_test = _overconfident(rng, 500)
    test, pt = _split_and_preds("test", p_test, y_test)
    shuffled, _ = _split_and_preds("test", p_test, rng.permutation(y_test))
    config = resolve_config(None)
    a = _calibrate(test, pt, config, EvalReference(val, pv))
    b = _calibrate(shuffled, pt, config, EvalReference(val, pv))
    assert a.params["calibration_temperature"] == b.params["calibration_temperature"]  # test labels unused
    assert a.params["calibration_temperature"] == pytest.approx(2.0, abs=0.3)
    assert a.metrics["calibrated_ece"] < a.metrics["classwise_ece"] * 10  # present and finite
    assert "calibrated_reliability_diagram" in a.figures and "calibrated_reliability" in a.tables
    val2, pv2 = _split_and_preds("val", *_overconfident(rng, 1500, sharpen=1.0))
    c = _calibrate(test, pt, config, EvalReference(val2, pv2))
    assert c.params["calibration_temperature"] == pytest.approx(1.0, abs=0.2)  # the val data drive it
    none = _calibrate(test, pt, config)  # no val predictions: before-metrics only
    assert "calibrated_ece" not in none.metrics and "classwise_ece" in none.metrics


def test_wants_reference_follows_the_config():
    config = resolve_config(None)
    assert wants_reference(config, "test") and not wants_reference(config, "val")
    off = resolve_config(None, overrides=["evaluation.calibrate=false", "evaluation.conformal.alpha=false"])
    assert not wants_reference(off, "test")
    only = resolve_config(None, overrides=["evaluation.evaluators=[classification]"])
    assert not wants_reference(only, "test")


def test_a_tuning_run_on_val_skips_the_val_fits(mlflow_store, tiny_source):
    """evaluation.split=val (what tuning does): no val predictions are made for calibration or
    conformal sets, since val cannot be both the calibration and the evaluated split. (A test
    split run logging them is checked in test_report.py.)"""
    args = ["run", "--plugin", "prior", "--dataset", "tiny", "--tracking-uri", mlflow_store, "--quiet",
            "-o", "evaluation.bootstrap=20", "-o", "evaluation.split=val"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(mlflow_store)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert "calibration_temperature" not in run.data.params and "conformal_alpha" not in run.data.params
    m = run.data.metrics
    assert "val_conformal_lac_coverage" not in m and "val_calibrated_ece" not in m
    assert "val_selective_aurc" in m and "val_classwise_ece" in m
