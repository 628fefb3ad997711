"""The public dermatology datasets as descriptors.

* readers on the real metadata in ../shared/data (ISIC 2019, ISIC 2020, Fitzpatrick17k; skipped
  with a reason when absent): every row read, the published class counts, the grouping;
* readers on rows written here from the published schemas (PAD-UFES-20, DDI, Derm7pt, ISIC
  Archive exports), bad values included;
* for every dataset and option: the synthetic writer's raw layout read back by the reader.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import derma_core
from derma_core.data.datasets import (bcn20000, builtin_descriptors, ddi, derm7pt, fitzpatrick17k, isic2019, isic2020,
                                      isic_archive, pad_ufes_20)
from derma_core.data.descriptor import DatasetDescriptor
from derma_core.data.raw import verify

OURS = ("isic2019", "isic2020", "isic_archive", "bcn20000", "pad_ufes_20", "ddi", "fitzpatrick17k", "derm7pt")


def shared_data_dir() -> Path:
    """../shared/data next to the repository, DERMA_SHARED_DATA overriding (as conftest's fixture
    finds it; --import-mode=importlib keeps conftest from being imported)."""
    env = os.environ.get("DERMA_SHARED_DATA")
    return Path(env) if env else Path(derma_core.__file__).resolve().parents[2] / "shared" / "data"


def _real(name: str, *files: str) -> Path:
    folder = shared_data_dir() / name
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        pytest.skip(f"real {name} metadata not found at {folder} ({', '.join(missing)}); set DERMA_SHARED_DATA")
    return folder


def _readme() -> str:
    path = shared_data_dir() / "README.md"
    if not path.exists():
        pytest.skip(f"{path} not found; set DERMA_SHARED_DATA")
    return path.read_text()


def _rows(path: Path) -> list[dict]:
    """The CSV's rows by the csv module: an implementation independent of the readers'."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _fatal(raw) -> list[str]:
    return [p.line() for p in raw.problems if p.fatal]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (120, 80, 60)).save(path)


# ---------------------------------------------------------------- real metadata

def test_isic2019_real_ground_truth_every_row_published_counts_and_lesions():
    folder = _real("isic2019", isic2019.GROUND_TRUTH, isic2019.METADATA)
    raw = isic2019.read(folder)
    assert not raw.problems
    gt, meta = _rows(folder / isic2019.GROUND_TRUTH), _rows(folder / isic2019.METADATA)
    frame = raw.metadata
    assert len(frame) == len(gt) and list(frame["image_id"]) == [r["image"] for r in gt]
    assert list(frame["_line"]) == [str(k) for k in range(2, len(gt) + 2)]
    counts = frame["dx"].value_counts().to_dict()
    assert counts == isic2019.DESCRIPTOR.counts()
    # the README's published figures, written as it writes them (NV 12,875, ...)
    readme = _readme()
    for code, n in counts.items():
        assert f"{code.upper()} {n:,}" in readme
    lesions = {r["lesion_id"] for r in meta if r["lesion_id"]}
    blank = sum(1 for r in meta if not r["lesion_id"])
    assert f"{len(lesions):,} distinct lesion ids, {blank:,} rows with no lesion id" in readme
    assert frame["group_id"].nunique() == len(lesions) + blank
    with_lesion = frame["lesion_id"] != ""
    assert (frame.loc[with_lesion, "group_id"] == frame.loc[with_lesion, "lesion_id"]).all()
    assert (frame.loc[~with_lesion, "group_id"] == frame.loc[~with_lesion, "image_id"]).all()
    assert set(frame.columns) >= {"age_approx", "anatom_site_general", "sex"}
    assert {s.column for s in isic2019.SUBGROUPS} <= set(frame.columns)


