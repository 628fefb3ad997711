"""An in-test backend for the tuning tests: the ``tunetoy`` classifier, a tiny in-memory dataset
source and a macro-F1 evaluator, registered on ``derma_core.plugins.pm`` by :func:`register`.

The classifier does no learning: its validation score is a known function of the config
(``train.lr``, ``class_weighting``, ``model.dropout``), reported per epoch through
``ctx.report_epoch`` and reproduced by its predictions, so tests know which trial must win and
which must be pruned. The dataset has its own four classes (:data:`LABEL_SET`), not HAM10000's:
tuning knows nothing of a particular label set. Run as a script it is a ``derma`` command line with the plugin loaded
(the distributed test starts its workers this way).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from derma_core import hookimpl
from derma_core.interfaces import Dataset, EvalInput, EvalResult, Predictions, Split, TrialPruned
from derma_core.labels import LabelSet
from derma_core.testing import tiny_descriptor

NAME = "tunetoy"
PLUGIN_NAME = "tunetoy-test-plugin"
#: The toy dataset's classes.
LABEL_SET = LabelSet(codes=("alpha", "beta", "gamma", "delta"), names=("Alpha", "Beta", "Gamma", "Delta"))

SCHEMA = """\
data:
  source: tunetoy_data
evaluation:
  evaluators: [tunetoy_f1]
  bootstrap: 0
model:
  dropout: 0.0
train:
  epochs: 3
  lr: 0.001
  sleep: 0.0           # seconds per epoch, so a test can kill a worker mid-trial
class_weighting:
  mode: none
  cap: 3.0
lora:
  r: 16
  alpha: 32
  dropout: 0.05
_choices:
  class_weighting.mode: [none, capped, uncapped]
