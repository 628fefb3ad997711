"""pytest fixtures shared by derma's tests and any plugin package's tests.

A ``conftest.py`` imports the ones it wants by name (pytest registers fixtures found in a
conftest's namespace), e.g.::

    from derma_core.testing.fixtures import few_threads, mlflow_store, synthetic_cache  # noqa: F401

``few_threads`` is autouse: importing it caps torch's threads for every test under that conftest.
Needs pytest (``pip install -e .[test]``); :mod:`derma_core.testing` itself does not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping

import pytest

#: The tiny synthetic set plugin tests share (32 px keeps ResNet-18 and the tiny encoders cheap on 2 cores).
TINY_SYNTHETIC = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 420, "data.synthetic_seed": 3}


def tiny_config(plugin: str, cache_dir: str | Path, **overrides) -> dict:
    """The resolved config of ``plugin`` on :data:`TINY_SYNTHETIC` in ``cache_dir``: quiet, CPU, no bootstrap.
    Dotted ``overrides`` (``**{"train.epochs": 3}``) win."""
    from ..config import resolve_config

    values = {**TINY_SYNTHETIC, "data.cache_dir": str(cache_dir), "evaluation.bootstrap": 0, "quiet": True,
              "device": "cpu"}
    values.update(overrides)
    return resolve_config(plugin, values=values)


@contextlib.contextmanager
def dataset_sources(sources: Mapping[str, Callable[[dict], object]], name: str = "test-dataset-sources") -> Iterator:
    """Registers in-memory dataset sources (``data.source=<key>``) for the duration of the block."""
    from .. import hookimpl, plugins

    class _Sources:
        @hookimpl
        def register_datasets(self, register):
            for key, factory in sources.items():
                register(key, factory)

    plugin = _Sources()
    plugins.load_plugins()
    plugins.pm.register(plugin, name=name)
    try:
        yield
    finally:
        plugins.pm.unregister(plugin)


@pytest.fixture(autouse=True)
def few_threads():
    """Other test processes share the machine: two torch threads at most (also fixes CPU determinism)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """A cache folder holding :data:`TINY_SYNTHETIC`, generated once per test session."""
    from ..runner import load_dataset

    folder = tmp_path_factory.mktemp("derma-cache")
    load_dataset(tiny_config("prior", folder))
    return folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """``DERMA_MODEL_CACHE`` for the session, where tiny models are built once (an existing one is reused)."""
    env = os.environ.get("DERMA_MODEL_CACHE")
    if env:
        return Path(env)
    path = tmp_path_factory.mktemp("models")
    os.environ["DERMA_MODEL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite database, made once: creating one costs seconds."""
    from ..tracking import create_store

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    create_store(f"sqlite:///{path}")
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, mlflow_template_db) -> str:
    """A fresh SQLite MLflow store in tmp_path (a copy of the template); the cwd moves there so
    ``mlruns/`` lands there too. Returns its URI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERMA_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copy(mlflow_template_db, tmp_path / "mlruns" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
