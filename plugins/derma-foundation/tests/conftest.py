"""Fixtures of the foundation plugin's tests: the shared ones (derma_core.testing.fixtures: two torch
threads, the tiny synthetic set) and this package's own (a module-wide store, configs, the prior's floor)."""

from __future__ import annotations

import os

import pytest

from derma_core.testing.fixtures import few_threads, synthetic_cache, tiny_config  # noqa: F401 (fixtures)

os.environ.setdefault("MPLBACKEND", "Agg")

#: What every foundation test run logs: its own experiment, no model artifact.
FOUNDATION = {"tracking.experiment": "foundation-test", "tracking.log_model": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store (the local default layout) for the module; the cwd moves there."""
    root = tmp_path_factory.mktemp("foundation-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DERMA_MLRUNS", str(root / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "mlruns").mkdir()
        yield root


@pytest.fixture
def make_config(synthetic_cache):
    """``make_config(plugin, **overrides)``: ``tiny_config`` of ``plugin`` on the shared tiny set."""
    return lambda plugin, **overrides: tiny_config(plugin, synthetic_cache, **{**FOUNDATION, **overrides})


@pytest.fixture(scope="session")
def tiny_dataset(synthetic_cache):
    from derma_core.runner import load_dataset

    return load_dataset(tiny_config("prior", synthetic_cache, **FOUNDATION))


@pytest.fixture(scope="session")
def prior_macro_f1(tiny_dataset) -> float:
    """``prior``'s test macro-F1 on the tiny set: the floor every trained backend must beat."""
    from derma_core.evaluation.metrics import classification_metrics
    from derma_core.prior import PriorClassifier
    from derma_core.testing import fit_predict

    preds = fit_predict(PriorClassifier({}), tiny_dataset)
    return classification_metrics(tiny_dataset["test"].y, preds.y_pred, len(tiny_dataset.label_set))["macro_f1"]
