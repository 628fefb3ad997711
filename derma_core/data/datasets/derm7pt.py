"""Derm7pt, the seven-point checklist dataset (Kawahara et al., IEEE JBHI 2019): 1,011 cases, each
with one dermoscopic and one clinical image, a diagnosis and the seven-point criteria.

Raw layout (the ``release_v0`` folder): ``meta/meta.csv`` (``case_num,diagnosis,seven_point_score,
pigment_network,streaks,pigmentation,regression_structures,dots_and_globules,blue_whitish_veil,
vascular_structures,level_of_diagnostic_difficulty,elevation,location,sex,management,clinic,derm,
case_id,notes``), ``meta/{train,valid,test}_indexes.csv`` (one column ``indexes``: 0-based rows of
meta.csv; the official split) and ``images/`` holding the files ``clinic`` and ``derm`` name
(e.g. ``NEL/NEL025.JPG``).

Prep options: ``labels`` — ``grouped`` (default) maps the 20 diagnosis strings to the five classes
of the derm7pt reference code (``Derm7PtDatasetGroupInfrequent``: BCC, NEV, MEL, MISC, SK), ``raw``
keeps the 20 strings as classes; ``image`` — ``derm`` (dermoscopic, default) or ``clinic``
(clinical; the prepared folder records the clinical modality). One case is one row: no grouping.
Access needs registration at derm.cs.sfu.ca: no downloader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, DatasetOption, SubgroupColumn
from . import common

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

META = "meta/meta.csv"
SPLIT_FILES = {"train": "meta/train_indexes.csv", "val": "meta/valid_indexes.csv", "test": "meta/test_indexes.csv"}
IMAGES = "images"
COLUMNS = ("case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
           "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
           "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
           "case_id", "notes")
CRITERIA = ("pigment_network", "streaks", "pigmentation", "regression_structures", "dots_and_globules",
            "blue_whitish_veil", "vascular_structures")

#: The 20 diagnosis strings of meta.csv and their class in the derm7pt reference code
#: (github.com/jeremykawahara/derm7pt, derm7pt/dataset.py, Derm7PtDatasetGroupInfrequent.diagnosis).
GROUPS = {
    "basal cell carcinoma": "bcc",
    "blue nevus": "nev", "clark nevus": "nev", "combined nevus": "nev", "congenital nevus": "nev",
    "dermal nevus": "nev", "recurrent nevus": "nev", "reed or spitz nevus": "nev",
    "melanoma": "mel", "melanoma (in situ)": "mel", "melanoma (less than 0.76 mm)": "mel",
    "melanoma (0.76 to 1.5 mm)": "mel", "melanoma (more than 1.5 mm)": "mel", "melanoma metastasis": "mel",
    "dermatofibroma": "misc", "lentigo": "misc", "melanosis": "misc", "miscellaneous": "misc",
    "vascular lesion": "misc",
    "seborrheic keratosis": "sk",
}
DIAGNOSES = tuple(GROUPS)

GROUPED = LabelSet(
    codes=("bcc", "nev", "mel", "misc", "sk"),
    names=("Basal cell carcinoma", "Nevus", "Melanoma",
           "Miscellaneous (dermatofibroma, lentigo, melanosis, vascular lesion, other)", "Seborrheic keratosis"),
    groupings={"malignancy": {"bcc": "malignant", "nev": "benign", "mel": "malignant", "misc": "benign",
                              "sk": "benign"}},
    positive={"malignancy": "malignant"},
    synonyms={"bcc": ("basal cell carcinoma",), "nev": ("nevus", "nevi", "naevus", "mole", "melanocytic nevus"),
              "mel": ("melanoma",), "misc": ("miscellaneous", "other"),
              "sk": ("seborrheic keratosis", "seborrhoeic keratosis")},
    focus="mel",
)


def _raw_label_set() -> LabelSet:
    codes = tuple(common.slug(d) for d in DIAGNOSES)
    return LabelSet(
        codes=codes, names=tuple(d[:1].upper() + d[1:] for d in DIAGNOSES),
        groupings={"malignancy": {common.slug(d): "malignant" if GROUPS[d] in ("bcc", "mel") else "benign"
                                  for d in DIAGNOSES},
                   "grouped": {common.slug(d): GROUPS[d] for d in DIAGNOSES}},
        positive={"malignancy": "malignant"},
        # melanoma is split by thickness here; the malignancy grouping gives its sensitivity
        focus=None)


RAW = _raw_label_set()

OPTIONS = (
    DatasetOption("labels", default="grouped", choices=("grouped", "raw"),
                  help="grouped: BCC, NEV, MEL, MISC, SK (the derm7pt reference grouping); raw: the 20 diagnoses"),
    DatasetOption("image", default="derm", choices=("derm", "clinic"),
                  help="derm: the dermoscopic image of each case; clinic: the clinical image"),
)
MODALITIES = {"derm": "dermoscopic", "clinic": "clinical"}


def label_set(options: Mapping[str, str] | None = None) -> LabelSet:
    return RAW if (options or {}).get("labels", "grouped") == "raw" else GROUPED


#: Cases per diagnosis string in the 1,011 cases of release_v0. Their sums over the reference
#: grouping are the published class sizes (BCC 42, NEV 575, MEL 252, MISC 97, SK 45; Kawahara et
#: al. 2019); the split over the 20 strings could not be checked against a copy of meta.csv (none
#: may be passed on): compare with what `derma prep` counts on yours.
RAW_COUNTS = {
    "basal cell carcinoma": 42, "blue nevus": 28, "clark nevus": 399, "combined nevus": 13, "congenital nevus": 17,
    "dermal nevus": 33, "recurrent nevus": 6, "reed or spitz nevus": 79, "melanoma": 1, "melanoma (in situ)": 64,
    "melanoma (less than 0.76 mm)": 102, "melanoma (0.76 to 1.5 mm)": 53, "melanoma (more than 1.5 mm)": 28,
    "melanoma metastasis": 4, "dermatofibroma": 20, "lentigo": 24, "melanosis": 16, "miscellaneous": 8,
    "vascular lesion": 29, "seborrheic keratosis": 45,
}


def class_counts(options: Mapping[str, str] | None = None) -> dict[str, int]:
    if label_set(options) is RAW:
        return {common.slug(d): n for d, n in RAW_COUNTS.items()}
    counts = {code: 0 for code in GROUPED.codes}
    for diagnosis, n in RAW_COUNTS.items():
        counts[GROUPS[diagnosis]] += n
    return counts


SUBGROUPS = (
    SubgroupColumn("sex"),
    SubgroupColumn("location", title="body location"),
    SubgroupColumn("level_of_diagnostic_difficulty", kind="ordinal", order=("low", "medium", "high"),
                   title="diagnostic difficulty"),
)

LAYOUT = (f"{META} (case_num,diagnosis,...,clinic,derm,case_id,notes), meta/train_indexes.csv, "
          f"meta/valid_indexes.csv, meta/test_indexes.csv (column indexes) and {IMAGES}/ with the files clinic and "
          "derm name (the release_v0 folder)")
ACCESS = ("Derm7pt needs registration: request it at https://derm.cs.sfu.ca, download release_v0.zip, unzip it and "
          "pass the release_v0 folder (meta/meta.csv, meta/*_indexes.csv, images/): `derma prep --dataset derm7pt "
          "--raw release_v0 --out PREPARED` (options: --option labels=raw, --option image=clinic)")


def _root(root: Path) -> Path:
    """``root`` or its ``release_v0`` folder, whichever holds meta/meta.csv."""
    root = common.require_folder(root, "Derm7pt", LAYOUT)
    if not (root / META).exists() and (root / "release_v0" / META).exists():
        return root / "release_v0"
    return root


def _image_id(path: str) -> str:
    """``NEL/NEL025.JPG`` -> ``NEL_NEL025``: the image's path without suffix, one id per file."""
    p = Path(path.replace("\\", "/"))
    return "_".join((*p.parent.parts, p.stem)) if path else ""


