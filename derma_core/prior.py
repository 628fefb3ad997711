"""The ``prior`` classifier: always the majority training class, with class-prior probabilities.

It is the floor every comparison should show (on HAM10000's seed test split it scores the 0.670
accuracy of always answering nv) and the fastest end-to-end path for tests. Its classes are the
training split's label set (the run's dataset's), whatever it is.
"""

from __future__ import annotations

import numpy as np

from . import hookimpl
from .interfaces import Predictions, RunContext, Split
from .labels import LabelSet


class PriorClassifier:
    name = "prior"
    #: fit() reads only the train split: all of val may calibrate (derma_core/data/calibration_split.py)
    selects_on_val = False
    #: ...but it does train (the class priors): a run refuses an empty train split before it starts
    needs_train = True

    def __init__(self, config: dict) -> None:
        self.config = config
        self.priors: np.ndarray | None = None
        self.label_set: LabelSet | None = None

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """The model it runs, for the curated ``model`` param (it has no ``auto`` of its own:
        device, world size and the data's image size are the runner's)."""
        return {"model.name": "class-prior"}

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        label_set = train.label_set
        counts = np.bincount(train.y, minlength=len(label_set)).astype(np.float64)
        if counts.sum() == 0:
            raise ValueError("prior: the train split is empty")
        self.label_set = label_set
        self.priors = counts / counts.sum()
        ctx.log_metrics({f"train_prior_{label}": float(p) for label, p in zip(label_set.codes, self.priors)})

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        if self.priors is None or self.label_set is None:
            raise RuntimeError("prior: predict() called before fit()")
        split.label_set.require_same(self.label_set, "prior: the class priors fitted on the train split",
                                     f"predict split {split.name!r} of the dataset it was fitted on")
        majority = self.label_set.codes[int(np.argmax(self.priors))]
        probs = np.tile(self.priors, (len(split), 1))
        return Predictions(ids=split.ids, labels=[majority] * len(split), probabilities=probs,
                           label_set=self.label_set)


@hookimpl
def register_classifiers(register):
    register("prior", PriorClassifier)
