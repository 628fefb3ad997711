"""The built-in synthetic dataset: HAM10000's raw layout, proportions, lesion structure,
determinism, learnability, the `synthetic` source's generate-once cache; the generic generator's
class counts and per-class looks for any number of classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derma_core import plugins
from derma_core.data import prepare as prepare_module
from derma_core.data import synthetic
from derma_core.data.prepare import PrepParams, load_prepared, prepare
from derma_core.data.datasets import ham10000
from derma_core.data.splits import SPLITS

LABELS = ham10000.LABEL_SET.codes


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("s") / "raw", n=400, seed=7, workers=1)


def test_raw_layout_and_metadata(raw):
    meta = pd.read_csv(raw / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert len(meta) == 400 and meta["image_id"].is_unique
    assert meta["image_id"].str.fullmatch(r"ISIC_\d{7}").all() and meta["lesion_id"].str.fullmatch(r"HAM_\d{7}").all()
    parts = [sorted((raw / f"HAM10000_images_part_{k}").glob("*.jpg")) for k in (1, 2)]
    assert len(parts[0]) + len(parts[1]) == 400 and min(len(p) for p in parts) > 0
    with Image.open(parts[0][0]) as im:
        assert im.format == "JPEG" and im.size == (600, 450) and im.mode == "RGB"
    # several images per lesion, one label per lesion
    per_lesion = meta.groupby("lesion_id")
    assert per_lesion.size().max() >= 3 and (per_lesion.size() > 1).sum() > 20
    assert per_lesion["dx"].nunique().max() == 1
    # HAM10000's class proportions (every class kept to at least 12 images)
    counts = meta["dx"].value_counts()
    assert counts.min() >= 12
    free = [c for c in LABELS if counts[c] > 12]
    share = sum(ham10000.CLASS_COUNTS[c] for c in free)
    for label in free:  # classes above the minimum keep HAM10000's proportions among themselves
        expected = counts[free].sum() * ham10000.CLASS_COUNTS[label] / share
        assert abs(counts[label] - expected) <= 1, (label, counts[label], expected)
    assert counts["nv"] / len(meta) > 0.6  # nv dominates as in HAM10000 (67 %)
    assert set(meta["sex"]) <= {"male", "female", "unknown"}
    assert "README.txt" in {p.name for p in raw.iterdir()}
    assert synthetic.read_marker(raw)["dataset"] == "ham10000"  # marked: derma prep records synthetic: true


def test_class_counts_sum_and_minimum():
    for n in (168, 500, 1500, 10015):
        counts = synthetic.class_counts(n, ham10000.CLASS_COUNTS)
        assert sum(counts.values()) == n and min(counts.values()) >= 12
    assert synthetic.class_counts(10015, ham10000.CLASS_COUNTS) == ham10000.CLASS_COUNTS
    with pytest.raises(ValueError, match="too small for 7 classes; use at least 168"):
        synthetic.class_counts(50, ham10000.CLASS_COUNTS)
    many = synthetic.class_counts(3000, {f"c{k}": 1 + k for k in range(114)}, min_per_class=12)
    assert sum(many.values()) == 3000 and min(many.values()) == 12 and list(many) == [f"c{k}" for k in range(114)]


def test_deterministic(tmp_path):
    a = synthetic.build_metadata(200, 5)
    b = synthetic.build_metadata(200, 5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic.build_metadata(200, 6))
    row = a.iloc[0]
    style = ham10000.SYNTH_STYLES[row.draw_as]
    x = np.asarray(synthetic.draw_lesion(style, int(row.lesion_seed), int(row.image_seed)))
    y = np.asarray(synthetic.draw_lesion(style, int(row.lesion_seed), int(row.image_seed)))
    np.testing.assert_array_equal(x, y)
    assert (a["lesion_id"] == a["group_id"]).all() and a["skin_type"].isin(list("123456")).all()


@pytest.mark.parametrize("count", [2, 6, 114])
def test_every_class_gets_its_own_look(count):
    """Generic styles: distinct for any number of classes (colour, size, border, blur, texture)."""
    styles = [synthetic.generic_style(k, count) for k in range(count)]
    keys = {(s["rgb"], round(s["radius"], 3), round(s["irregular"], 3), s["blur"], s["texture"]) for s in styles}
    assert len(keys) == count
    assert {s["texture"] for s in styles} <= set(synthetic.TEXTURES)
    colours = np.array([s["rgb"] for s in styles], dtype=float)
    nearest = min(np.abs(colours[i] - colours[j]).sum() for i in range(count) for j in range(i + 1, count))
    assert nearest > (20 if count <= 6 else 0)  # few classes: clearly different colours
    for modality in ("dermoscopic", "clinical"):
        img = synthetic.draw_lesion(styles[-1], 1, 2, modality, skin_type=5)
        assert img.size == (synthetic.WIDTH, synthetic.HEIGHT) and img.mode == "RGB"


def _features(split):
    """Colour statistics of the centre and a coarse 4x4 colour layout: a deliberately simple model."""
    x = np.asarray(split.cache, dtype=np.float32) / 255
    n, h = len(x), x.shape[1]
    centre = x[:, h // 4: 3 * h // 4, h // 4: 3 * h // 4].reshape(n, -1, 3)
    coarse = x.reshape(n, 4, h // 4, 4, h // 4, 3).mean((2, 4)).reshape(n, -1)
    return np.hstack([centre.mean(1), centre.std(1), np.percentile(centre, [5, 50, 95], axis=1).transpose(1, 0, 2)
                      .reshape(n, -1), coarse])


def test_synthetic_set_is_learnable_but_not_trivial(raw, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    prepare(raw, tmp_path / "p", PrepParams(size=32, split="grouped"), workers=1, progress=False, log=lambda m: None)
    ds = load_prepared(tmp_path / "p")
    model = LogisticRegression(max_iter=3000, C=3.0).fit(_features(ds["train"]), ds["train"].y)
    test = ds["test"]
    pred = model.predict(_features(test))
    majority = np.bincount(ds["train"].y).argmax()
    baseline = accuracy_score(test.y, np.full(len(test), majority))
    acc = accuracy_score(test.y, pred)
    assert acc > baseline + 0.1, (acc, baseline)
    assert balanced_accuracy_score(test.y, pred) > 0.4  # well above the 1/7 of always answering nv
    assert acc < 0.995  # noise and atypical lesions keep it from being trivially perfect


def test_synthetic_source_generates_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMA_CACHE_DIR", str(tmp_path / "env-cache"))
    config = {"data": {"source": "synthetic", "synthetic_n": 200, "synthetic_seed": 1, "size": 16, "cache_dir": None},
              "quiet": True}
    source = plugins.get_dataset_source("synthetic").obj
    ds = source(config)
    assert ds.synthetic is True and ds.name == "synthetic" and len(ds.digest) == 64
    assert (tmp_path / "env-cache").is_dir()  # DERMA_CACHE_DIR honoured
    for s in SPLITS:
        assert set(ds[s].labels) == set(LABELS), s  # every class in val and test too
        assert ds[s].cache is not None and ds[s].cache.shape[1:] == (16, 16, 3)
    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(a))
    again = source(config)
    assert again.digest == ds.digest and not calls  # reused, not regenerated
    # a folder prepared by another version of the pipeline (here: another resize library) is rebuilt
    monkeypatch.setattr(prepare_module, "resampler", lambda: "lanczos (some other library 1.0)")
    rebuilt = source(config)
    assert rebuilt.manifest["resampler"] == "lanczos (some other library 1.0)" and rebuilt.digest != ds.digest
    monkeypatch.undo()
    monkeypatch.setenv("DERMA_CACHE_DIR", str(tmp_path / "env-cache"))
    assert source(config).digest == ds.digest  # and back
    # data.cache_dir wins over the environment
    config["data"]["cache_dir"] = str(tmp_path / "cfg-cache")
    monkeypatch.undo()
    other = source(config)
    assert other.digest == ds.digest and (tmp_path / "cfg-cache").is_dir()


def test_synthetic_source_refuses_a_stray_data_dir():
    with pytest.raises(ValueError, match="--dataset ham10000"):
        plugins.get_dataset_source("synthetic").obj({"data": {"dir": "/some/prepared"}})