def test_isic2019_reads_both_one_hot_spellings_and_refuses_bad_rows(tmp_path):
    folder = _real("isic2019", isic2019.GROUND_TRUTH)
    rows = _rows(folder / isic2019.GROUND_TRUTH)[:40]
    columns = ["image", *isic2019.ONE_HOT, "UNK"]
    ints, floats = tmp_path / "ints", tmp_path / "floats"
    for out, fmt in ((ints, "{}"), (floats, "{}.0")):
        out.mkdir()
        written = [{c: r[c] if c == "image" else fmt.format(int(float(r[c]))) for c in columns} for r in rows]
        written[3].update(MEL="1.0" if out == floats else "1", NV="1.0" if out == floats else "1")  # two classes
        written[5].update({c: "0.0" if out == floats else "0" for c in isic2019.ONE_HOT})  # no class
        written[7]["UNK"] = "1.0" if out == floats else "1"  # the unknown class
        written[9]["BCC"] = "yes"
        pd.DataFrame(written, columns=columns).to_csv(out / isic2019.GROUND_TRUTH, index=False)
    for r in rows:  # the real rows' images, tiny, where the ISIC archive unpacks them
        _image(floats / isic2019.IMAGE_FOLDER / f"{r['image']}.jpg")
    a, b = isic2019.read(ints), isic2019.read(floats)
    assert set(b.images) == {r["image"] for r in rows} and not a.images
    assert a.metadata[["image_id", "dx"]].equals(b.metadata[["image_id", "dx"]])
    assert len(a.metadata) == len(rows) - 4
    fatal = _fatal(b)
    for index, text in ((3, "2 classes marked 1 (MEL, NV)"), (5, "no class marked 1"),
                        (7, "marked UNK (unknown diagnosis)"), (9, "column BCC holds 'yes'")):
        line = f"{isic2019.GROUND_TRUTH} line {index + 2} ({rows[index]['image']})"
        assert any(line in f and text in f for f in fatal), (line, text, fatal)
    refused = {rows[i]["image"] for i in (3, 5, 7, 9)}
    assert not refused & set(b.metadata["image_id"])
    # without the metadata file: a warning, every image its own group
    assert any(p.code == "missing_metadata" and not p.fatal for p in b.problems)
    assert (b.metadata["group_id"] == b.metadata["image_id"]).all()


def test_isic2020_real_ground_truth_patients_and_duplicates(tmp_path):
    folder = _real("isic2020", isic2020.GROUND_TRUTH[0], isic2020.DUPLICATES)
    gt = _rows(folder / isic2020.GROUND_TRUTH[0])
    pairs = _rows(folder / isic2020.DUPLICATES)
    # the ground truth alone: every row, the published counts, a warning that duplicates stay in
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / isic2020.GROUND_TRUTH[0]).write_bytes((folder / isic2020.GROUND_TRUTH[0]).read_bytes())
    raw = isic2020.read(alone)
    assert len(raw.metadata) == len(gt)
    assert raw.metadata["dx"].value_counts().to_dict() == isic2020.DESCRIPTOR.counts()
    assert [p.code for p in raw.problems] == ["missing_duplicates"]
    patients = {r["patient_id"] for r in gt}
    readme = _readme()
    assert f"{len(gt):,} rows, {isic2020.DESCRIPTOR.counts()['melanoma']:,} melanomas" in readme
    assert f"{len(patients):,} patients" in readme
    assert raw.metadata["group_id"].nunique() == len(patients)
    assert {"diagnosis", "benign_malignant", "target"} <= set(raw.metadata.columns)
    # with the organisers' list: the second image of each pair dropped, the count in one warning
    images = [p[k] for p in pairs for k in ("image_name_1", "image_name_2")]
    assert len(set(images)) == len(images)  # no image in two pairs: each pair drops exactly one
    raw = isic2020.read(folder)
    assert len(raw.metadata) == len(gt) - len(pairs)
    dropped = {p["image_name_2"] for p in pairs}
    assert not dropped & set(raw.metadata["image_id"])
    assert {p["image_name_1"] for p in pairs} <= set(raw.metadata["image_id"])
    (warning,) = raw.problems
    assert not warning.fatal and f"{len(pairs)} images duplicate another image" in warning.line()
    assert raw.metadata["group_id"].nunique() == len(patients)


def test_isic2020_duplicate_chain_and_conflict(tmp_path):
    rows = [{"image_name": f"ISIC_{i}", "patient_id": "IP_1" if i < 4 else "IP_2", "sex": "male", "age_approx": "45.0",
             "anatom_site_general_challenge": "torso", "diagnosis": "unknown", "benign_malignant": "benign",
             "target": "0.0" if i != 5 else "1"} for i in range(6)]
    pd.DataFrame(rows).to_csv(tmp_path / isic2020.GROUND_TRUTH[0], index=False)
    pd.DataFrame({"image_name_1": ["ISIC_0", "ISIC_1", "ISIC_4", "ISIC_9"],
                  "image_name_2": ["ISIC_1", "ISIC_2", "ISIC_5", "ISIC_0"]}).to_csv(tmp_path / isic2020.DUPLICATES,
                                                                                    index=False)
    for i in range(6):
        _image(tmp_path / "train" / f"ISIC_{i}.jpg")
    raw = isic2020.read(tmp_path)
    kept = set(raw.metadata["image_id"])
    assert kept == {"ISIC_0", "ISIC_3", "ISIC_4"}  # 0=1=2 keeps one; 4=5 keeps one; ISIC_9 is not listed
    assert set(raw.images) == kept  # the dropped copies' files are no orphans to warn about
    assert raw.metadata.set_index("image_id")["dx"].to_dict() == {"ISIC_0": "benign", "ISIC_3": "benign",
                                                                  "ISIC_4": "benign"}
    (conflict,) = _fatal(raw)
    assert f"{isic2020.DUPLICATES} line 4 (ISIC_4, ISIC_5)" in conflict and "label benign vs melanoma" in conflict
    assert any("3 images duplicate another image" in p.line() for p in raw.problems)


