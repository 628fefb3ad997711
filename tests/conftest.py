"""Shared fixtures: an isolated MLflow store, a tiny in-memory dataset source, real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import derma_core
from derma_core import hookimpl, plugins
from derma_core.interfaces import Dataset, Split
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset  # noqa: F401 (re-exported for tests)

os.environ.setdefault("MPLBACKEND", "Agg")


def shared_data_dir() -> Path:
    """../shared/data next to the repository (DERMA_SHARED_DATA overrides)."""
    env = os.environ.get("DERMA_SHARED_DATA")
    return Path(env) if env else Path(derma_core.__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "ham10000" / "HAM10000_metadata.csv").exists():
        pytest.skip(f"real HAM10000 files not found at {path} (set DERMA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite database, made once: creating one costs seconds."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _mlflow_template_db) -> str:
    """A fresh SQLite MLflow store in tmp_path; the cwd moves there so mlruns/ lands there too."""
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERMA_MLRUNS", str(tmp_path / "mlruns"))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").mkdir()
    shutil.copy(_mlflow_template_db, tmp_path / "mlruns" / "mlflow.db")
    return uri


class TinyDatasetPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("tiny", lambda config: make_tiny_dataset())
        register("tiny3", lambda config: make_tiny_dataset(name="tiny3", label_set=THREE_CLASSES, learnable=True))


#: A label set that is not HAM10000's: three classes, a grouping with a positive group, no focus class.
THREE_CLASSES = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"),
                         groupings={"malignancy": {"ack": "malignant", "bcc": "malignant", "nev": "benign"}},
                         positive={"malignancy": "malignant"})


@pytest.fixture
def tiny_source():
    """Registers the in-memory ``tiny`` dataset source (data.source=tiny) for one test."""
    plugin = TinyDatasetPlugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-tiny-source")
    yield "tiny"
    plugins.pm.unregister(plugin)
