"""Fixtures of the foundation plugin's tests: a tiny synthetic set, an isolated MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

#: The tiny synthetic set every test shares (32 px keeps the tiny encoders cheap on 2 cores).
TINY = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 420, "data.synthetic_seed": 3}


@pytest.fixture(autouse=True)
def _few_threads():
    """Other test processes share the machine: two threads at most (also fixes CPU determinism)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """A cache folder holding the tiny synthetic set, generated once per test session."""
    from derma_core.runner import load_dataset

    folder = tmp_path_factory.mktemp("derma-cache")
    load_dataset(tiny_config("prior", folder))
    return folder


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


def tiny_config(plugin: str, cache_dir: Path, **overrides) -> dict:
    """The resolved config of ``plugin`` on the tiny synthetic set, quiet, no bootstrap."""
    from derma_core.config import resolve_config

    values = {**TINY, "data.cache_dir": str(cache_dir), "evaluation.bootstrap": 0, "quiet": True, "device": "cpu",
              "tracking.experiment": "foundation-test", "tracking.log_model": False}
    values.update(overrides)
    return resolve_config(plugin, values=values)


@pytest.fixture
def make_config(synthetic_cache):
    """``make_config(plugin, **overrides)``: :func:`tiny_config` on the shared tiny set."""
    return lambda plugin, **overrides: tiny_config(plugin, synthetic_cache, **overrides)


@pytest.fixture(scope="session")
def tiny_dataset(synthetic_cache):
    from derma_core.runner import load_dataset

    return load_dataset(tiny_config("prior", synthetic_cache))


@pytest.fixture(scope="session")
def prior_macro_f1(tiny_dataset) -> float:
    """``prior``'s test macro-F1 on the tiny set: the floor every trained backend must beat."""
    from derma_core.prior import PriorClassifier
    from derma_core.evaluation.metrics import classification_metrics
    from derma_core.testing import fit_predict

    preds = fit_predict(PriorClassifier({}), tiny_dataset)
    return classification_metrics(tiny_dataset["test"].y, preds.y_pred, len(tiny_dataset.label_set))["macro_f1"]
