"""clip_zeroshot and linear_probe on tiny models built at test time (offline): a tiny open_clip
model with open_clip's own BPE tokenizer, a tiny timm ViT and a tiny timm ConvNeXt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from derma_core import runner
from derma_core.data.calibration_split import calibration_split
from derma_core.evaluation.metrics import classification_metrics
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.testing import make_context

from derma_foundation import features as feats_mod
from derma_foundation.encoders import BIOMEDCLIP, EncoderError, Preprocess, build_encoder
from derma_foundation.probe import LinearProbeClassifier, fraction_rows
from derma_foundation.zeroshot import TEMPLATES, CLIPZeroShotClassifier, build_prompts

#: Tiny timm encoders (random init): a 1-block ViT and a 1-block-per-stage ConvNeXt, at 32 px.
TINY_VIT = {"model.name": "timm:vit_tiny_patch16_224", "model.pretrained": "none",
            "model.kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "img_size": 32}}
TINY_CONVNEXT = {"model.name": "timm:convnext_atto", "model.pretrained": "none", "model.image_size": 32,
                 "model.kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}


def _client():
    import mlflow

    from derma_core import tracking

    return mlflow.MlflowClient(tracking.resolve_tracking_uri())


def test_prompts_are_templates_times_class_names():
    rows = build_prompts(["a photo of {}.", "{}"], "both", HAM)
    assert len(rows) == len(HAM) * 2 * 2
    assert [r["label"] for r in rows[::4]] == list(HAM.codes)  # the label set's order
    assert "a photo of melanoma." in [r["prompt"] for r in rows if r["label"] == "mel"]
    assert "nv" in [r["prompt"] for r in rows if r["label"] == "nv"]
    assert len(build_prompts(["{}"], "code", HAM)) == len(HAM)
    with pytest.raises(ValueError, match="no \\{\\}"):
        build_prompts(["a photo"], "both", HAM)


def test_preprocess_resizes_crops_and_normalises():
    images = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    same = Preprocess(40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")(images)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(same, expected, atol=1e-6)
    cropped = Preprocess(20, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", crop_pct=0.5)(images)
    assert cropped.shape == (2, 3, 20, 20)  # 40 px is already size / crop_pct: a pure centre crop
    assert torch.allclose(cropped, images.permute(0, 3, 1, 2).float()[..., 10:30, 10:30] / 255, atol=1e-6)


def test_zeroshot_is_softmax_of_scaled_cosine_with_open_clips_tokenizer(make_config, tiny_dataset):
    """The predictions equal open_clip's own zero-shot recipe computed here independently."""
    import open_clip

    config = make_config("clip_zeroshot", **{"prompts.templates": ["a dermatoscopic image of {}.", "{}"]})
    clf = CLIPZeroShotClassifier(config)
    ctx = make_context(config, dataset=tiny_dataset)
    test = tiny_dataset["test"].subset(np.arange(12))
    clf.fit(tiny_dataset["train"], tiny_dataset["val"], ctx)
    preds = clf.predict(test, ctx)
    assert isinstance(clf.encoder.tokenizer, open_clip.SimpleTokenizer)  # open_clip's bundled BPE vocab

    model, tok = clf.encoder.clip, open_clip.get_tokenizer("derma-tiny-clip")
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(test.cache)).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        image = model.encode_image((x - mean) / std, normalize=True)
        classes = []
        for label, name in zip(HAM.codes, ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                                        "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                                        "melanocytic nevi", "vascular lesions"]):
            texts = [f"a dermatoscopic image of {name}.", name, f"a dermatoscopic image of {label}.", label]
            emb = model.encode_text(tok(texts), normalize=True).mean(0)
            classes.append(emb / emb.norm())
        expected = torch.softmax(model.logit_scale.exp() * image @ torch.stack(classes).T, dim=1).numpy()
    assert np.allclose(preds.probabilities, expected, atol=1e-4)
    assert np.allclose(preds.probabilities.sum(axis=1), 1.0)


def test_clip_zeroshot_run_logs_prompts_and_reuses_features(store, make_config, tiny_dataset):
    config = make_config("clip_zeroshot")
    first = runner.run(config)
    client = _client()
    path = client.download_artifacts(first.run_id, "tables/prompts.csv", str(store / "dl"))
    import pandas as pd

    prompts = pd.read_csv(path)
    # templates auto: the dataset is dermoscopic, so the dermoscopy templates
    assert config["prompts"]["templates"] == "auto" and tiny_dataset.descriptor.modality == "dermoscopic"
    assert sorted(set(prompts["template"])) == sorted(TEMPLATES["dermoscopic"])
    assert len(prompts) == len(tiny_dataset.label_set) * 2 * len(TEMPLATES["dermoscopic"])
    params = client.get_run(first.run_id).data.params
    assert params["prompt_modality"] == "dermoscopic"
    assert params["resolved_model"] == "tiny-clip" and params["random_weights"] == "True"
    assert params["model"] == "tiny-clip" and params["image_size"] == "64"  # what auto resolved to
    # a second run reads the test features the first one cached
    before = feats_mod.EXTRACTIONS["count"]
    clf = CLIPZeroShotClassifier(config)
    again = clf.predict(tiny_dataset["test"], make_context(config, dataset=tiny_dataset))
    assert feats_mod.EXTRACTIONS["count"] == before and again.info["features_cached"]
    k = len(tiny_dataset.label_set)
    assert classification_metrics(tiny_dataset["test"].y, again.y_pred, k)["macro_f1"] == first.metrics["test_macro_f1"]


def test_linear_probe_beats_prior_and_hits_the_feature_cache(store, make_config, tiny_dataset, prior_macro_f1,
                                                             monkeypatch):
    config = make_config("linear_probe", **{"probe.C": [0.1, 1.0]})
    first = runner.run(config)
    assert first.metrics["test_macro_f1"] > prior_macro_f1 + 0.05
    prepared = next(Path(config["data"]["cache_dir"]).glob("synthetic-*/prepared-*"))
    files = sorted(p.name for p in (prepared / "features").iterdir())
    assert any(f.startswith("train-") for f in files) and not any(f.endswith(".tmp") for f in files)

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(feats_mod, "extract", no_extraction)
    clf = LinearProbeClassifier(config)
    ctx = make_context(config, dataset=tiny_dataset)
    # the run fitted on val's selection part (the rest is the calibration split): the same rows hit the cache
    selection = calibration_split(tiny_dataset["val"], config, clf).selection
    assert len(selection) < len(tiny_dataset["val"])
    clf.fit(tiny_dataset["train"], selection, ctx)
    again = clf.predict(tiny_dataset["test"], ctx)
    assert again.info["features_cached"]
    k = len(tiny_dataset.label_set)
    assert classification_metrics(tiny_dataset["test"].y, again.y_pred, k)["macro_f1"] == first.metrics["test_macro_f1"]


@pytest.mark.parametrize("encoder", [TINY_VIT, TINY_CONVNEXT], ids=["vit", "convnext"])
def test_probe_on_tiny_timm_models_beats_prior(make_config, tiny_dataset, prior_macro_f1, encoder):
    config = make_config("linear_probe", **encoder, **{"features.cache": False, "probe.C": [0.1, 1.0]})
    clf = LinearProbeClassifier(config)
    ctx = make_context(config, dataset=tiny_dataset)
    clf.fit(tiny_dataset["train"], tiny_dataset["val"], ctx)
    assert clf.encoder.preprocess.size == 32
    preds = clf.predict(tiny_dataset["test"], ctx)
    f1 = classification_metrics(tiny_dataset["test"].y, preds.y_pred, len(tiny_dataset.label_set))["macro_f1"]
    assert f1 > prior_macro_f1 + 0.05


def test_label_efficiency_fraction_is_grouped_and_stratified(tiny_dataset):
    train = tiny_dataset["train"]
    rows = fraction_rows(train, 0.1, seed=0)
    lesions = np.asarray(train.group_ids)
    kept = set(lesions[rows])
    assert all(lesions[i] not in kept for i in set(range(len(train))) - set(rows))  # whole lesions only
    assert set(np.asarray(train.labels)[rows]) == set(train.labels)  # every class kept
    assert 0.05 * len(train) <= len(rows) <= 0.2 * len(train)
    assert np.array_equal(fraction_rows(train, 0.1, seed=0), rows)
    assert len(fraction_rows(train, 1.0, seed=0)) == len(train)


def test_random_weights_are_refused_on_real_data():
    real = {"data": {"source": "ham10000"}, "model": {"name": "tiny-clip"}}
    with pytest.raises(EncoderError, match="allow_random=true"):
        build_encoder(real)
    real["model"]["allow_random"] = True
    assert build_encoder(real).random_weights
    assert build_encoder({"data": {"source": "synthetic"}, "model": {"name": "auto"}}).identity["name"] == "tiny-clip"


def test_offline_hub_failure_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderError) as info:
        build_encoder({"data": {"source": "ham10000"}, "model": {"name": "auto"}})
    message = str(info.value)
    assert "\n" not in message and BIOMEDCLIP in message and "huggingface-cli download" in message
