"""The CNN backend on datasets other than HAM10000: the head, class weights, predictions and
checkpoints follow the training split's label set, and a checkpoint is only ever loaded on a
dataset with the same classes (one line naming both class lists otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derma_core.config import resolve_config
from derma_core.labels import LabelSet
from derma_core.testing import make_context, make_tiny_dataset
from derma_resnet18.checkpoint import checkpoint_path, load_checkpoint
from derma_resnet18.classifier import ResNet18Classifier, model_metadata

THREE = LabelSet(codes=("ak", "scc", "sk"), names=("Actinic keratosis", "SCC in situ", "Seborrheic keratosis"),
                 groupings={"malignancy": {"ak": "malignant", "scc": "malignant", "sk": "benign"}},
                 positive={"malignancy": "malignant"}, focus="scc")
TWO = LabelSet(codes=("benign", "malignant"))


def _config(**extra) -> dict:
    # fp32: on 16 px images layer4 of ResNet-18 sees 1x1 maps, and bf16 (what `auto` picks on CPUs
    # with native bf16) diverges to NaN for some initialisations; precision is tested elsewhere
    values = {"precision": "fp32", "model.weights": "none", "train.epochs": 1, "train.batch_size": 16,
              "quiet": True}
    values.update(extra)
    return resolve_config("resnet18", values=values)


class _ParamRecorder:
    """A tracker that keeps the logged params and drops everything else."""

    run_id = ""

    def __init__(self) -> None:
        self.params: dict = {}

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _dataset(label_set: LabelSet):
    return make_tiny_dataset(n_train=48, n_val=18, n_test=21, size=16, learnable=True, label_set=label_set)


@pytest.fixture(scope="module")
def trained_three(tmp_path_factory):
    """A 3-class model trained one epoch; its work folder holds the checkpoint."""
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("r18-three")
    data = _dataset(THREE)
    config = _config()
    clf = ResNet18Classifier(config)
    ctx = make_context(config, work_dir=work, dataset=data)
    clf.fit(data["train"], data["val"], ctx)
    return clf, data, work, clf.predict(data["test"], ctx)


@pytest.mark.parametrize("label_set", [THREE, TWO], ids=["3-classes", "2-classes"])
def test_head_weights_and_predictions_follow_the_label_set(label_set, tmp_path):
    torch.manual_seed(0)
    data = _dataset(label_set)
    config = _config(**{"class_weighting.mode": "uncapped"})
    clf = ResNet18Classifier(config)
    ctx = make_context(config, work_dir=tmp_path, dataset=data)
    ctx.tracker = _ParamRecorder()
    clf.fit(data["train"], data["val"], ctx)
    logged = ctx.tracker.params
    k = len(label_set)
    assert clf.model.head.out_features == k
    counts = np.bincount(data["train"].y, minlength=k)
    expected = len(data["train"]) / (k * counts)  # w_c = N / (K * count_c) over this dataset's K
    assert logged["class_weights"] == [round(float(w), 4) for w in expected]
    preds = clf.predict(data["test"], ctx)
    assert preds.probabilities.shape == (len(data["test"]), k)
    np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert preds.label_set == label_set and set(preds.labels) <= set(label_set.codes)
    assert preds.labels == [label_set.codes[i] for i in preds.probabilities.argmax(axis=1)]
    ck = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert LabelSet.from_dict(ck["labels"]) == label_set  # the checkpoint records its classes
    assert model_metadata(label_set)["classes"] == list(label_set.codes)


def test_evaluating_the_checkpoint_on_the_same_classes_reproduces_predictions(trained_three, tmp_path):
    _, data, work, preds = trained_three
    config = _config(checkpoint=str(checkpoint_path(work)))
    clf = ResNet18Classifier(config)
    ctx = make_context(config, work_dir=tmp_path, dataset=data)
    assert clf.resolve(config, data, ctx)["train.epochs"] == 0
    clf.fit(data["train"], data["val"], ctx)
    np.testing.assert_allclose(clf.predict(data["test"], ctx).probabilities, preds.probabilities, atol=1e-6)


def _one_line_naming_both(info, trained: LabelSet, dataset: LabelSet) -> None:
    message = str(info.value)
    assert "\n" not in message, message
    assert ", ".join(trained.codes) in message and ", ".join(dataset.codes) in message, message


def test_a_checkpoint_of_other_classes_is_refused(trained_three, tmp_path):
    _, _, work, _ = trained_three
    two = _dataset(TWO)
    # evaluate-only (checkpoint: PATH): refused when the run resolves, before anything is built
    config = _config(checkpoint=str(checkpoint_path(work)))
    ctx = make_context(config, work_dir=tmp_path, dataset=two)
    with pytest.raises(ValueError) as info:
        ResNet18Classifier(config).resolve(config, two, ctx)
    _one_line_naming_both(info, THREE, TWO)
    with pytest.raises(ValueError) as info:
        ResNet18Classifier(config).fit(two["train"], two["val"], ctx)
    _one_line_naming_both(info, THREE, TWO)
    # the same classes in another order would silently swap the head's outputs: refused too
    swapped = LabelSet(codes=("sk", "scc", "ak"))
    other = _dataset(swapped)
    with pytest.raises(ValueError) as info:
        ResNet18Classifier(config).fit(other["train"], other["val"], make_context(config, dataset=other))
    _one_line_naming_both(info, THREE, swapped)
    # model.weights=PATH (a derma checkpoint as initial weights)
    config = _config(**{"model.weights": str(checkpoint_path(work))})
    with pytest.raises(ValueError) as info:
        ResNet18Classifier(config).fit(two["train"], two["val"], make_context(config, work_dir=tmp_path, dataset=two))
    _one_line_naming_both(info, THREE, TWO)


def test_resume_on_other_classes_is_refused(trained_three, tmp_path):
    _, _, work, _ = trained_three
    two = _dataset(TWO)
    config = _config(**{"train.epochs": 2})
    ctx = make_context(config, work_dir=work, dataset=two)
    ctx.resume = True
    before = load_checkpoint(checkpoint_path(work))["epoch"]
    with pytest.raises(ValueError) as info:
        ResNet18Classifier(config).fit(two["train"], two["val"], ctx)
    _one_line_naming_both(info, THREE, TWO)
    assert load_checkpoint(checkpoint_path(work))["epoch"] == before  # the checkpoint is untouched


def test_predicting_a_split_of_other_classes_is_refused(trained_three):
    clf, _, _, _ = trained_three
    two = _dataset(TWO)
    with pytest.raises(ValueError) as info:
        clf.predict(two["test"], make_context(dataset=two))
    _one_line_naming_both(info, THREE, TWO)
