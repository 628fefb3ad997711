"""Any dataset through the generic pipeline: two descriptors defined here (three lesion-grouped
dermoscopic classes with a label-level option; two clinical classes without grouping, with an
official split) drawn by `derma synth --like`, read by their readers, verified, split and
prepared by `derma prep --dataset`, loaded back with their facts; refusals naming file and line;
folders of the previous version; the run-time check that --dataset matches the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core import hookimpl, plugins
from derma_core.cli import cli
from derma_core.data import raw as rawmod
from derma_core.data import synthetic
from derma_core.data.datasets.ham10000 import DESCRIPTOR as HAM10000
from derma_core.data.descriptor import DatasetDescriptor, DatasetOption, SubgroupColumn
from derma_core.data.prepare import PREP_VERSION, PrepParams, load_prepared, prepare
from derma_core.data.raw import PrepError
from derma_core.data.splits import SPLITS
from derma_core.labels import LabelSet

QUIET = dict(progress=False, log=lambda m: None)
#: The built-in synthetic set n=200, seed=3 (24 px) as the code drew, split and prepared it before
#: datasets had descriptors: its metadata table and split ids (the same on any machine), and, in
#: the environment they were recorded in (Pillow 13.0.0, cykooz-resizer 4.0.1), its JPEGs and digest
CSV_200_3 = "4245a04e246404527197f3339522ac7d885d8f0b7adf9df1b77ddfbe58dfe23b"
IDS_200_3 = "c53f8bb6548346133fb46ba6591f193d51d38a81518fe57312749807ea4ab6ae"
RAW_200_3 = "1f562ffd8d2c05a6272c5841517bd15d8a83b6a180861943dcc548b4f24f430a"
DIGEST_200_3 = "5e7ffa877e288cc609386c330eef1ecc5ea649e11914e896dab9bf3de7fc9957"
RECORDED_WITH = ("13.0.0", "lanczos3 (cykooz-resizer 4.0.1)")

# ---------------------------------------------------------------- "tri": 3 classes, lesions, a label option
FINE = LabelSet(codes=("a", "b", "c"), names=("Alpha lesion", "Beta lesion", "Gamma lesion"),
                groupings={"malignancy": {"a": "malignant", "b": "benign", "c": "benign"}},
                positive={"malignancy": "malignant"}, focus="a")
COARSE = LabelSet(codes=("ab", "c"), names=("Alpha or beta", "Gamma lesion"))


def tri_labels(options: Mapping[str, str]) -> LabelSet:
    return COARSE if options["level"] == "coarse" else FINE


def tri_counts(options: Mapping[str, str]) -> dict[str, int]:
    return {"ab": 40, "c": 60} if options["level"] == "coarse" else {"a": 10, "b": 30, "c": 60}


def tri_reader(root: Path, options: Mapping[str, str]) -> rawmod.RawData:
    meta = root / "meta.csv"
    frame, problems = rawmod.read_table(meta, ("img", "lesion", "diagnosis"), ("sex", "age"), aliases={})
    frame = frame.rename(columns={"img": "image_id", "diagnosis": "dx"})
    if options["level"] == "coarse":
        frame["dx"] = frame["dx"].replace({"a": "ab", "b": "ab"})
    frame["group_id"] = frame["lesion"]
    images, more = rawmod.find_images(root / "pics")
    return rawmod.RawData(root, meta, frame, images, problems + more)


def tri_writer(out: Path, draws: pd.DataFrame, options: Mapping[str, str]) -> list[Path]:
    pd.DataFrame({"img": draws["image_id"], "lesion": draws["group_id"], "diagnosis": draws["dx"],
                  "sex": draws["sex"], "age": draws["age"]}).to_csv(out / "meta.csv", index=False)
    return [out / "pics" / f"{i}.png" for i in draws["image_id"]]


TRI = DatasetDescriptor(
    name="tri", title="Tri (test)", labels=tri_labels, grouping="lesion", modality="dermoscopic",
    subgroups=(SubgroupColumn("sex"), SubgroupColumn("age", kind="banded", bands=(40, 60))),
    licence="test licence", citation="Test et al. 2026", layout="meta.csv and pics/*.png",
    options=(DatasetOption("level", "fine", ("fine", "coarse"), "label level"),),
    class_counts=tri_counts, reader=tri_reader, synth_writer=tri_writer)

# ---------------------------------------------------------------- "flat": 2 clinical classes, no groups, official split
FLAT_LABELS = LabelSet(codes=("benign", "malignant"))


def flat_reader(root: Path, options: Mapping[str, str]) -> rawmod.RawData:
    meta = root / "data.csv"
    frame, problems = rawmod.read_table(meta, ("file", "label", "partition"), ("fitzpatrick",), aliases={})
    frame = frame.rename(columns={"partition": "split"})
    frame["dx"] = frame["label"]  # the raw label stays as metadata, under a name derma's tables use
    frame["image_id"] = frame.pop("file").str.replace(".jpg", "", regex=False)
    frame["group_id"] = ""
    images, more = rawmod.find_images(root / "img")
    return rawmod.RawData(root, meta, frame, images, problems + more)


def flat_writer(out: Path, draws: pd.DataFrame, options: Mapping[str, str]) -> list[Path]:
    pd.DataFrame({"file": draws["image_id"] + ".jpg", "label": draws["dx"], "partition": draws["split"],
                  "fitzpatrick": draws["skin_type"]}).to_csv(out / "data.csv", index=False)
    return [out / "img" / f"{i}.jpg" for i in draws["image_id"]]


FLAT = DatasetDescriptor(
    name="flat", title="Flat (test)", labels=FLAT_LABELS, grouping=None, modality="clinical",
    subgroups=(SubgroupColumn("fitzpatrick", kind="ordinal", order=tuple("123456")),), split_policy="official",
    access="ask the test's authors; data.csv and img/*.jpg", reader=flat_reader, synth_writer=flat_writer)


class DatasetsPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("tri", TRI)
        register("flat", FLAT)


@pytest.fixture
def registered():
    plugin = DatasetsPlugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-datasets")
    yield
    plugins.pm.unregister(plugin)


@pytest.fixture(scope="module")
def tri_raw(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("tri") / "raw", n=150, seed=4, workers=1, dataset=TRI)


@pytest.fixture(scope="module")
def flat_raw(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("flat") / "raw", n=80, seed=2, workers=1, dataset=FLAT)


def _balanced_accuracy(ds) -> float:
    """A logistic regression on the centre's colour statistics, trained on train, on test: a
    deliberately simple model that any class's own appearance should let beat chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    def features(split):
        x = np.asarray(split.cache, dtype=np.float32) / 255
        h = x.shape[1]
        c = x[:, h // 4: 3 * h // 4, h // 4: 3 * h // 4].reshape(len(x), -1, 3)
        return np.hstack([c.mean(1), c.std(1), np.percentile(c, [5, 50], axis=1).transpose(1, 0, 2).reshape(len(x), -1)])

    model = LogisticRegression(max_iter=3000, C=3.0).fit(features(ds["train"]), ds["train"].y)
    return balanced_accuracy_score(ds["test"].y, model.predict(features(ds["test"])))


def test_synthetic_set_in_the_datasets_own_layout(tri_raw, flat_raw):
    meta = pd.read_csv(tri_raw / "meta.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == ["img", "lesion", "diagnosis", "sex", "age"] and len(meta) == 150
    assert set(meta["diagnosis"]) == {"a", "b", "c"} and meta["diagnosis"].value_counts()["c"] > 60
    per_lesion = meta.groupby("lesion")
    assert per_lesion.size().max() > 1 and per_lesion["diagnosis"].nunique().max() == 1  # lesions: several images
    assert len(list((tri_raw / "pics").glob("*.png"))) == 150
    assert synthetic.read_marker(tri_raw)["dataset"] == "tri"
    flat = pd.read_csv(flat_raw / "data.csv", dtype=str, keep_default_na=False)
    assert flat["file"].is_unique and set(flat["partition"]) == set(SPLITS)
    for label in ("benign", "malignant"):  # every class in every official split
        assert set(flat.loc[flat["label"] == label, "partition"]) == set(SPLITS)
    assert flat["fitzpatrick"].isin(list("123456")).all()


def test_prep_and_load_a_three_class_dataset(tri_raw, tmp_path, registered):
    out = tmp_path / "p"
    lines: list[str] = []
    manifest = prepare(tri_raw, out, PrepParams(size=16), workers=1, dataset="tri", progress=False,
                       log=lines.append)
    assert manifest["params"]["split"] == "grouped" and manifest["synthetic"] is True and manifest["name"] == "tri"
    facts = manifest["dataset"]
    assert facts["name"] == "tri" and facts["labels"] == FINE.to_dict() and facts["grouping"] == "lesion"
    assert facts["options"] == {"level": "fine"} and facts["subgroups"][1]["kind"] == "banded"
    assert set(manifest["counts"]["test"]["by_class"]) == {"a", "b", "c"}
    assert not any("test licence" in line for line in lines)  # synthetic data: no licence line
    ds = load_prepared(out)
    assert ds.descriptor.reader is tri_reader and ds.label_set == FINE  # the registered descriptor
    groups = [set(ds[s].group_ids) for s in SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    for s in SPLITS:
        frame = ds[s].frame
        assert list(frame.columns[:4]) == ["id", "label", "group_id", "image_path"]
        assert (frame["group_id"] == frame["lesion"]).all()  # the raw grouping column stays as metadata
        assert set(frame["label"]) == {"a", "b", "c"} and ds[s].y.max() == 2
    assert _balanced_accuracy(ds) > 0.5  # each class its own look (chance: 1/3)
    # the same folder without the plugin that registered "tri": its recorded facts
    plugin = plugins.pm.unregister(name="test-datasets")
    try:
        alone = load_prepared(out)
    finally:
        plugins.pm.register(plugin, name="test-datasets")
    assert alone.descriptor.reader is None and alone.label_set == FINE and alone.descriptor.subgroups == TRI.subgroups
    assert alone.digest == ds.digest


def test_a_label_option_changes_the_label_set(tri_raw, tmp_path, registered):
    manifest = prepare(tri_raw, tmp_path / "c", PrepParams(size=16), workers=1, dataset="tri",
                       options={"level": "coarse"}, **QUIET)
    assert manifest["dataset"]["labels"]["codes"] == ["ab", "c"] and manifest["dataset"]["options"] == {"level": "coarse"}
    ds = load_prepared(tmp_path / "c")
    assert ds.label_set == COARSE and set(ds["train"].labels) == {"ab", "c"}
    with pytest.raises(PrepError, match="unknown option 'depth'"):
        prepare(tri_raw, tmp_path / "x", PrepParams(size=16), dataset="tri", options={"depth": "3"}, **QUIET)
    with pytest.raises(PrepError, match="option level='medium': use one of fine, coarse"):
        prepare(tri_raw, tmp_path / "x", PrepParams(size=16), dataset="tri", options={"level": "medium"}, **QUIET)


def test_label_outside_the_set_is_refused_naming_file_and_line(tri_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tri_raw, raw)
    meta = pd.read_csv(raw / "meta.csv", dtype=str, keep_default_na=False)
    meta.loc[6, "diagnosis"] = "zeta"
    meta.loc[9, "diagnosis"] = "B"  # another case of a code is that code
    meta.to_csv(raw / "meta.csv", index=False)
    with pytest.raises(PrepError) as err:
        prepare(raw, tmp_path / "p", PrepParams(size=16), dataset=TRI, **QUIET)
    first = str(err.value).splitlines()[0]
    assert first == (f"error: meta.csv line 8 ({meta['img'][6]}): unknown label 'zeta'; use one of a, b, c or "
                     "remove the row")
    assert "line 11" not in str(err.value)
    report = json.loads((tmp_path / "p" / "prep_report.json").read_text())
    assert report["problem_counts"] == {"unknown_label": 1} and report["fatal"] == 1


def test_seed_split_is_refused_on_another_label_set(tri_raw, tmp_path):
    with pytest.raises(PrepError) as err:
        prepare(tri_raw, tmp_path / "p", PrepParams(size=16, split="seed"), dataset=TRI, **QUIET)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "--split seed" in message and "HAM10000's seven classes" in message
    assert "this dataset has a, b, c" in message and not (tmp_path / "p").exists()
    with pytest.raises(PrepError, match="dataset tri has no official split; use --split grouped"):
        prepare(tri_raw, tmp_path / "p", PrepParams(size=16, split="official"), dataset=TRI, **QUIET)


def test_official_split_and_no_grouping(flat_raw, tmp_path, registered):
    out = tmp_path / "p"
    manifest = prepare(flat_raw, out, PrepParams(size=16), workers=1, dataset="flat", **QUIET)
    assert manifest["params"]["split"] == "official" and manifest["dataset"]["split_policy"] == "official"
    assert manifest["dataset"]["grouping"] is None and manifest["dataset"]["modality"] == "clinical"
    ds = load_prepared(out)
    truth = pd.read_csv(flat_raw / "data.csv", dtype=str, keep_default_na=False)
    official = dict(zip(truth["file"].str.replace(".jpg", "", regex=False), truth["partition"]))
    for s in SPLITS:
        assert all(official[i] == s for i in ds[s].ids)  # exactly the dataset's own split
        assert ds[s].group_ids.tolist() == ds[s].ids  # no grouping: each image its own group
        assert "split" not in ds[s].frame.columns and "fitzpatrick" in ds[s].frame.columns
        assert (ds[s].frame["raw_label"] == ds[s].frame["label"]).all()  # kept, renamed
    assert sum(len(ds[s]) for s in SPLITS) == 80
    assert manifest["counts"]["train"]["groups"] == manifest["counts"]["train"]["images"]
    assert _balanced_accuracy(ds) > 0.65  # clinical drawings are learnable too (chance: 1/2)
    # the dataset's classes may also be split by derma's grouped split
    grouped = prepare(flat_raw, tmp_path / "g", PrepParams(size=16, split="grouped", ratios=(0.5, 0.25, 0.25)),
                      workers=1, dataset="flat", **QUIET)
    assert grouped["params"]["split"] == "grouped" and grouped["counts"]["train"]["images"] == 40


def test_bad_official_split_value_is_refused(flat_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(flat_raw, raw)
    meta = pd.read_csv(raw / "data.csv", dtype=str, keep_default_na=False)
    meta.loc[2, "partition"] = "holdout"
    meta.to_csv(raw / "data.csv", index=False)
    with pytest.raises(PrepError, match=r"data.csv line 4 \(.*\): official split 'holdout' is not one of "
                                        r"train, val, test; fix the split of this row, or prepare with --split grouped"):
        prepare(raw, tmp_path / "p", PrepParams(size=16), dataset=FLAT, **QUIET)
    prepare(raw, tmp_path / "g", PrepParams(size=16, split="grouped"), workers=1, dataset=FLAT, **QUIET)  # ignored


def test_synth_like_and_prep_dataset_cli(tmp_path, registered):
    runner = CliRunner()
    raw = tmp_path / "raw"
    result = runner.invoke(cli, ["synth", "--like", "flat", "--out", str(raw), "--n", "48", "--seed", "3",
                                 "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "in Flat (test)'s layout" in result.output and "derma prep --dataset flat" in result.output
    again = runner.invoke(cli, ["synth", "--like", "flat", "--out", str(raw), "--n", "48"])
    assert again.exit_code == 1 and "already holds files" in again.output
    out = tmp_path / "p"
    result = runner.invoke(cli, ["prep", "--dataset", "flat", "--raw", str(raw), "--out", str(out), "--size", "16",
                                 "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "prepared 48 images" in result.output and "/" not in result.output.split("(")[1].split(")")[0]
    assert load_prepared(out).descriptor.name == "flat"
    for args, needle in ((["synth", "--like", "dermamnist", "--out", str(tmp_path / "d")], "has no synthetic writer"),
                         (["synth", "--like", "nope", "--out", str(tmp_path / "d")], "unknown dataset 'nope'; known:"),
                         (["prep", "--dataset", "dermamnist", "--raw", str(raw), "--out", str(tmp_path / "q")],
                          "dataset dermamnist has no raw-folder reader"),
                         (["prep", "--dataset", "flat", "--raw", str(raw), "--out", str(tmp_path / "q"), "--split",
                           "seed"], "HAM10000's seven classes"),
                         (["prep", "--dataset", "flat", "--raw", str(raw), "--out", str(tmp_path / "q"), "--option",
                           "x"], "use KEY=VALUE")):
        bad = runner.invoke(cli, args)
        assert bad.exit_code in (1, 2) and needle in bad.output, (args, bad.output)
    ham = runner.invoke(cli, ["synth", "--out", str(tmp_path / "h"), "--n", "168", "--workers", "1", "-q"])
    assert ham.exit_code == 0 and (tmp_path / "h" / "HAM10000_metadata.csv").exists()  # today's default


def test_dataset_source_checks_what_the_folder_was_prepared_as(tri_raw, tmp_path, registered):
    out = tmp_path / "p"
    prepare(tri_raw, out, PrepParams(size=16), workers=1, dataset="tri", synthetic=False, **QUIET)
    config = {"data": {"dir": str(out)}}
    assert plugins.get_dataset_source("tri").obj(config).descriptor.name == "tri"
    with pytest.raises(ValueError, match="was prepared as dataset 'tri', not 'ham10000'; pass --dataset tri"):
        plugins.get_dataset_source("ham10000").obj(config)
    with pytest.raises(ValueError, match="add --dataset tri"):
        plugins.get_dataset_source("synthetic").obj(config)


def test_a_folder_of_the_previous_version_loads_as_ham10000(tmp_path):
    raw = synthetic.generate(tmp_path / "raw", n=168, seed=1, workers=1)
    out = tmp_path / "p"
    prepare(raw, out, PrepParams(size=16, folds=2), workers=1, **QUIET)
    current = load_prepared(out)
    # what version 1 wrote: no dataset block, lesion_id where group_id is now, no group_id
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["dataset"]
    manifest["version"], manifest["fingerprint"] = 1, "0" * 64  # version 1 fingerprinted other things
    (out / "manifest.json").write_text(json.dumps(manifest))
    for name in [f"{s}.csv" for s in SPLITS] + ["folds.csv"]:
        path = out / "splits" / name
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame = frame.drop(columns=["lesion_id"], errors="ignore").rename(columns={"group_id": "lesion_id"})
        frame.to_csv(path, index=False)
    old = load_prepared(out)
    assert old.descriptor is HAM10000 and old.label_set == HAM10000.labels and old.digest == current.digest
    for s in SPLITS:
        assert old[s].group_ids.tolist() == current[s].group_ids.tolist()
        assert old[s].frame["lesion_id"].tolist() == current[s].frame["lesion_id"].tolist()
    folded = load_prepared(out, fold=1)
    assert not set(folded["train"].group_ids) & set(folded["val"].group_ids)
    # a later prep of the same raw folder brings it up to date
    prepare(raw, out, PrepParams(size=16, folds=2), workers=1, **QUIET)
    assert json.loads((out / "manifest.json").read_text())["version"] == PREP_VERSION


def test_a_folder_drawn_before_markers_existed_is_adopted(tmp_path):
    raw = synthetic.generate(tmp_path / "raw", n=168, seed=1, workers=1)
    before = {p.name: p.read_bytes() for p in raw.rglob("*.jpg")}
    (raw / synthetic.MARKER).unlink()
    assert synthetic.read_marker(raw)["legacy"] is True  # still recognised by derma's README
    assert synthetic.generate(raw, n=168, seed=1) == raw
    assert synthetic.read_marker(raw)["dataset"] == "ham10000"
    assert {p.name: p.read_bytes() for p in raw.rglob("*.jpg")} == before  # nothing redrawn


def test_the_synthetic_default_is_unchanged(tmp_path):
    """The README's main job runs on the built-in synthetic set: its generation, images and
    split stay as they were before datasets had descriptors."""
    import hashlib

    import PIL

    from derma_core.data.resize import resampler
    from derma_core.data.sources import synthetic_dataset

    ds = synthetic_dataset({"data": {"synthetic_n": 200, "synthetic_seed": 3, "size": 24,
                                     "cache_dir": str(tmp_path)}, "quiet": True})
    assert ds.name == "synthetic" and ds.synthetic and ds.descriptor.name == "ham10000"
    raw = tmp_path / "synthetic-v2-n200-s3" / "raw"
    assert hashlib.sha256((raw / "HAM10000_metadata.csv").read_bytes()).hexdigest() == CSV_200_3
    ids = {s: ds[s].ids for s in SPLITS}
    assert hashlib.sha256(json.dumps(ids).encode()).hexdigest() == IDS_200_3
    assert [len(ds[s]) for s in SPLITS] == [130, 24, 46]
    if (PIL.__version__, resampler()) != RECORDED_WITH:  # JPEG bytes and resized pixels depend on them
        pytest.skip(f"the images and digest were recorded with Pillow {RECORDED_WITH[0]} and {RECORDED_WITH[1]}")
    h = hashlib.sha256((raw / "HAM10000_metadata.csv").read_bytes())
    for p in sorted(raw.glob("HAM10000_images_part_*/*.jpg")):
        h.update(p.read_bytes())
    assert h.hexdigest() == RAW_200_3
    assert ds.digest == DIGEST_200_3