def read(root: Path, options: Mapping[str, str] | None = None):
    """The Derm7pt release folder as RawData (see the module docstring)."""
    opts = {"labels": "grouped", "image": "derm", **dict(options or {})}
    root = _root(root)
    meta_path = root / META
    if not meta_path.exists():
        raise common.prep_error(f"{root}: no {META}; the Derm7pt raw folder holds {LAYOUT}")
    column = opts["image"]
    meta = common.drop_index_columns(common.read_table(meta_path, "Derm7pt meta", ("diagnosis", column)))
    if opts["labels"] == "raw":
        codes = {d: common.slug(d) for d in DIAGNOSES}
    else:
        codes = dict(GROUPS)
    frame = meta.copy()
    frame.insert(0, "image_id", [_image_id(v) for v in meta[column]])
    frame.insert(1, "dx", [common.one_of(v, codes) for v in meta["diagnosis"]])
    frame.insert(2, "group_id", "")
    problems: list = []
    frame.insert(3, "split", _official_split(root, len(meta), problems))
    found = common.images_by_path(root / IMAGES, meta[column])
    images = {_image_id(v): path for v, path in found.items()}
    return common.raw_data(root, meta_path, frame, images, problems)


def _official_split(root: Path, n: int, problems: list) -> list[str]:
    """Each row's split from the three index files; a fatal problem for an index out of range,
    a row in two splits or a row in none."""
    split = [""] * n
    for name, relative in SPLIT_FILES.items():
        path = root / relative
        if not path.exists():
            raise common.prep_error(f"{root}: no {relative}; Derm7pt's official split needs "
                                    f"{', '.join(SPLIT_FILES.values())} (the release_v0 meta folder)")
        for line, value in _indexes(path):
            where = f"{relative} line {line}"
            try:
                row = int(float(value))
            except ValueError:
                row = -1
            if not 0 <= row < n:
                problems.append(common.problem("bad_index", where, f"index {value!r} is not a row of {META} "
                                               f"(0..{n - 1})", "fix or remove the line", fatal=True))
            elif split[row]:
                problems.append(common.problem("index_twice", where, f"row {row} of {META} is already in "
                                               f"{split[row]}", "each case belongs to one split", fatal=True))
            else:
                split[row] = name
    for row in (i for i, s in enumerate(split) if not s):
        problems.append(common.problem("no_split", f"{META} line {row + 2}", "the case is in no split index file",
                                       "add its row number to one of the index files", fatal=True))
    return split


