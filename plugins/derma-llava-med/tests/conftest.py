"""Fixtures of the LLaVA plugin's tests: the shared ones (derma_core.testing.fixtures: an isolated MLflow
store, the session's model cache, two torch threads) and this package's own (the tiny-random model, built
once per session, a few images, a small in-memory dataset)."""

from __future__ import annotations

import numpy as np
import pytest

from derma_core.testing.fixtures import (dataset_sources, few_threads, mlflow_store,  # noqa: F401 (fixtures)
                                         mlflow_template_db, model_cache)


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
def tiny_source():
    """Registers a small in-memory ``tiny`` dataset source (data.source=tiny, 24 px) for one test."""
    from derma_core.testing import make_tiny_dataset

    with dataset_sources({"tiny": lambda config: make_tiny_dataset(n_train=14, n_val=7, n_test=9, size=24)},
                         name="test-llava-tiny-source"):
        yield "tiny"