@pytest.mark.parametrize("level", ["3", "9", "114"])
def test_fitzpatrick17k_real_csv_at_every_level(level):
    folder = _real("fitzpatrick17k", fitzpatrick17k.METADATA)
    rows = _rows(folder / fitzpatrick17k.METADATA)
    options = {"label": level}
    raw = fitzpatrick17k.read(folder, options)
    assert not raw.problems
    labels = fitzpatrick17k.label_set(options)
    frame = raw.metadata
    assert len(frame) == len(rows) and list(frame["image_id"]) == [r["md5hash"] for r in rows]
    column = fitzpatrick17k.LEVEL_COLUMNS[level]
    assert len(labels) == len({r[column] for r in rows})
    assert set(frame["dx"]) == set(labels.codes)
    assert frame["dx"].value_counts().to_dict() == fitzpatrick17k.DESCRIPTOR.counts(options)
    assert (frame["group_id"] == "").all()
    unknown = sum(1 for r in rows if r["fitzpatrick_scale"] == "-1")
    assert (frame["fitzpatrick_scale"] == "-1").sum() == unknown
    readme = _readme()
    assert f"{len(rows):,} rows; {len({r['label'] for r in rows})} labels" in readme
    assert f"`-1` = unknown, {unknown} rows" in readme
    if level == "3":
        published = ", ".join(f"{name} {n:,}" for name, n in Counter(r[column] for r in rows).most_common())
        assert published in readme
    # the malignancy grouping agrees with the three-way partition of every row
    mapping = labels.groupings["malignancy"]
    assert all((mapping[c] == "malignant") == (r["three_partition_label"] == "malignant")
               for c, r in zip(frame["dx"], rows))


def test_fitzpatrick17k_condition_table_is_the_official_csv():
    rows = _rows(_real("fitzpatrick17k", fitzpatrick17k.METADATA) / fitzpatrick17k.METADATA)
    table = {}
    for r in rows:
        key = (r["label"], r["nine_partition_label"], r["three_partition_label"])
        table[key] = table.get(key, 0) + 1
    assert sorted(table.items()) == sorted(((c[:3], c[3]) for c in fitzpatrick17k.CONDITIONS))


def test_bcn20000_counts_are_isic2019_rows_of_bcn_lesions():
    raw = isic2019.read(_real("isic2019", isic2019.GROUND_TRUTH, isic2019.METADATA))
    bcn = raw.metadata[raw.metadata["lesion_id"].str.startswith("BCN_")]
    assert bcn["dx"].value_counts().to_dict() == bcn20000.DESCRIPTOR.counts()