def _indexes(path: Path) -> list[tuple[int, str]]:
    """(file line, value) of an index file's ``indexes`` column. Read with the csv module: a
    one-column table defeats the delimiter sniffing of the generic table reader."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise common.prep_error(f"{path}: cannot be read as a CSV table ({exc}); restore it from release_v0") from None
    header = [h.strip() for h in rows[0]] if rows else []
    if "indexes" not in header:
        raise common.prep_error(f"{path}: no indexes column (header: {', '.join(header) or 'none'}); restore the "
                                "file from release_v0")
    col = header.index("indexes")
    return [(line, row[col].strip() if col < len(row) else "") for line, row in enumerate(rows[1:], start=2)
            if any(cell.strip() for cell in row)]


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """Derm7pt's release layout for synthetic draws: ``meta/meta.csv`` with a diagnosis string of
    the drawn class, the index files from the draws' ``split`` column, and the image paths of the
    chosen ``image`` option under ``images/``."""
    opts = {"labels": "grouped", "image": "derm", **dict(options or {})}
    out = Path(out)
    raw = opts["labels"] == "raw"
    by_code: dict[str, list[str]] = {}
    for diagnosis in DIAGNOSES:
        by_code.setdefault(common.slug(diagnosis) if raw else GROUPS[diagnosis], []).append(diagnosis)
    draw_splits = common.draw_column(draws, "split")
    rows, paths, indexes = [], [], {name: [] for name in SPLIT_FILES}
    for i, (dx, sex, site, split) in enumerate(zip(common.draw_column(draws, "dx"), common.draw_column(draws, "sex"),
                                                   common.draw_column(draws, "site"), draw_splits)):
        choices = by_code.get(str(dx), [str(dx)])
        folder = f"S{i // 100:02d}"
        clinic, derm = f"{folder}/Syn{i:04d}.jpg", f"{folder}/SYN{i:04d}.JPG"
        row: dict[str, Any] = {c: "" for c in COLUMNS}
        row.update(case_num=str(i + 1), diagnosis=choices[i % len(choices)], seven_point_score="0",
                   level_of_diagnostic_difficulty=("low", "medium", "high")[i % 3], elevation="flat",
                   location=site, sex=sex, management="clinical follow up", clinic=clinic, derm=derm,
                   case_id=f"SYN{i:04d}")
        row.update({c: "absent" for c in CRITERIA})
        rows.append(row)
        paths.append(out / IMAGES / (clinic if opts["image"] == "clinic" else derm))
        name = split if split in indexes else ("train", "train", "val", "test", "test")[i % 5]
        indexes[name].append(i)
    common.write_table(out / META, rows, COLUMNS)
    for name, relative in SPLIT_FILES.items():
        common.write_table(out / relative, [{"indexes": str(i)} for i in indexes[name]], ("indexes",))
    return paths


class Derm7ptDescriptor(DatasetDescriptor):
    """Derm7pt's descriptor: the recorded modality follows the ``image`` option."""

    def facts(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        facts = super().facts(options)
        facts["modality"] = MODALITIES[facts["options"]["image"]]
        return facts


LICENCE = "research use under the Derm7pt terms (registration at derm.cs.sfu.ca; no redistribution)"
CITATION = ("Kawahara J., Daneshvar S., Argenziano G., Hamarneh G., Seven-point checklist and skin lesion "
            "classification using multitask multimodal neural nets, IEEE J. Biomed. Health Inform. 23(2), 538-546 "
            "(2019). doi:10.1109/JBHI.2018.2824327")

DESCRIPTOR = Derm7ptDescriptor(
    name="derm7pt",
    title="Derm7pt (seven-point checklist)",
    labels=label_set,
    grouping=None,
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="official",
    licence=LICENCE,
    citation=CITATION,
    url="https://derm.cs.sfu.ca",
    layout=LAYOUT,
    access=ACCESS,
    options=OPTIONS,
    class_counts=class_counts,
    reader=read,
    synth_writer=write_synthetic,
)