"""

#: Split names predict() was called on, in this process (and appended to $TUNETOY_LOG).
PREDICTED: list[str] = []
#: Epochs fit() reached, per call.
FITTED: list[int] = []


def schema_path() -> Path:
    """The classifier's config schema as a file (named by its content, shared by test processes)."""
    digest = hashlib.sha256(SCHEMA.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"derma-tunetoy-{digest}.yaml"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(SCHEMA)
        os.replace(tmp, path)
    return path


def score(config: dict) -> float:
    """The validation quality the toy reaches: best at lr 3e-3 with capped weights (cap 3)."""
    lr = float(config["train"]["lr"])
    quality = math.exp(-((math.log10(lr) - math.log10(3e-3)) ** 2) / 1.5)
    mode = config["class_weighting"]["mode"]
    cap = float(config["class_weighting"]["cap"])
    weighting = {"none": 0.7, "uncapped": 0.85}.get(mode) or 0.85 + 0.15 * math.exp(-math.log(cap / 3.0) ** 2)
    dropout = 1.0 if float(config["model"]["dropout"]) == 0.2 else 0.95
    return max(0.0, min(1.0, quality * weighting * dropout))


class ToyClassifier:
    name = NAME

    def __init__(self, config: dict) -> None:
        self.config = config
        self.quality = score(config)

    def fit(self, train: Split, val: Split, ctx) -> None:
        epochs = int(ctx.get("train.epochs"))
        lr = float(ctx.get("train.lr"))
        reached = 0
        try:
            for epoch in range(1, epochs + 1):
                reached = epoch
                if lr < 1e-6:  # a plugin may give up on its own, through the core's exception
                    raise TrialPruned(f"lr {lr} is hopeless")
                if lr > 0.5:
                    raise FloatingPointError(f"loss diverged at lr {lr}")
                ctx.report_epoch(epoch, {"val_macro_f1": self.quality * epoch / epochs, "train_loss": 1.0 / epoch})
                time.sleep(float(ctx.get("train.sleep") or 0.0))
        finally:
            FITTED.append(reached)

    def predict(self, split: Split, ctx) -> Predictions:
        PREDICTED.append(split.name)
        log = os.environ.get("TUNETOY_LOG")
        if log:
            with open(log, "a") as f:
                f.write(split.name + "\n")
        codes = split.label_set.codes
        labels = split.labels
        n_right = int(round(self.quality * len(labels)))
        predicted = [lab if i < n_right else codes[(codes.index(lab) + 1) % len(codes)]
                     for i, lab in enumerate(labels)]
        return Predictions(ids=split.ids, labels=predicted, label_set=split.label_set)


class GuardedSplit(Split):
    """A test split whose images must never be read during a study."""

    def image_path(self, i: int) -> Path:
        raise AssertionError("the test split was read during tuning")

    def load_image(self, i: int):
        raise AssertionError("the test split was read during tuning")


def toy_dataset(config: dict) -> Dataset:
    """Ten rows per class (six in test) of :data:`LABEL_SET`; with ``data.dir`` a folder whose
    ``classes.txt`` names other class codes (one per line), those classes (a prepared folder of
    another dataset, as a worker's machine path may point at)."""
    root = Path(tempfile.gettempdir())
    label_set = LABEL_SET
    folder = (config.get("data") or {}).get("dir")
    if folder:
        label_set = LabelSet(codes=tuple(Path(folder, "classes.txt").read_text().split()))
    splits = {}
    for name, per_class in (("train", 10), ("val", 10), ("test", 6)):
        rows = [{"id": f"{name}{c}_{k}", "label": lab, "group_id": f"L{name}{c}_{k}", "image_path": f"{name}{c}_{k}.jpg"}
                for c, lab in enumerate(label_set.codes) for k in range(per_class)]
        # interleave classes so the first rows (the ones the toy gets right) span every class
        frame = pd.DataFrame(rows).sort_values("id", key=lambda s: s.str.split("_").str[1].astype(int), kind="stable").reset_index(drop=True)
        cls = GuardedSplit if name == "test" else Split
        splits[name] = cls(name, frame, root, label_set=label_set)
    return Dataset(name="tunetoy-data", digest="tunetoy0001", splits=splits, synthetic=True,
                   descriptor=tiny_descriptor(label_set, name="tunetoy-data"))


def toy_f1(inputs: EvalInput) -> EvalResult:
    from sklearn.metrics import accuracy_score, f1_score

    y, p = inputs.y_true, inputs.y_pred
    return EvalResult(metrics={"macro_f1": float(f1_score(y, p, labels=list(range(len(inputs.label_set))),
                                                           average="macro", zero_division=0)),
                               "accuracy": float(accuracy_score(y, p))})


@hookimpl
def register_classifiers(register):
    register(NAME, ToyClassifier, config=str(schema_path()))


@hookimpl
def register_datasets(register):
    register("tunetoy_data", toy_dataset)


@hookimpl
def register_evaluators(register):
    register("tunetoy_f1", toy_f1)


def register() -> None:
    from derma_core import plugins

    plugins.load_plugins()
    module = sys.modules[__name__]
    if plugins.pm.get_plugin(PLUGIN_NAME) is None:
        plugins.pm.register(module, name=PLUGIN_NAME)


def unregister() -> None:
    from derma_core import plugins

    if plugins.pm.get_plugin(PLUGIN_NAME) is not None:
        plugins.pm.unregister(name=PLUGIN_NAME)


def test_toy_score_prefers_capped_weights_and_lr_near_3e_3():
    base = {"train": {"lr": 3e-3}, "class_weighting": {"mode": "capped", "cap": 3.0}, "model": {"dropout": 0.2}}
    best = score(base)
    assert best == pytest.approx(1.0)
    worse_lr = json.loads(json.dumps(base))
    worse_lr["train"]["lr"] = 1e-5
    uncapped = json.loads(json.dumps(base))
    uncapped["class_weighting"]["mode"] = "uncapped"
    assert score(worse_lr) < 0.1 < score(uncapped) < best


if __name__ == "__main__":  # a `derma` command line with this plugin loaded
    import torch

    torch.set_num_threads(1)
    register()
    from derma_core.cli import cli

    cli(prog_name="derma")
