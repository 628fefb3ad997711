"""The recipe: class weights against SEED_FACTS, config defaults, precision/layout choices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from derma_core.config import ConfigError, resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_resnet18 import recipe as R

K = len(HAM)

#: SEED_FACTS: train-split image counts [akiec..vasc] of the seed split, and the seed's weights.
SEED_TRAIN_COUNTS = [236, 373, 786, 80, 787, 4773, 95]
SEED_UNCAPPED = [4.32, 2.73, 1.30, 12.73, 1.29, 0.21, 10.72]
SEED_CAPPED = [3, 2.73, 1.30, 3, 1.29, 0.21, 3]


def shared_data_dir() -> Path:
    """../shared/data next to the repository (DERMA_SHARED_DATA overrides)."""
    import derma_core

    env = os.environ.get("DERMA_SHARED_DATA")
    return Path(env) if env else Path(derma_core.__file__).resolve().parents[2] / "shared" / "data"


def labels_from_counts(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_class_weights_reproduce_seed_facts():
    y = labels_from_counts(SEED_TRAIN_COUNTS)
    assert len(y) == 7130
    np.testing.assert_allclose(R.class_weights(y, "uncapped", num_classes=K), SEED_UNCAPPED, atol=0.005)
    np.testing.assert_allclose(R.class_weights(y, "capped", 3.0, num_classes=K), SEED_CAPPED, atol=0.005)
    assert R.class_weights(y, "none", num_classes=K) is None


def test_class_weights_from_real_seed_split(tmp_path):
    """The seed split of the real metadata (../shared/data) gives the SEED_FACTS counts and weights."""
    meta_path = shared_data_dir() / "ham10000" / "HAM10000_metadata.csv"
    if not meta_path.exists():
        pytest.skip(f"real HAM10000 metadata not found at {meta_path} (set DERMA_SHARED_DATA)")
    from derma_core.data.splits import seed_split

    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    where = seed_split(meta, group="lesion_id")  # the raw metadata names its groups lesion_id
    train_dx = HAM.encode(meta.loc[where == "train", "dx"].tolist())
    assert np.bincount(train_dx, minlength=K).tolist() == SEED_TRAIN_COUNTS
    np.testing.assert_allclose(R.class_weights(train_dx, "uncapped", num_classes=K), SEED_UNCAPPED, atol=0.005)
    np.testing.assert_allclose(R.class_weights(train_dx, "capped", 3.0, num_classes=K), SEED_CAPPED, atol=0.005)


def test_class_weights_edge_cases():
    y = np.array([0, 0, 1, 5])  # classes 2, 3, 4, 6 absent
    w = R.class_weights(y, "uncapped", num_classes=7)
    assert w.shape == (7,) and w[2] == 0 and w[3] == 0 and np.isfinite(w).all()
    assert w[0] == pytest.approx(4 / (3 * 2))  # K = the 3 classes present: sklearn's "balanced"
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(w[[0, 1, 5]], compute_class_weight("balanced", classes=np.array([0, 1, 5]), y=y))
    with pytest.raises(ValueError, match="class_weighting.mode"):
        R.class_weights(y, "sqrt", num_classes=7)
    with pytest.raises(ValueError, match="empty"):
        R.class_weights(np.array([], dtype=int), "capped", num_classes=7)
    with pytest.raises(ValueError, match="label index 5 is outside 0..2"):
        R.class_weights(y, "capped", num_classes=3)  # labels of a bigger label set
    with pytest.raises(TypeError):
        R.class_weights(y, "capped")  # K is the dataset's: never a default


@pytest.mark.parametrize("counts", [[30, 10], [5, 40, 15], [1] * 113 + [200]], ids=["2", "3", "114"])
def test_class_weights_for_any_number_of_classes(counts):
    """w_c = N / (K * count_c) with K the label set's size, capped at 3 by default."""
    y = labels_from_counts(counts)
    k = len(counts)
    expected = len(y) / (k * np.asarray(counts, dtype=float))
    np.testing.assert_allclose(R.class_weights(y, "uncapped", num_classes=k), expected)
    np.testing.assert_allclose(R.class_weights(y, "capped", 3.0, num_classes=k), np.minimum(expected, 3.0))
    np.testing.assert_allclose(R.class_weights(y, "balanced", num_classes=k), expected)


def test_default_config_is_the_seed_recipe():
    config = resolve_config("resnet18")
    r = R.recipe_from_config(config)
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.scheduler) == ("adamw", 5e-4, 1e-4, 32, "none")
    assert r.dropout == 0.2 and r.weighting == "capped" and r.cap == 3.0
    a = r.augmentation
    assert (a.enabled, a.rotation, a.translate, a.brightness, a.hflip, a.vflip) == (True, 10.0, 0.05, 0.05, 0.5, 0.0)
    # weights: auto -> from scratch on the built-in synthetic data, ImageNet (the seed's) on real data
    assert config["data"]["source"] == "synthetic"
    assert R.resolve_weights(r.weights, config) == "none"
    assert R.resolve_weights("auto", {"data": {"source": "ham10000"}}) == "imagenet"
    assert R.resolve_weights("/x/y.pt", config) == "/x/y.pt"
    # epochs: auto -> the seed's 20 on real data, a few-minute run on the synthetic default
    assert config["train"]["epochs"] == "auto" and r.epochs == R.SYNTHETIC_EPOCHS
    real = resolve_config("resnet18", values={"data.source": "ham10000"})
    assert R.recipe_from_config(real).epochs == 20
    assert R.recipe_from_config(resolve_config("resnet18", overrides=["train.epochs=3"])).epochs == 3
    with pytest.raises(ValueError, match="train.epochs"):
        R.recipe_from_config(resolve_config("resnet18", overrides=["train.epochs=many"]))


def test_config_choices_are_enforced():
    with pytest.raises(ConfigError, match="train.scheduler"):
        resolve_config("resnet18", overrides=["train.scheduler=step"])
    with pytest.raises(ConfigError, match="precision"):
        resolve_config("resnet18", overrides=["precision=int8"])
    config = resolve_config("resnet18", overrides=["train.channels_last=true", "train.num_workers=2",
                                                   "train.optimizer=adam", "class_weighting.mode=uncapped"])
    r = R.recipe_from_config(config)
    assert (r.channels_last, r.num_workers, r.optimizer, r.weighting) == (True, 2, "adam", "uncapped")
    with pytest.raises(ValueError, match="model.dropout"):
        R.recipe_from_config(resolve_config("resnet18", overrides=["model.dropout=1.5"]))


def test_precision_and_layout_choices(monkeypatch):
    import torch

    monkeypatch.setattr(R, "cpu_has_fast_bf16", lambda: False)
    assert R.resolve_precision("auto", "cpu") == "fp32"
    assert R.resolve_channels_last(None, "cpu", "fp32") is True
    assert R.resolve_channels_last(None, "mps", "fp32") is False
    monkeypatch.setattr(R, "cpu_has_fast_bf16", lambda: True)
    assert R.resolve_precision("auto", "cpu") == "bf16"
    assert R.resolve_channels_last(None, "cpu", "bf16") is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert R.resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert R.resolve_precision("auto", "cuda:1") == "bf16"
    assert R.resolve_channels_last(None, "cuda", "bf16") is True
    assert R.resolve_precision("auto", "mps") == "fp32"
    assert R.resolve_precision("fp16", "cpu") == "fp16"
    assert R.resolve_channels_last(False, "cuda", "bf16") is False
    assert R.resolve_num_workers(None, "cpu", cached=True) == 0
    assert R.resolve_num_workers(3, "cpu", cached=True) == 3
