"""Shared fixtures: an isolated MLflow store (from derma_core.testing.fixtures), a tiny in-memory
dataset source, real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import derma_core
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset  # noqa: F401 (re-exported for tests)
from derma_core.testing.fixtures import dataset_sources, mlflow_store, mlflow_template_db  # noqa: F401 (fixtures)

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


#: A label set that is not HAM10000's: three classes, a grouping with a positive group, no focus class.
THREE_CLASSES = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"),
                         groupings={"malignancy": {"ack": "malignant", "bcc": "malignant", "nev": "benign"}},
                         positive={"malignancy": "malignant"})


@pytest.fixture
def tiny_source():
    """Registers the in-memory ``tiny`` (HAM10000's classes) and ``tiny3`` (:data:`THREE_CLASSES`) dataset
    sources (data.source=tiny) for one test."""
    with dataset_sources({"tiny": lambda config: make_tiny_dataset(),
                          "tiny3": lambda config: make_tiny_dataset(name="tiny3", label_set=THREE_CLASSES,
                                                                    learnable=True)},
                         name="test-tiny-source"):
        yield "tiny"
