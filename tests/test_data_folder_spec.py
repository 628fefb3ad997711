"""Your own dataset declared in a YAML spec, no code: `derma synth --spec` draws it, `derma prep
--spec` prepares it (its labels, grouping, modality and subgroup kinds recorded), the `folder`
source loads it (data.dir, or data.path=SPEC with data.image_root); spec mistakes and labels
outside the declared set are one-line errors naming the file and key or line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from derma_core import plugins
from derma_core.cli import cli
from derma_core.data.datasets.folder import SpecError, load_spec
from derma_core.data.prepare import load_prepared
from derma_core.data.splits import SPLITS

SPEC = {
    "name": "my_clinic",
    "title": "My clinic's lesions",
    "metadata": "labels.csv",
    "images": "images",
    "columns": {"image": "file", "label": "diagnosis", "group": "patient_id"},
    "grouping": "patient",
    "modality": "clinical",
    "labels": [{"code": "mel", "name": "Melanoma"}, {"code": "nev", "name": "Naevus", "synonyms": ["mole"]}, "bcc"],
    "groupings": {"malignancy": {"mel": "malignant", "nev": "benign", "bcc": "malignant"}},
    "positive": {"malignancy": "malignant"},
    "focus": "mel",
    "metadata_columns": {"sex": "categorical", "age": {"kind": "banded", "bands": [30, 45, 60, 75]},
                         "fitzpatrick": {"kind": "ordinal", "order": ["1", "2", "3", "4", "5", "6"]}},
    "licence": "internal use only",
}


def _write(path: Path, doc) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def spec_raw(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("spec")
    spec = _write(base / "spec.yaml", SPEC)
    result = CliRunner().invoke(cli, ["synth", "--spec", str(spec), "--out", str(base / "raw"), "--n", "90",
                                      "--seed", "5", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    return spec, base / "raw"


def test_synth_spec_writes_the_declared_layout(spec_raw):
    spec, raw = spec_raw
    table = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["file", "diagnosis", "patient_id", "sex", "age", "fitzpatrick"]
    assert set(table["diagnosis"]) == {"mel", "nev", "bcc"} and table["file"].str.startswith("images/").all()
    assert all((raw / f).is_file() for f in table["file"])
    assert table["fitzpatrick"].isin(list("123456")).all()


def test_prep_spec_records_the_declared_facts(spec_raw, tmp_path):
    spec, raw = spec_raw
    out = tmp_path / "p"
    result = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(raw), "--out", str(out),
                                      "--size", "16", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "patients" in result.output  # the summary counts the dataset's groups
    facts = json.loads((out / "manifest.json").read_text())["dataset"]
    assert facts["name"] == "my_clinic" and facts["grouping"] == "patient" and facts["modality"] == "clinical"
    assert facts["labels"]["codes"] == ["mel", "nev", "bcc"] and facts["labels"]["names"][:2] == ["Melanoma", "Naevus"]
    assert facts["licence"] == "internal use only"
    ds = load_prepared(out)
    assert ds.name == "my_clinic" and ds.synthetic is True
    labels = ds.label_set
    assert labels.focus == "mel" and labels.lookup("mole") == "nev" and labels.positive == {"malignancy": "malignant"}
    kinds = {s.column: s for s in ds.descriptor.subgroups}
    assert kinds["age"].kind == "banded" and kinds["age"].bands == (30, 45, 60, 75)
    assert kinds["fitzpatrick"].kind == "ordinal" and kinds["fitzpatrick"].order == tuple("123456")
    patients = [set(ds[s].group_ids) for s in SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    for s in SPLITS:
        assert (ds[s].frame["group_id"] == ds[s].frame["patient_id"]).all()
        assert {"sex", "age", "fitzpatrick"} <= set(ds[s].frame.columns)
    # the folder source: the prepared folder, or the spec itself prepared into the cache folder
    source = plugins.get_dataset_source("folder").obj
    assert source({"data": {"dir": str(out)}}).digest == ds.digest
    again = source({"data": {"path": str(spec), "image_root": str(raw), "size": 16,
                             "cache_dir": str(tmp_path / "cache")}, "quiet": True})
    assert again.digest == ds.digest and again.label_set == labels and again.name == "my_clinic"


def test_labels_come_from_the_csv_when_the_spec_declares_none(spec_raw, tmp_path):
    spec, raw = spec_raw
    bare = _write(tmp_path / "bare.yaml", {k: v for k, v in SPEC.items()
                                           if k not in ("labels", "groupings", "positive", "focus")})
    out = tmp_path / "p"
    result = CliRunner().invoke(cli, ["prep", "--spec", str(bare), "--raw", str(raw), "--out", str(out),
                                      "--size", "16", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert load_prepared(out).label_set.codes == ("bcc", "mel", "nev")  # sorted
    drawn = CliRunner().invoke(cli, ["synth", "--spec", str(bare), "--out", str(tmp_path / "s")])
    assert drawn.exit_code == 1 and "declare them to draw a synthetic set" in drawn.output


def test_a_label_outside_the_declared_set_is_refused(spec_raw, tmp_path):
    spec, raw = spec_raw
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    table = pd.read_csv(copy / "labels.csv", dtype=str, keep_default_na=False)
    table.loc[4, "diagnosis"] = "scc"
    table.to_csv(copy / "labels.csv", index=False)
    result = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(copy), "--out", str(tmp_path / "p"),
                                      "--size", "16", "--workers", "1", "-q"])
    image_id = Path(table["file"][4]).stem
    assert result.exit_code == 1
    assert (f"error: labels.csv line 6 ({image_id}): unknown label 'scc'; use one of mel, nev, bcc or remove the row"
            in result.output.splitlines())


@pytest.mark.parametrize("edit, needle", [
    (lambda d: {**d, "lables": d["labels"]}, "spec.yaml: lables: unknown key"),
    (lambda d: {**d, "columns": {"image": "file", "label": "diagnosis"}},
     "spec.yaml: columns.group: grouping patient needs the column that holds the patient id"),
    (lambda d: {**d, "modality": "xray"}, "spec.yaml: modality: 'xray': use one of dermoscopic, clinical"),
    (lambda d: {**d, "labels": ["mel", "mel"]}, "spec.yaml: labels: label set: duplicate class codes ['mel']"),
    (lambda d: {**d, "metadata_columns": {"age": {"kind": "banded"}}},
     "spec.yaml: metadata_columns.age: subgroup column 'age': a banded column needs bands"),
    (lambda d: {**d, "focus": "scc"}, "spec.yaml: labels: label set: focus class 'scc' is not one of mel, nev, bcc"),
])
def test_spec_mistakes_are_one_line_errors(tmp_path, edit, needle):
    spec = _write(tmp_path / "spec.yaml", edit(dict(SPEC)))
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)
    result = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and needle in result.output


def test_spec_shapes_and_yaml_errors(tmp_path):
    mapping = _write(tmp_path / "m.yaml", {"labels": {"mel": "Melanoma", "nev": "Naevus"}})
    spec = load_spec(mapping)
    assert spec.name == "m" and spec.grouping is None and spec.labels.names == ("Melanoma", "Naevus")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nlabels: [a, b\n")
    with pytest.raises(SpecError, match=r"broken.yaml line \d+: not valid YAML"):
        load_spec(broken)
    with pytest.raises(SpecError, match="cannot be read"):
        load_spec(tmp_path / "missing.yaml")
    result = CliRunner().invoke(cli, ["prep", "--dataset", "folder", "--raw", str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "--dataset folder needs --spec FILE" in result.output


def test_a_spec_with_an_official_split(tmp_path):
    spec = _write(tmp_path / "spec.yaml", {**SPEC, "columns": {**SPEC["columns"], "split": "partition"}})
    raw = tmp_path / "raw"
    drawn = CliRunner().invoke(cli, ["synth", "--spec", str(spec), "--out", str(raw), "--n", "80", "--seed", "2",
                                     "--workers", "1", "-q"])
    assert drawn.exit_code == 0, drawn.output
    table = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
    assert set(table["partition"]) == set(SPLITS)
    out = tmp_path / "p"
    result = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(raw), "--out", str(out), "--size", "16",
                                      "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    ds = load_prepared(out)
    official = dict(zip(table["file"].map(lambda f: Path(f).stem), table["partition"]))
    assert ds.manifest["params"]["split"] == "official" and ds.descriptor.split_policy == "official"
    assert all(official[i] == s for s in SPLITS for i in ds[s].ids)
    # a patient in two official splits would leak: refused
    patient = table["patient_id"][table["partition"] == "test"].iloc[0]
    first_train = table.index[table["partition"] == "train"][0]
    table.loc[first_train, "patient_id"] = patient
    table.to_csv(raw / "labels.csv", index=False)
    leaked = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(raw), "--out", str(tmp_path / "q"),
                                      "--size", "16", "--workers", "1", "-q"])
    assert leaked.exit_code == 1
    assert (f"error: labels.csv: 1 patient_id values have images in two splits of the official split (e.g. {patient}); "
            "results would be optimistic; prepare with --split grouped") in leaked.output
    grouped = CliRunner().invoke(cli, ["prep", "--spec", str(spec), "--raw", str(raw), "--out", str(tmp_path / "g"),
                                       "--size", "16", "--workers", "1", "-q", "--split", "grouped"])
    assert grouped.exit_code == 0, grouped.output
