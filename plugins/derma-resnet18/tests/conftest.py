"""Fixtures for the resnet18 plugin's tests: an isolated MLflow store, a tiny synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

#: The tiny synthetic set every training test shares (32 px keeps ResNet-18 cheap on 2 cores).
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
    load_dataset(tiny_config(folder, quiet=True))
    return folder


def tiny_config(cache_dir: Path, **overrides) -> dict:
    """The resolved resnet18 config on the tiny synthetic set, 3 epochs, no bootstrap."""
    from derma_core.config import resolve_config

    values = {**TINY, "data.cache_dir": str(cache_dir), "train.epochs": 3, "evaluation.bootstrap": 0,
              "quiet": True, "device": "cpu"}
    values.update(overrides)
    return resolve_config("resnet18", values=values)
