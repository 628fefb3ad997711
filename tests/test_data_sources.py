"""Dataset sources through the hook: registration, ham10000 (prepared folder), DermaMNIST .npz,
image folder + label CSV (labels from the CSV); and VQA exports."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core import plugins
from derma_core.data.prepare import PrepParams, prepare
from derma_core.data.synthetic import generate
from derma_core.data.datasets.ham10000 import LABEL_SET
from derma_core.data.vqa import TEMPLATE_ID
from derma_core.prompts import SEED_PROMPTS

LABELS = LABEL_SET.codes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("src")
    raw = generate(base / "raw", n=170, seed=11, workers=1)
    prepare(raw, base / "prep", PrepParams(size=16, split="grouped"), workers=1, progress=False, log=lambda m: None)
    return base


def test_sources_registered():
    from derma_core.data.datasets import builtin_descriptors
    from derma_core.data.descriptor import DatasetDescriptor

    registered = plugins.datasets()
    assert {"synthetic", "ham10000", "dermamnist", "folder"} <= set(registered)
    for descriptor in builtin_descriptors():  # every built-in descriptor, under its own name
        assert registered[descriptor.name].obj is descriptor
    assert all(isinstance(registered[n].obj, DatasetDescriptor) for n in ("synthetic", "dermamnist", "folder"))


def test_ham10000_source_reads_prepared_folder(prepared):
    ds = plugins.get_dataset_source("ham10000").obj({"data": {"dir": str(prepared / "prep")}})
    assert ds.name == "ham10000" and ds.synthetic is True  # prep's default name; the raw folder's marker
    assert ds.descriptor.name == "ham10000" and ds.label_set == LABEL_SET
    assert ds.dir == prepared / "prep" and ds.manifest["params"]["size"] == 16
    assert ds["train"].load_image(0).size == (16, 16)
    with pytest.raises(ValueError, match="data.dir"):
        plugins.get_dataset_source("ham10000").obj({"data": {"dir": None}})
    with pytest.raises(FileNotFoundError, match="derma prep --raw"):
        plugins.get_dataset_source("ham10000").obj({"data": {"dir": str(prepared / "raw")}})


def _npz(path, size=28, n=(30, 5, 10)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 7, (k, 1))
    np.savez(path, **arrays)
    return arrays


def test_dermamnist_source(tmp_path):
    arrays = _npz(tmp_path / "dermamnist_64.npz", size=64)
    source = plugins.get_dataset_source("dermamnist").obj
    with pytest.warns(UserWarning, match="image-level"):
        ds = source({"data": {"path": str(tmp_path), "size": 64}, "quiet": True})  # a folder: picks _64
    assert ds.name == "dermamnist-64" and len(ds["train"]) == 30 and len(ds["test"]) == 10
    np.testing.assert_array_equal(ds["val"].cache, arrays["val_images"])
    assert ds["test"].labels == [LABELS[k] for k in arrays["test_labels"][:, 0]]
    assert ds.descriptor.name == "dermamnist" and ds.label_set == LABEL_SET and ds.descriptor.grouping is None
    assert ds["test"].group_ids.tolist() == ds["test"].ids  # image-level: each image its own group
    assert np.asarray(ds["train"].load_image(3)).shape == (64, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match="dermamnist_128.npz"):
            source({"data": {"path": str(tmp_path), "size": 128}, "quiet": True})
        bad = dict(arrays)
        bad["train_labels"] = np.full((30, 1), 9)
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match="train_labels"):
            source({"data": {"path": str(tmp_path / "bad.npz")}, "quiet": True})


def test_folder_source(prepared, tmp_path):
    images = tmp_path / "clinic" / "imgs"
    images.mkdir(parents=True)
    meta = pd.read_csv(prepared / "raw" / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    rows = []
    for r in meta.itertuples():
        src = next((prepared / "raw").glob(f"HAM10000_images_part_*/{r.image_id}.jpg"))
        shutil.copy(src, images / f"{r.image_id}.jpg")
        rows.append({"image": f"imgs/{r.image_id}.jpg", "label": r.dx, "lesion_id": r.lesion_id})
    csv = tmp_path / "clinic" / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    config = {"data": {"path": str(csv), "image_root": str(tmp_path / "clinic"), "size": 16,
                       "cache_dir": str(tmp_path / "cache")}, "quiet": True}
    ds = plugins.get_dataset_source("folder").obj(config)
    assert ds.name == "folder-labels" and sum(len(s) for s in ds.splits.values()) == 170
    assert all(set(ds[s].labels) == set(LABELS) for s in ("train", "val", "test"))
    # without a spec, the label set is the CSV's distinct labels, sorted; grouped by its lesion_id
    assert ds.label_set.codes == tuple(sorted(LABELS)) and ds.descriptor.grouping == "lesion"
    assert (ds["train"].frame["group_id"] == ds["train"].frame["lesion_id"]).all()
    again = plugins.get_dataset_source("folder").obj(config)
    assert again.digest == ds.digest
    # a label CSV with other classes is a dataset of those classes
    pd.DataFrame([dict(r, label="scc" if int(r["lesion_id"][-1]) % 2 else "ak") for r in rows]).to_csv(csv, index=False)
    other = plugins.get_dataset_source("folder").obj(config)
    assert other.label_set.codes == ("ak", "scc") and other.digest != ds.digest


def test_vqa_question_file_exact_format(prepared):
    from derma_core.cli import cli

    out = prepared / "q.jsonl"
    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(prepared / "prep"), "--prompt", "p1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    test = pd.read_csv(prepared / "prep" / "splits" / "test.csv", dtype=str)
    assert len(lines) == len(test)
    first = test.iloc[0]
    expected = (f'{{"question_id": "{first.id}", "image": "{first.id}.jpg", "text": "{SEED_PROMPTS["p1"]}", '
                f'"answer": "{first.label}", "answer_id": {LABEL_SET.index(first.label)}, "template_id": "{TEMPLATE_ID}"}}')
    assert lines[0] == expected
    p2 = CliRunner().invoke(cli, ["vqa", "--prepared", str(prepared / "prep"), "--prompt", "p2", "--split", "all"])
    assert p2.exit_code == 0
    records = [json.loads(l) for l in (prepared / "prep" / "vqa" / "all_p2.jsonl").read_text().splitlines()]
    assert len(records) == 170 and records[0]["text"] == SEED_PROMPTS["p2"]  # double spaces kept


def test_vqa_llava_format(prepared):
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(prepared / "prep"), "--prompt", "p4",
                                      "--format", "llava", "--split", "train"])
    assert result.exit_code == 0, result.output
    data = json.loads((prepared / "prep" / "vqa" / "llava_train_p4.json").read_text())
    train = pd.read_csv(prepared / "prep" / "splits" / "train.csv", dtype=str)
    assert len(data) == len(train)
    assert data[0] == {"id": train.id[0], "image": f"{train.id[0]}.jpg", "conversations": [
        {"from": "human", "value": "<image>\n" + SEED_PROMPTS["p4"]}, {"from": "gpt", "value": train.label[0]}]}
    assert (prepared / "prep" / "images" / data[0]["image"]).exists()
    bad = CliRunner().invoke(cli, ["vqa", "--prepared", str(prepared / "prep"), "--prompt", "p99"])
    assert bad.exit_code == 1 and "unknown prompt 'p99'" in bad.output
