"""Any timm backbone for the CNN backend (``model.arch``): tiny ConvNeXt and ViT built at test time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derma_core import runner
from derma_core.config import resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM

from derma_resnet18.augment import normalize
from derma_resnet18.model import TimmNet, WeightsError, build_model, timm_preprocessing

#: A 1-block-per-stage ConvNeXt (random init), trained 3 epochs at 32 px.
TINY_CONVNEXT = {"model.arch": "convnext_atto", "model.weights": "none",
                 "model.kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}
TINY_VIT = {"model.arch": "vit_tiny_patch16_224", "model.weights": "none",
            "model.kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("r18-timm-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DERMA_MLRUNS", str(root / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "mlruns").mkdir()
        yield root


def _config(store, cache, **overrides) -> dict:
    values = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 420, "data.synthetic_seed": 3,
              "data.cache_dir": str(cache), "train.epochs": 3, "evaluation.bootstrap": 0, "quiet": True,
              "device": "cpu", "output.work_dir": str(store / "work"), "tracking.experiment": "r18-timm",
              "tracking.log_model": False}
    values.update(overrides)
    return resolve_config("resnet18", values=values)


def test_own_normalisation_is_restored_exactly():
    """A ViT's pretrained config says mean = std = 0.5: fed the data path's ImageNet-normalised
    batch, TimmNet's backbone sees exactly the 0.5/0.5-normalised image."""
    prep = timm_preprocessing("vit_tiny_patch16_224")
    assert prep.mean == (0.5, 0.5, 0.5) and prep.input_size == 224
    net = TimmNet("vit_tiny_patch16_224", len(HAM), kwargs=TINY_VIT["model.kwargs"], image_size=32).eval()
    assert net.renormalise
    seen = {}
    net.backbone.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.randint(0, 256, (2, 3, 32, 32)).float()
    net(normalize(images))
    assert torch.allclose(seen["x"], (images / 255 - 0.5) / 0.5, atol=1e-5)
    assert not TimmNet("convnext_atto", len(HAM), kwargs=TINY_CONVNEXT["model.kwargs"]).renormalise  # ImageNet's own


def test_unknown_arch_and_offline_weights_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match="not torchvision's resnet18 nor a timm model"):
        build_model("none", 0.0, HAM, arch="no_such_net")
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        build_model("imagenet", 0.0, HAM, arch="convnext_atto")
    message = str(info.value)
    assert "\n" not in message and "huggingface-cli download timm/convnext_atto" in message
    assert "model.weights=none" in message


def _prior_macro_f1(config: dict) -> float:
    from derma_core.evaluation.metrics import classification_metrics
    from derma_core.prior import PriorClassifier
    from derma_core.testing import fit_predict

    data = runner.load_dataset(config)
    return classification_metrics(data["test"].y, fit_predict(PriorClassifier({}), data).y_pred,
                                  len(data.label_set))["macro_f1"]


def test_timm_convnext_beats_prior_resumes_and_reloads(store, synthetic_cache):
    from derma_core.testing import make_context

    from derma_resnet18.classifier import ResNet18Classifier

    config = _config(store, synthetic_cache, **TINY_CONVNEXT)
    result = runner.run(config)
    assert result.metrics["test_macro_f1"] > _prior_macro_f1(config) + 0.05
    data = runner.load_dataset(config)
    work = store / "work" / result.run_id
    # resume of the finished run: the checkpoint (a timm state dict) restores, nothing retrains
    ctx = make_context(config, work_dir=work)
    ctx.resume = True
    resumed = ResNet18Classifier(config)
    resumed.fit(data["train"], data["val"], ctx)
    probs = resumed.predict(data["test"], ctx).probabilities
    assert np.allclose(probs, result.predictions.probabilities, atol=1e-6)
    # evaluating the checkpoint rebuilds the arch from the checkpoint's config
    evaluated = ResNet18Classifier(_config(store, synthetic_cache, checkpoint=str(work / "checkpoint.pt")))
    evaluated.fit(data["train"], data["val"], make_context(config))
    assert np.allclose(evaluated.predict(data["test"], ctx).probabilities, probs, atol=1e-6)


def test_timm_vit_trains_at_the_data_size(store, synthetic_cache):
    from derma_core.testing import fit_predict, make_context

    from derma_resnet18.classifier import ResNet18Classifier

    config = _config(store, synthetic_cache, **TINY_VIT, **{"train.epochs": 1})
    clf = ResNet18Classifier(config)
    preds = fit_predict(clf, runner.load_dataset(config), ctx=make_context(config))
    assert preds.info["image_size"] == 32  # position embeddings built for 32 px
    assert np.allclose(preds.probabilities.sum(axis=1), 1.0)
    assert clf.model.backbone.patch_embed.img_size == (32, 32)