def test_fitzpatrick17k_codes_are_readable_and_unique():
    codes = fitzpatrick17k.label_set({"label": "114"}).codes
    assert len(codes) == len(set(codes)) == len(fitzpatrick17k.CONDITIONS)
    assert all(re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", c) for c in codes)
    assert "superficial_spreading_melanoma_ssm" in codes and "malignant_melanoma" in codes


# ---------------------------------------------------------------- rows written from the published schemas

PAD_ROWS = [
    # patient_id, lesion_id, age, gender, fitspatrick, region, diagnostic, img_id
    ("PAT_1516", "1765", "8", "FEMALE", "3.0", "NECK", "BCC", "PAT_1516_1765_530.png"),
    ("PAT_1516", "1766", "8", "FEMALE", "3.0", "FACE", "ACK", "PAT_1516_1766_531.png"),
    ("PAT_46", "881", "55", "MALE", "", "ARM", "MEL", "PAT_46_881_939.png"),
    ("PAT_771", "1487", "70", "", "2", "CHEST", "sek", "PAT_771_1487_101.png"),
    ("PAT_9", "20", "33", "MALE", "6", "BACK", "BOD", "PAT_9_20_2.png"),
]


def _pad_folder(tmp_path: Path) -> Path:
    rows = []
    for i, (patient, lesion, age, gender, fitz, region, diagnostic, img) in enumerate(PAD_ROWS):
        row = {c: "" for c in pad_ufes_20.COLUMNS}
        row.update(patient_id=patient, lesion_id=lesion, age=age, gender=gender, fitspatrick=fitz, region=region,
                   diagnostic=diagnostic, img_id=img, smoke="False", biopsed="True")
        rows.append(row)
        _image(tmp_path / "images" / f"imgs_part_{1 + i % 3}" / img)
    pd.DataFrame(rows, columns=pad_ufes_20.COLUMNS).to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path


def test_pad_ufes_20_reads_the_published_schema(tmp_path):
    raw = pad_ufes_20.read(_pad_folder(tmp_path))
    frame = raw.metadata
    assert list(frame["image_id"]) == [Path(r[7]).stem for r in PAD_ROWS]
    assert list(frame["dx"]) == ["bcc", "ack", "mel", "sek", "BOD"]  # BOD is no PAD-UFES-20 class: left for the check
    assert list(frame["group_id"]) == [r[0] for r in PAD_ROWS]
    assert list(frame["fitspatrick"]) == ["3", "3", "", "2", "6"]
    assert set(pad_ufes_20.COLUMNS) <= set(frame.columns) and len(pad_ufes_20.COLUMNS) == 26
    assert set(raw.images) == set(frame["image_id"]) and not raw.problems
    assert list(frame["_line"]) == ["2", "3", "4", "5", "6"]


def test_ddi_reads_the_published_schema(tmp_path):
    (tmp_path / "ddi_metadata.csv").write_text(
        ",DDI_ID,DDI_file,skin_tone,malignant,disease\n"
        "0,1,000001.png,56,TRUE,melanoma-in-situ\n"
        "1,2,000002.png,12,FALSE,seborrheic-keratosis\n"
        "2,3,000003.png,34,True,basal-cell-carcinoma\n"
        "3,4,000004.png,34.0,false,verruca-vulgaris\n"
        "4,5,000005.png,12,maybe,abscess\n")
    for i in range(1, 6):
        _image(tmp_path / "images" / f"{i:06d}.png")
    raw = ddi.read(tmp_path)
    frame = raw.metadata
    assert list(frame["image_id"]) == ["000001", "000002", "000003", "000004", "000005"]
    assert list(frame["dx"]) == ["malignant", "benign", "malignant", "benign", "maybe"]
    assert list(frame["skin_tone"]) == ["56", "12", "34", "34", "12"]
    assert (frame["group_id"] == "").all() and "Unnamed: 0" not in frame.columns
    assert list(frame["disease"])[0] == "melanoma-in-situ" and set(raw.images) == set(frame["image_id"])


#: The reference grouping of the 20 diagnosis strings, as derm7pt/dataset.py writes it
#: (Derm7PtDatasetGroupInfrequent.diagnosis).
REFERENCE_GROUPS = {
    "BCC": ["basal cell carcinoma"],
    "NEV": ["blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus", "recurrent nevus",
            "reed or spitz nevus"],
    "MEL": ["melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
            "melanoma (more than 1.5 mm)", "melanoma metastasis"],
    "MISC": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"],
    "SK": ["seborrheic keratosis"],
}


def _derm7pt_release(folder: Path, diagnoses: list[str], splits: dict[str, list[int]]) -> Path:
    rows = []
    for i, diagnosis in enumerate(diagnoses):
        row = {c: "absent" for c in derm7pt.COLUMNS}
        row.update(case_num=str(i + 1), diagnosis=diagnosis, seven_point_score=str(i % 5), location="back",
                   sex="female" if i % 2 else "male", level_of_diagnostic_difficulty="low",
                   clinic=f"D{i % 3}/Cl{i:03d}.jpg", derm=f"D{i % 3}/DERM{i:03d}.JPG", case_id=f"C{i:03d}", notes="")
        rows.append(row)
        _image(folder / "images" / f"d{i % 3}" / f"cl{i:03d}.jpg")  # another case than meta.csv writes
        _image(folder / "images" / f"D{i % 3}" / f"DERM{i:03d}.JPG")
    (folder / "meta").mkdir(parents=True)
    pd.DataFrame(rows, columns=derm7pt.COLUMNS).to_csv(folder / "meta" / "meta.csv")  # with pandas' index column
    for name, file in (("train", "train_indexes.csv"), ("val", "valid_indexes.csv"), ("test", "test_indexes.csv")):
        pd.DataFrame({"indexes": splits[name]}).to_csv(folder / "meta" / file, index=False)
    return folder


def test_derm7pt_reference_grouping_options_and_official_split(tmp_path):
    diagnoses = [d for group in REFERENCE_GROUPS.values() for d in group]
    assert len(diagnoses) == 20 and sorted(diagnoses) == sorted(derm7pt.DIAGNOSES)
    splits = {"train": list(range(0, 10)), "val": list(range(10, 14)), "test": list(range(14, 20))}
    release = _derm7pt_release(tmp_path / "release_v0", diagnoses, splits)
    raw = derm7pt.read(tmp_path)  # the folder above release_v0 is accepted too
    frame = raw.metadata
    expected = [code.lower() for code, group in REFERENCE_GROUPS.items() for _ in group]
    assert list(frame["dx"]) == expected and list(derm7pt.GROUPED.codes) == [c.lower() for c in REFERENCE_GROUPS]
    assert list(frame["split"]) == ["train"] * 10 + ["val"] * 4 + ["test"] * 6
    assert set(derm7pt.CRITERIA) <= set(frame.columns) and (frame["group_id"] == "").all()
    assert list(frame["image_id"])[:2] == ["D0_DERM000", "D1_DERM001"]
    assert len(raw.images) == 20 and not raw.problems
    raw_labels = derm7pt.read(release, {"labels": "raw", "image": "clinic"})
    assert list(raw_labels.metadata["dx"]) == list(derm7pt.RAW.codes)
    assert len(set(raw_labels.metadata["dx"])) == 20
    assert list(raw_labels.metadata["image_id"])[:2] == ["D0_Cl000", "D1_Cl001"]
    assert raw_labels.images["D0_Cl000"] == release / "images" / "d0" / "cl000.jpg"  # matched ignoring case
    # the recorded modality follows the image option
    assert derm7pt.DESCRIPTOR.facts({"image": "clinic"})["modality"] == "clinical"
    assert DatasetDescriptor.from_facts(derm7pt.DESCRIPTOR.facts({"image": "derm"})).modality == "dermoscopic"
    assert derm7pt.DESCRIPTOR.counts() == {code.lower(): sum(derm7pt.RAW_COUNTS[d] for d in group)
                                           for code, group in REFERENCE_GROUPS.items()}


def test_derm7pt_bad_split_indexes_are_refused_naming_the_line(tmp_path):
    release = _derm7pt_release(tmp_path, ["melanoma", "clark nevus", "lentigo", "dermatofibroma"],
                               {"train": [0, 1], "val": [1, 7], "test": []})
    fatal = _fatal(derm7pt.read(release))
    assert any("meta/valid_indexes.csv line 2" in f and "already in train" in f for f in fatal)
    assert any("meta/valid_indexes.csv line 3" in f and "'7' is not a row" in f for f in fatal)
    assert any("meta/meta.csv line 4" in f and "in no split" in f for f in fatal)
    assert any("meta/meta.csv line 5" in f for f in fatal)
    (release / "meta" / "test_indexes.csv").unlink()
    with pytest.raises(Exception, match="test_indexes.csv"):
        derm7pt.read(release)


def test_isic_archive_exports_old_and_new_schemas(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "isic_id,diagnosis,diagnosis_1,diagnosis_3,benign_malignant,lesion_id,patient_id,sex,age_approx\n"
        "ISIC_0000001,nevus,,,benign,IL_1,IP_1,male,40\n"
        "ISIC_0000002,,Malignant,Melanoma Invasive,malignant,IL_1,IP_1,male,40\n"
        "ISIC_0000003,solar lentigo,,,benign,,IP_2,female,65\n"
        "ISIC_0000004,scar,,,benign,IL_4,,female,\n")
    for i in range(1, 5):
        _image(tmp_path / f"ISIC_000000{i}.jpg")
    raw = isic_archive.read(tmp_path)
    frame = raw.metadata
    assert list(frame["dx"]) == ["nv", "mel", "bkl", "scar"]  # scar is no ISIC 2019 class: left for the check
    assert list(frame["group_id"]) == ["IL_1", "IL_1", "ISIC_0000003", "IL_4"]
    assert set(raw.images) == set(frame["image_id"]) and "patient_id" in frame.columns
    binary = isic_archive.read(tmp_path, {"labels": "binary"})
    assert list(binary.metadata["dx"]) == ["benign", "malignant", "benign", "benign"]
    assert isic_archive.label_set({"labels": "binary"}).codes == ("benign", "malignant")


# ---------------------------------------------------------------- every descriptor

def _option_sets(descriptor: DatasetDescriptor) -> list[dict]:
    sets = [{}]
    for option in descriptor.options:
        sets = [{**s, option.name: choice} for s in sets for choice in option.choices]
    return sets


CASES = [(d, o) for d in builtin_descriptors() if d.name in OURS for o in _option_sets(d)]


def test_every_public_dataset_is_registered_and_described():
    names = [d.name for d in builtin_descriptors()]
    assert set(OURS) <= set(names) and len(names) == len(set(names))
    for descriptor, options in CASES:
        assert descriptor.title and descriptor.licence and descriptor.citation and descriptor.url and descriptor.layout
        assert descriptor.downloader is not None or descriptor.access, descriptor.name
        labels = descriptor.label_set(options)
        counts = descriptor.counts(options)
        if descriptor.name != "isic_archive":  # any export: no published counts
            assert list(counts) == list(labels.codes) and all(n > 0 for n in counts.values())
        facts = json.loads(json.dumps(descriptor.facts(options)))
        again = DatasetDescriptor.from_facts(facts)
        assert again.label_set() == labels and again.grouping == descriptor.grouping
        assert [s.column for s in again.subgroups] == [s.column for s in descriptor.subgroups]
        assert descriptor.group_column in (None, "lesion_id", "patient_id")
        assert "malignancy" in labels.groupings and labels.positive["malignancy"] == "malignant"


def _draws(labels, grouped: bool) -> pd.DataFrame:
    """Generic synthetic draws as the generator writes them (strings; age "" when unknown; an
    image is its own group where the dataset has no grouping): three images per class, in groups
    of two and one where grouped."""
    rows = []
    sites = ("back", "face", "lower extremity", "upper extremity")
    for k, code in enumerate(labels.codes):
        for j in range(3):
            i = len(rows)
            image_id = f"SYN_{i:07d}"
            rows.append({"image_id": image_id, "dx": code, "group_id": f"G_{k:04d}{j // 2}" if grouped else image_id,
                         "age": "" if i % 7 == 3 else f"{20 + (i * 5) % 60:.1f}",
                         "sex": ("male", "female", "unknown")[i % 3], "site": sites[i % len(sites)],
                         "skin_type": str(1 + i % 6), "split": ("train", "val", "test")[j]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("descriptor,options", CASES, ids=[f"{d.name}-{'-'.join(o.values()) or 'default'}"
                                                           for d, o in CASES])
def test_synthetic_writer_round_trips_through_the_reader(tmp_path, descriptor, options):
    labels = descriptor.label_set(options)
    draws = _draws(labels, descriptor.grouping is not None)
    out = tmp_path / "raw"
    paths = descriptor.synth_writer(out, draws, options)
    assert len(paths) == len(draws) == len(set(paths))
    for path in paths:
        assert out in Path(path).parents and Path(path).suffix.lower() in (".jpg", ".png")
        _image(Path(path))
    raw = descriptor.reader(out, options)
    assert not _fatal(raw)
    # the generic verification finds every row usable
    checked = verify(raw, descriptor, labels, official_split=descriptor.split_policy == "official")
    assert not checked.problems and len(checked.metadata) == len(draws)
    frame = raw.metadata
    assert list(frame.columns[:3]) == ["image_id", "dx", "group_id"] and len(frame) == len(draws)
    by_path = {path.resolve(): image_id for image_id, path in raw.images.items()}
    ids = [by_path[Path(p).resolve()] for p in paths]  # the reader finds every written image
    row = frame.set_index("image_id").loc[ids]
    assert list(row["dx"]) == list(draws["dx"])
    if descriptor.grouping is None:
        assert (row["group_id"] == "").all()
    else:  # the same partition into groups
        pairs = set(zip(draws["group_id"], row["group_id"]))
        assert len(pairs) == draws["group_id"].nunique() == row["group_id"].nunique()
    if descriptor.split_policy == "official":
        assert list(row["split"]) == list(draws["split"])
    for subgroup in descriptor.subgroups:
        assert subgroup.column in frame.columns
