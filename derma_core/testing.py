"""Helpers for testing plugins: a tiny in-memory dataset and a one-call fit/predict.

Used by derma's own tests and by the test that ``derma plugins new`` generates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .interfaces import Dataset, Predictions, RunContext, Split
from .labels import LABELS
from .tracking import NullTracker


def make_tiny_dataset(n_train: int = 70, n_val: int = 28, n_test: int = 35, size: int = 8,
                      name: str = "tiny", seed: int = 0, learnable: bool = False) -> Dataset:
    """A small in-memory dataset with every class in every split and lesions of one or two images.

    With ``learnable`` each class gets its own mean colour, so a sensible classifier beats chance.
    """
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = [LABELS[i % 7] if i % 3 else "nv" for i in range(n)]
        lesions, current = [], None
        for i, label in enumerate(labels):
            if i % 2 == 0 or label != labels[i - 1]:
                current = f"L_{split}_{i:04d}"
            lesions.append(current)
        frame = pd.DataFrame({"id": [f"{split}_{i:04d}" for i in range(n)], "label": labels,
                              "lesion_id": lesions, "image_path": [f"{split}_{i:04d}.jpg" for i in range(n)]})
        cache = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        if learnable:
            for i, label in enumerate(labels):
                k = LABELS.index(label)
                colour = np.array([(37 * k) % 256, (91 * k + 40) % 256, (53 * k + 90) % 256])
                noise = rng.normal(0, 20, size=(size, size, 3))
                cache[i] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        splits[split] = Split(split, frame, Path("."), cache)
    return Dataset(name, f"digest-{name}-{seed}", splits, synthetic=True)


def make_context(config: dict | None = None, work_dir: str | Path | None = None, seed: int = 0) -> RunContext:
    """A RunContext that logs nothing (NullTracker), quiet, on the CPU."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="derma-test-"))
    return RunContext(config=config or {}, tracker=NullTracker(), device="cpu", seed=seed, work_dir=work, quiet=True)


def fit_predict(classifier, dataset: Dataset, split: str = "test", ctx: RunContext | None = None) -> Predictions:
    """``classifier.fit(train, val)`` then ``predict`` on ``split``; returns the predictions."""
    ctx = ctx or make_context()
    classifier.fit(dataset["train"], dataset["val"], ctx)
    return classifier.predict(dataset[split], ctx)
