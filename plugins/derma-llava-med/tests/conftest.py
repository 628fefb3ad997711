"""Shared fixtures of the LLaVA plugin's tests: the tiny-random model, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """DERMA_MODEL_CACHE for the session (reuses an existing cache when the env var is set)."""
    env = os.environ.get("DERMA_MODEL_CACHE")
    if env:
        return Path(env)
    path = tmp_path_factory.mktemp("models")
    os.environ["DERMA_MODEL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny(model_cache):
    """The tiny-random model, loaded in fp32 on the CPU."""
    from derma_llava_med.loading import load_llava

    return load_llava({"model": {"name": "tiny-random", "allow_random": True}, "precision": "fp32"}, "cpu")


@pytest.fixture(scope="session")
def images():
    """Five small images of different sizes and aspect ratios (pad-to-square matters)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(30, 40), (45, 60), (64, 64), (20, 50), (50, 33)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store in tmp_path; the cwd moves there so mlruns/ lands there too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERMA_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture
def tiny_source():
    """Registers an in-memory ``tiny`` dataset source (data.source=tiny) for one test."""
    from derma_core import hookimpl, plugins
    from derma_core.testing import make_tiny_dataset

    class TinySource:
        @hookimpl
        def register_datasets(self, register):
            register("tiny", lambda config: make_tiny_dataset(n_train=14, n_val=7, n_test=9, size=24))

    plugin = TinySource()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-llava-tiny-source")
    yield "tiny"
    plugins.pm.unregister(plugin)
