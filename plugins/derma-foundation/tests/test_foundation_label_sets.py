"""clip_zeroshot and linear_probe on datasets other than HAM10000 (tiny in-memory sets of 3 and
2 classes, tiny random encoders): prompts come from the label set's names and the dataset's
modality, the probe has one output per class, feature caches are keyed by the labels too."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from derma_core.config import resolve_config
from derma_core.evaluation.metrics import classification_metrics
from derma_core.labels import LabelSet
from derma_core.testing import make_context, make_tiny_dataset

from derma_foundation.features import dataset_key
from derma_foundation.probe import LinearProbeClassifier
from derma_foundation.zeroshot import TEMPLATES, CLIPZeroShotClassifier, build_prompts, class_names

THREE = LabelSet(codes=("ak", "scc", "sk"), names=("Actinic keratosis", "SCC in situ", "Seborrheic keratosis"),
                 synonyms={"sk": ("seborrhoeic keratosis", "Seborrheic keratosis", "basal cell papilloma")})
TWO = LabelSet(codes=("benign", "malignant"))
LABEL_SETS = {"3-classes": THREE, "2-classes": TWO}
#: Random-weight encoders allowed whatever the data source (these tiny sets are in memory).
RANDOM = {"model.allow_random": True, "features.cache": False, "quiet": True, "device": "cpu"}
TINY_CONVNEXT = {"model.name": "timm:convnext_atto", "model.pretrained": "none", "model.image_size": 32,
                 "model.kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}


def _dataset(label_set: LabelSet):
    return make_tiny_dataset(n_train=60, n_val=24, n_test=30, size=8, learnable=True, label_set=label_set)


def _majority_macro_f1(split) -> float:
    """macro-F1 of always answering the commonest class: the floor a probe must beat."""
    y = split.y
    return classification_metrics(y, np.full(len(y), np.bincount(y).argmax()), len(split.label_set))["macro_f1"]


def test_class_names_come_from_the_label_set():
    assert class_names("scc", THREE, "clinical") == ["SCC in situ"]  # an acronym keeps its case
    assert class_names("ak", THREE, "both") == ["actinic keratosis", "ak"]
    # synonyms: display name and synonyms, repeats (ignoring case) dropped
    assert class_names("sk", THREE, "synonyms") == ["seborrheic keratosis", "seborrhoeic keratosis",
                                                     "basal cell papilloma"]
    assert class_names("benign", TWO, "both") == ["benign"]  # no display names: the code, once
    rows = build_prompts(["a photo of {}."], "synonyms", THREE)
    assert [r["prompt"] for r in rows if r["label"] == "sk"] == [
        "a photo of seborrheic keratosis.", "a photo of seborrhoeic keratosis.", "a photo of basal cell papilloma."]
    with pytest.raises(ValueError, match="prompts.names"):
        class_names("ak", THREE, "latin")


@pytest.mark.parametrize("modality", ["dermoscopic", "clinical"])
@pytest.mark.parametrize("label_set", LABEL_SETS.values(), ids=LABEL_SETS.keys())
def test_clip_zeroshot_prompts_follow_label_set_and_modality(label_set, modality):
    data = _dataset(label_set)
    descriptor = replace(data.descriptor, modality=modality)
    config = resolve_config("clip_zeroshot", values={"model.name": "tiny-clip", **RANDOM})
    clf = CLIPZeroShotClassifier(config)
    ctx = make_context(config, dataset=descriptor)
    resolved = clf.resolve(config, data, ctx)
    assert resolved["prompts.templates"] == list(TEMPLATES[modality])
    clf.fit(data["train"], data["val"], ctx)
    assert clf.text.shape[0] == len(label_set)
    assert {p["template"] for p in clf.prompts} == set(TEMPLATES[modality])
    expected = {p.format(n) for code in label_set.codes for n in class_names(code, label_set, "both")
                for p in TEMPLATES[modality]}
    assert {p["prompt"] for p in clf.prompts} == expected
    preds = clf.predict(data["test"], ctx)
    assert preds.probabilities.shape == (len(data["test"]), len(label_set))
    np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0)
    assert preds.label_set == label_set and set(preds.labels) <= set(label_set.codes)


def test_clip_templates_differ_by_modality_unless_given():
    assert set(TEMPLATES) == {"dermoscopic", "clinical"}
    assert not set(TEMPLATES["clinical"]) & {t for t in TEMPLATES["dermoscopic"] if "derm" in t}
    assert all("derm" not in t for t in TEMPLATES["clinical"])
    data = _dataset(THREE)
    config = resolve_config("clip_zeroshot", values={"model.name": "tiny-clip", **RANDOM})
    embeddings = {}
    for modality in ("dermoscopic", "clinical"):
        clf = CLIPZeroShotClassifier(config)
        clf.fit(data["train"], data["val"], make_context(config, dataset=replace(data.descriptor, modality=modality)))
        embeddings[modality] = clf.text
    assert not np.allclose(embeddings["dermoscopic"].numpy(), embeddings["clinical"].numpy())
    # a list of templates is used as given, whatever the modality
    given = resolve_config("clip_zeroshot", values={"model.name": "tiny-clip", "prompts.templates": ["{}"], **RANDOM})
    for modality in ("dermoscopic", "clinical"):
        clf = CLIPZeroShotClassifier(given)
        ctx = make_context(given, dataset=replace(data.descriptor, modality=modality))
        assert clf.resolve(given, data, ctx)["prompts.templates"] == ["{}"]


@pytest.mark.parametrize("label_set", LABEL_SETS.values(), ids=LABEL_SETS.keys())
def test_linear_probe_on_any_label_set(label_set):
    data = _dataset(label_set)
    config = resolve_config("linear_probe", values={**TINY_CONVNEXT, **RANDOM, "probe.C": [0.1, 1.0],
                                                    "class_weighting.mode": "capped"})
    clf = LinearProbeClassifier(config)
    ctx = make_context(config, dataset=data)
    clf.fit(data["train"], data["val"], ctx)
    preds = clf.predict(data["test"], ctx)
    k = len(label_set)
    assert preds.probabilities.shape == (len(data["test"]), k)
    np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0)
    assert preds.label_set == label_set and set(preds.labels) <= set(label_set.codes)
    f1 = classification_metrics(data["test"].y, preds.y_pred, k)["macro_f1"]
    assert f1 > _majority_macro_f1(data["test"]) + 0.2  # class colours are learnable


def test_linear_probe_refuses_a_split_of_other_classes():
    three = _dataset(THREE)
    config = resolve_config("linear_probe", values={**TINY_CONVNEXT, **RANDOM, "probe.C": [1.0]})
    clf = LinearProbeClassifier(config)
    clf.fit(three["train"], three["val"], make_context(config, dataset=three))
    two = _dataset(TWO)
    with pytest.raises(ValueError) as info:
        clf.predict(two["test"], make_context(config, dataset=two))
    message = str(info.value)
    assert "\n" not in message and "ak, scc, sk" in message and "benign, malignant" in message


def test_feature_cache_key_changes_with_the_labels():
    """The same images relabelled (another label set, or other labels) never share a cache file."""
    split = _dataset(THREE)["train"]
    assert dataset_key(split) == dataset_key(split.subset(np.arange(len(split))))
    renamed = LabelSet(codes=("x", "y", "z"))
    relabelled = replace(split, frame=split.frame.assign(label=split.frame["label"].map(dict(zip(THREE, renamed)))),
                         label_set=renamed)
    assert np.shares_memory(relabelled.cache, split.cache) or np.array_equal(relabelled.cache, split.cache)
    assert dataset_key(relabelled) != dataset_key(split)
    shuffled = split.frame.assign(label=np.roll(split.frame["label"].to_numpy(), 1))
    assert dataset_key(replace(split, frame=shuffled)) != dataset_key(split)
