"""``derma plugins new NAME``: a working plugin package to start a new backend from."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_SETUP_CFG = """\
[metadata]
name = derma-{dist}
version = 0.1.0
description = derma plugin: the {name} classifier

[options]
python_requires = >=3.11
packages = find:
include_package_data = True
install_requires =
    derma

[options.package_data]
{module} = config.yaml

[options.packages.find]
include = {module}, {module}.*

[options.entry_points]
derma =
    {name} = {module}
"""

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"
"""

_INIT = '''\
"""derma plugin: the ``{name}`` classifier.

Start here: replace the body of ``fit`` and ``predict`` with your model. Everything else
(datasets, evaluators, MLflow logging, tuning) is done by derma around these two methods.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from derma_core import hookimpl
from derma_core.interfaces import Predictions, RunContext, Split


class {cls}:
    """A nearest-centroid classifier on each image's mean colour: a skeleton that really runs.

    It works on any dataset: the classes are the training split's label set
    (``train.label_set``: codes, display names), one centroid per class.
    """

    name = "{name}"

    def __init__(self, config: dict) -> None:
        # config is the fully resolved run config; this plugin's own keys live under "{name}:"
        self.options = config.get("{name}", {{}})
        self.centroids: np.ndarray | None = None
        self.label_set = None  # the classes fit() saw: train.label_set

    def _features(self, split: Split, ctx: RunContext) -> np.ndarray:
        feats = np.zeros((len(split), 3))
        for i in ctx.progress(range(len(split)), desc="{name} features"):
            feats[i] = np.asarray(split.load_image(i), dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return feats

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        self.label_set = train.label_set
        x, y = self._features(train, ctx), train.y  # y: indices into train.label_set
        overall = x.mean(axis=0)
        self.centroids = np.stack([x[y == k].mean(axis=0) if (y == k).any() else overall
                                   for k in range(len(self.label_set))])
        val_acc = float((self._predict_index(self._features(val, ctx)) == val.y).mean())
        ctx.report_epoch(0, {{"val_accuracy": val_acc}})  # per-epoch metrics: step = epoch

    def _scores(self, x: np.ndarray) -> np.ndarray:
        distance = ((x[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=-1)
        temperature = float(self.options.get("temperature", 10.0))
        logits = -distance / temperature**2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def _predict_index(self, x: np.ndarray) -> np.ndarray:
        return self._scores(x).argmax(axis=1)

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        split.label_set.require_same(self.label_set, "this {name} model", "predict on the dataset it was fitted on")
        probs = self._scores(self._features(split, ctx))  # (N, K): one column per class, label set order
        labels = split.label_set.decode(probs.argmax(axis=1))
        return Predictions(ids=split.ids, labels=labels, probabilities=probs, label_set=split.label_set)


@hookimpl
def register_classifiers(register):
    register("{name}", {cls}, config=Path(__file__).with_name("config.yaml"))
'''

_CONFIG = """\
# Defaults of the {name} plugin (derma merges them over configs/default.yaml).
# Every key here can be overridden with `derma run --plugin {name} -o {name}.temperature=5`.
{name}:
  temperature: 10.0
"""

_TEST = '''\
"""The {name} plugin runs end to end on derma's tiny in-memory datasets, of any label set."""

import numpy as np
import pytest

from derma_core.labels import LabelSet
from derma_core.testing import fit_predict, make_tiny_dataset
from {module} import {cls}

LABEL_SETS = {{
    "ham10000": None,  # the default: HAM10000's seven classes
    "three": LabelSet(codes=("a", "b", "c"), names=("Class A", "Class B", "Class C")),
    "two": LabelSet(codes=("benign", "malignant")),
}}


@pytest.mark.parametrize("label_set", LABEL_SETS.values(), ids=LABEL_SETS.keys())
def test_fit_predict_gives_a_label_and_probabilities_per_image(label_set):
    dataset = make_tiny_dataset(learnable=True, label_set=label_set)
    test = dataset["test"]
    predictions = fit_predict({cls}({{"{name}": {{"temperature": 10.0}}}}), dataset)
    assert predictions.ids == test.ids
    assert predictions.probabilities.shape == (len(test), len(dataset.label_set))
    assert set(predictions.labels) <= set(dataset.label_set.codes)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0)
    accuracy = np.mean(predictions.y_pred == test.y)
    majority = np.bincount(test.y).max() / len(test)  # always guessing the commonest class
    assert accuracy > majority + 0.1  # class colours are learnable
'''

_README = """\
# derma-{dist}

A derma plugin providing the `{name}` classifier.

    pip install -e .
    derma plugins            # lists {name}
    derma run --plugin {name}
    pytest tests

Edit `{module}/__init__.py` (`fit` and `predict`) and `{module}/config.yaml`.
"""


def _validate(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ValueError(f"plugin name {name!r} must be lower-case letters, digits and underscores, starting with a letter")
    return name


def create_plugin(name: str, parent: Path) -> Path:
    """Write a plugin package ``derma-<name>`` under ``parent``; returns its folder."""
    name = _validate(name)
    dist = name.replace("_", "-")
    module = f"derma_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Classifier"
    root = Path(parent) / f"derma-{dist}"
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose another name or remove it")
    values = {"name": name, "dist": dist, "module": module, "cls": cls}
    files = {
        "setup.cfg": _SETUP_CFG, "pyproject.toml": _PYPROJECT, "README.md": _README,
        f"{module}/__init__.py": _INIT, f"{module}/config.yaml": _CONFIG,
        f"tests/test_{name}.py": _TEST,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root
