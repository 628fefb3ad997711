"""The ``prior`` classifier: always the majority training class, with class-prior probabilities.

It is the floor every comparison should show (on the seed test split it scores the 0.670
accuracy of always answering nv) and the fastest end-to-end path for tests.
"""

from __future__ import annotations

import numpy as np

from . import hookimpl
from .interfaces import Predictions, RunContext, Split
from .labels import LABELS, NUM_CLASSES


class PriorClassifier:
    name = "prior"

    def __init__(self, config: dict) -> None:
        self.config = config
        self.priors: np.ndarray | None = None

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """The model it runs, for the curated ``model`` param (it has no ``auto`` of its own:
        device, world size and the data's image size are the runner's)."""
        return {"model.name": "class-prior"}

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        counts = np.bincount(train.y, minlength=NUM_CLASSES).astype(np.float64)
        if counts.sum() == 0:
            raise ValueError("prior: the train split is empty")
        self.priors = counts / counts.sum()
        ctx.log_metrics({f"train_prior_{label}": float(p) for label, p in zip(LABELS, self.priors)})

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        if self.priors is None:
            raise RuntimeError("prior: predict() called before fit()")
        majority = LABELS[int(np.argmax(self.priors))]
        probs = np.tile(self.priors, (len(split), 1))
        return Predictions(ids=split.ids, labels=[majority] * len(split), probabilities=probs)


@hookimpl
def register_classifiers(register):
    register("prior", PriorClassifier)
