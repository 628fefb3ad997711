"""ISIC 2019 (training set): eight dermoscopic diagnoses from one-hot ground truth, grouped by lesion.

Raw layout: ``ISIC_2019_Training_GroundTruth.csv`` (``image`` and one-hot ``MEL,NV,BCC,AK,BKL,
DF,VASC,SCC,UNK``, written ``0``/``1`` or ``0.0``/``1.0``), ``ISIC_2019_Training_Metadata.csv``
(``image,age_approx,anatom_site_general,lesion_id,sex``) and the JPEGs (the archive unpacks to
``ISIC_2019_Training_Input/``). ISIC 2019 contains all of HAM10000 (lesion ids ``HAM_...``) and
BCN20000's training images (``BCN_...``): training on one and testing on another leaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, SubgroupColumn
from ..download import download_isic2019
from . import common
from .ham10000 import AGE_BANDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"
IMAGE_FOLDER = "ISIC_2019_Training_Input"
#: The one-hot columns in the file's order; UNK (unknown) is empty in the training set and refused.
ONE_HOT = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNKNOWN_COLUMN = "UNK"

LABEL_SET = LabelSet(
    codes=tuple(c.lower() for c in ONE_HOT),
    names=("Melanoma", "Melanocytic nevus", "Basal cell carcinoma", "Actinic keratosis",
           "Benign keratosis", "Dermatofibroma", "Vascular lesion", "Squamous cell carcinoma"),
    # ak is pre-malignant; it holds HAM10000's akiec images (actinic keratoses AND Bowen's disease,
    # an intraepithelial carcinoma), which HAM10000's label set counts malignant: counted the same here
    groupings={"malignancy": {"mel": "malignant", "nv": "benign", "bcc": "malignant", "ak": "malignant",
                              "bkl": "benign", "df": "benign", "vasc": "benign", "scc": "malignant"}},
    positive={"malignancy": "malignant"},
    synonyms={
        "mel": ("melanoma",),
        "nv": ("nevus", "nevi", "naevus", "melanocytic nevi", "mole"),
        "bcc": ("basal cell carcinoma",),
        "ak": ("actinic keratoses", "solar keratosis", "akiec"),
        "bkl": ("benign keratosis-like lesion", "seborrheic keratosis", "solar lentigo",
                "lichen planus-like keratosis", "keratosis"),
        "df": ("dermatofibroma",),
        "vasc": ("vascular", "vascular lesions", "angioma", "hemangioma", "pyogenic granuloma"),
        "scc": ("squamous cell carcinoma", "cutaneous squamous cell carcinoma"),
    },
    focus="mel",
)

#: Images per class in the ISIC 2019 training ground truth (its published counts).
CLASS_COUNTS = {"mel": 4522, "nv": 12875, "bcc": 3323, "ak": 867, "bkl": 2624, "df": 239, "vasc": 253, "scc": 628}

SUBGROUPS = (
    SubgroupColumn("sex"),
    SubgroupColumn("anatom_site_general", title="anatomical site"),
    SubgroupColumn("age_approx", kind="banded", bands=AGE_BANDS, title="age band"),
)

LAYOUT = (f"{GROUND_TRUTH} (image + one-hot {','.join(ONE_HOT)},{UNKNOWN_COLUMN}), {METADATA} "
          f"(image,age_approx,anatom_site_general,lesion_id,sex) and the JPEGs (e.g. {IMAGE_FOLDER}/)")


def read_one_hot(frame: "pd.DataFrame", path: Path, image_column: str, columns: tuple[str, ...],
                 refused: tuple[str, ...] = ()) -> tuple[list[str | None], list]:
    """Each row's class (the lower-cased name of its one column holding 1) from one-hot columns
    written ``0``/``1`` or ``0.0``/``1.0``; None for a refused row, with a fatal problem naming
    it: no 1, several 1s, a value that is not 0 or 1, or a 1 in a ``refused`` column (ISIC's UNK)."""
    import pandas as pd

    problems = []
    every = columns + tuple(c for c in refused if c in frame.columns)
    lines = frame["_line"].tolist()
    numeric = frame[list(every)].apply(pd.to_numeric, errors="coerce")
    numeric = numeric.where(numeric.isin([0, 1]))  # anything but 0/1 (0.0/1.0) is NaN: refused below
    invalid = numeric.isna().any(axis=1).to_numpy()
    ones = (numeric == 1).to_numpy()
    n_ones = ones.sum(axis=1)
    is_refused = ones[:, [i for i, c in enumerate(every) if c in refused]].any(axis=1)
    usable = ~invalid & ~is_refused & (n_ones == 1)
    labels: list[str | None] = [every[k].lower() for k in ones.argmax(axis=1)]
    for i in (i for i in range(len(frame)) if not usable[i]):
        labels[i] = None
        where = f"{path.name} line {lines[i]} ({frame[image_column].iat[i]})"
        marked = [c for c, one in zip(every, ones[i]) if one]
        if invalid[i]:
            for col in every:
                if numeric[col].isna().iat[i]:
                    problems.append(common.problem("bad_one_hot", where,
                                                   f"column {col} holds {frame[col].iat[i]!r}, not 0 or 1",
                                                   "fix the value or remove the row", fatal=True))
        elif is_refused[i]:
            problems.append(common.problem(
                "refused_label", where, f"marked {', '.join(c for c in marked if c in refused)} (unknown diagnosis)",
                f"rows of an unknown class cannot be used; remove the row (classes: {', '.join(columns)})", fatal=True))
        else:
            problems.append(common.problem(
                "bad_one_hot", where,
                "no class marked 1" if not marked else f"{len(marked)} classes marked 1 ({', '.join(marked)})",
                "exactly one of the class columns must be 1; fix the row or remove it", fatal=True))
    return labels, problems


def read(root: Path, options: Mapping[str, str] | None = None):
    """The ISIC 2019 raw folder as RawData (see the module docstring)."""
    gt_path = common.find_file(root, (GROUND_TRUTH,), "ISIC 2019", LAYOUT)
    gt = common.read_table(gt_path, "ISIC 2019 ground truth", ("image",) + ONE_HOT)
    labels, problems = read_one_hot(gt, gt_path, "image", ONE_HOT, refused=(UNKNOWN_COLUMN,))
    frame = gt[["image", "_line"]].rename(columns={"image": "image_id"})
    frame["dx"] = labels
    frame = frame[frame["dx"].notna()]  # refused rows (each a fatal problem above)
    meta_path = common.find_optional(root, (METADATA,))
    if meta_path is None:
        problems.append(common.problem(
            "missing_metadata", str(root), f"no {METADATA}: no lesion ids, ages, sites or sexes",
            "every image becomes its own group, so images of one lesion (e.g. HAM10000's) may leak between "
            f"splits; put {METADATA} next to the ground truth"))
    else:
        meta = common.read_table(meta_path, "ISIC 2019 metadata", ("image",))
        meta = meta.drop_duplicates("image").rename(columns={"image": "image_id"})
        meta = meta.drop(columns=[c for c in ("dx", "group_id", "_line") if c in meta.columns])
        frame = frame.merge(meta, on="image_id", how="left", validate="many_to_one")
        columns = [c for c in meta.columns if c != "image_id"]
        frame[columns] = frame[columns].fillna("")  # images the metadata file does not list
    if "lesion_id" not in frame.columns:
        frame["lesion_id"] = ""
    # ISIC 2019 leaves the lesion id blank for some images (2,084 in the training set): each is its own group
    frame["group_id"] = frame["lesion_id"].where(frame["lesion_id"] != "", frame["image_id"])
    images, image_problems = common.find_images(root)
    return common.raw_data(root, gt_path, frame, images, problems + image_problems)


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """ISIC 2019's raw layout for synthetic draws: ``ISIC_nnnnnnn`` ids, the one-hot ground truth
    written as the ISIC site does (``0.0``/``1.0``, with the empty UNK column), lesion ids
    ``BCN_nnnnnnn`` and the images in ``ISIC_2019_Training_Input/``."""
    out = Path(out)
    ids = [f"ISIC_{i:07d}" for i in range(len(draws))]
    dx = common.draw_column(draws, "dx")
    gt = [{"image": image_id, **{c: "1.0" if d == c.lower() else "0.0" for c in ONE_HOT}, UNKNOWN_COLUMN: "0.0"}
          for image_id, d in zip(ids, dx)]
    common.write_table(out / GROUND_TRUTH, gt, ("image",) + ONE_HOT + (UNKNOWN_COLUMN,))
    lesions = common.group_numbers(common.draw_column(draws, "group_id"))
    meta = [{"image": image_id, "age_approx": "" if (a := common.age_approx(age)) is None else str(a),
             "anatom_site_general": site, "lesion_id": f"BCN_{lesion:07d}", "sex": sex}
            for image_id, age, site, lesion, sex in zip(ids, common.draw_column(draws, "age"),
                                                         common.draw_column(draws, "site"), lesions,
                                                         common.draw_column(draws, "sex"))]
    common.write_table(out / METADATA, meta, ("image", "age_approx", "anatom_site_general", "lesion_id", "sex"))
    return [out / IMAGE_FOLDER / f"{image_id}.jpg" for image_id in ids]


LICENCE = "CC BY-NC 4.0 (non-commercial use, attribution required)"
CITATION = ("Tschandl P. et al., The HAM10000 dataset, Sci. Data 5, 180161 (2018); Codella N. et al., Skin lesion "
            "analysis toward melanoma detection (ISIC 2017), arXiv:1710.05006; Hernández-Pérez C. et al., BCN20000: "
            "dermoscopic lesions in the wild, Sci. Data 11, 641 (2024)")

DESCRIPTOR = DatasetDescriptor(
    name="isic2019",
    title="ISIC 2019",
    labels=LABEL_SET,
    grouping="lesion",
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://challenge.isic-archive.com/data/#2019",
    layout=LAYOUT,
    access="`derma download isic2019 --out DIR` (the ISIC challenge's public files, about 9 GB), or by hand from "
           "https://challenge.isic-archive.com/data/#2019",
    class_counts=CLASS_COUNTS,
    reader=read,
    downloader=download_isic2019,
    synth_writer=write_synthetic,
)
