"""HAM10000 (Tschandl et al. 2018): seven dermoscopic diagnoses, several images per lesion.

The label set here is the one home of HAM10000's seven codes; the original study's exact modes
(seed split, prompts, parser) check that a run's label set equals it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from ...labels import LabelSet
from .. import raw as rawmod
from ..descriptor import DatasetDescriptor, SubgroupColumn
from ..synthetic import ProfiledWriter, SynthProfile

#: The seven HAM10000 diagnoses in the canonical order of the original study.
LABEL_SET = LabelSet(
    codes=("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    names=("Actinic keratoses and intraepithelial carcinoma", "Basal cell carcinoma",
           "Benign keratosis-like lesions", "Dermatofibroma", "Melanoma", "Melanocytic nevi", "Vascular lesions"),
    # akiec (actinic keratosis / Bowen's disease), bcc and mel are malignant or pre-malignant;
    # several public benchmarks wrongly call bcc benign
    groupings={"malignancy": {"akiec": "malignant", "bcc": "malignant", "bkl": "benign", "df": "benign",
                              "mel": "malignant", "nv": "benign", "vasc": "benign"}},
    positive={"malignancy": "malignant"},
    synonyms={
        "akiec": ("actinic keratosis", "actinic keratoses", "intraepithelial carcinoma", "bowen's disease",
                  "bowen disease", "ak", "bowen"),
        "bcc": ("basal cell carcinoma",),
        "bkl": ("benign keratosis", "benign keratosis-like lesion", "seborrheic keratosis", "solar lentigo",
                "lichen planus-like keratosis", "keratosis", "keratoses", "solar lentigines"),
        "df": ("dermatofibroma",),
        "mel": ("melanoma",),
        "nv": ("nevus", "nevi", "naevus", "melanocytic nevus", "melanocytic nevi", "mole", "naevi",
               "melanocytic naevi"),
        # "vsc" is the study's p4 typo for vasc: an answer echoing the offered option names vasc
        "vasc": ("vascular", "vascular lesion", "vascular lesions", "angioma", "hemangioma", "pyogenic granuloma",
                 "vsc", "haemangioma", "angiokeratoma"),
    },
    focus="mel",
)

#: Images per class in the real HAM10000 (its published counts).
CLASS_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}

#: Age band edges in years: <30, 30-44, 45-59, 60-74, 75+.
AGE_BANDS = (30, 45, 60, 75)

SUBGROUPS = (
    SubgroupColumn("sex"),
    SubgroupColumn("localization"),
    SubgroupColumn("dx_type", title="diagnosis confirmed by"),
    SubgroupColumn("age", kind="banded", bands=AGE_BANDS, title="age band"),
)

LICENCE = "CC BY-NC 4.0 (non-commercial use, attribution required)"
CITATION = ("Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
            "dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 (2018). "
            "doi:10.1038/sdata.2018.161; dataset doi:10.7910/DVN/DBW86T")


def is_ham10000(label_set: LabelSet) -> bool:
    """Whether ``label_set`` has HAM10000's seven classes in the original order."""
    return label_set.same_classes(LABEL_SET)


def require_ham10000(label_set: LabelSet, what: str) -> None:
    """One line when an exact reproduction of the original study runs on another label set."""
    if not is_ham10000(label_set):
        raise ValueError(f"{what} reproduces the original HAM10000 study and needs HAM10000's seven classes "
                         f"({', '.join(LABEL_SET.codes)}); this dataset has {', '.join(label_set.codes)}. "
                         "Choose a dataset-generic option instead")


# ---------------------------------------------------------------- reading the raw folder

#: The metadata table's columns, in HAM10000's order.
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def read_raw(root: Path, options: Mapping[str, str]) -> rawmod.RawData:
    """HAM10000's raw folder: ``HAM10000_metadata.csv`` (or Dataverse's ``.tab``; renamed
    columns are read with a warning) and the images anywhere below (the two part folders,
    Kaggle's lower-case copies, or one folder of ``.jpg``/``.png``). ``lesion_id`` is the group
    and stays a metadata column too."""
    root = Path(root)
    if not root.is_dir():
        raise rawmod.PrepError(f"error: {root}: no such folder; pass the folder holding HAM10000_metadata.csv "
                               "and the image folders (or run `derma download ham10000 --out DIR`)")
    meta_path = rawmod.find_metadata(root)
    frame, problems = rawmod.read_table(meta_path, rawmod.REQUIRED_COLUMNS, rawmod.OPTIONAL_COLUMNS,
                                        hint="`derma download ham10000 --out DIR`")
    images, image_problems = rawmod.find_images(root)
    if not images:
        image_problems.append(rawmod.Problem(
            "no_images", str(root), "no .jpg or .png images found",
            "unpack the image archives (HAM10000_images_part_1/ and _part_2/) here", fatal=True))
    if "lesion_id" in frame.columns:
        frame["group_id"] = frame["lesion_id"]
    return rawmod.RawData(root, meta_path, frame, images, problems + image_problems)


# ---------------------------------------------------------------- the synthetic imitation

#: The synthetic set's per-class look: lesion RGB, radius (fraction of the image height), border
#: irregularity, edge blur (px) and a texture. Colours are jittered per lesion, so neighbours
#: (nv/df/bkl, akiec/bcc) overlap a little.
SYNTH_STYLES = {
    "akiec": dict(rgb=(200, 82, 72), radius=0.25, irregular=0.20, blur=6, texture="scale"),  # red, white scale
    "bcc": dict(rgb=(226, 160, 170), radius=0.22, irregular=0.12, blur=3, texture="vessels"),  # pink, vessels
    "bkl": dict(rgb=(190, 150, 100), radius=0.28, irregular=0.14, blur=2, texture="crypts"),  # tan, milia
    "df": dict(rgb=(150, 96, 76), radius=0.16, irregular=0.05, blur=5, texture="white_centre"),
    "mel": dict(rgb=(48, 32, 30), radius=0.32, irregular=0.32, blur=2, texture="blotches"),  # dark, large
    "nv": dict(rgb=(110, 70, 45), radius=0.21, irregular=0.05, blur=3, texture="network"),  # brown, round
    "vasc": dict(rgb=(140, 22, 70), radius=0.18, irregular=0.10, blur=2, texture="lobules"),  # red-purple
}
SYNTH_DX_TYPES = {
    "akiec": (("histo", 1.0),), "bcc": (("histo", 1.0),), "mel": (("histo", 1.0),),
    "bkl": (("histo", 0.6), ("consensus", 0.3), ("confocal", 0.1)),
    "df": (("histo", 0.5), ("consensus", 0.5)), "vasc": (("histo", 0.5), ("consensus", 0.5)),
    "nv": (("follow_up", 0.5), ("histo", 0.45), ("consensus", 0.05)),
}
SYNTH_AGE = {"akiec": (67, 12), "bcc": (66, 12), "bkl": (60, 15), "df": (50, 15), "mel": (60, 15),
             "nv": (42, 16), "vasc": (50, 20)}
SYNTH_PROFILE = SynthProfile(styles=SYNTH_STYLES, age=SYNTH_AGE, extra={"dx_type": SYNTH_DX_TYPES},
                             image_id="ISIC_{:07d}", group_id="HAM_{:07d}", tone_from_lesion=True)


def write_synthetic(out: Path, draws: pd.DataFrame, options: Mapping[str, str]) -> list[Path]:
    """HAM10000's layout: ``HAM10000_metadata.csv`` (its seven columns) and the JPEGs split over
    ``HAM10000_images_part_1/`` and ``_part_2/`` in row order."""
    out = Path(out)
    table = draws.assign(lesion_id=draws["group_id"], localization=draws["site"])
    if "dx_type" not in table.columns:  # drawn by HAM10000's profile; blank for any other
        table["dx_type"] = ""
    table[list(METADATA_COLUMNS)].to_csv(out / "HAM10000_metadata.csv", index=False)
    half = (len(draws) + 1) // 2
    parts = [out / "HAM10000_images_part_1", out / "HAM10000_images_part_2"]
    return [parts[0 if i < half else 1] / f"{image_id}.jpg" for i, image_id in enumerate(draws["image_id"])]


def download(out: Path, options: Mapping[str, str] | None = None, progress: bool = True, **kwargs) -> Path:
    """HAM10000 from Harvard Dataverse (resumable, checksummed) into its raw layout
    (:func:`derma_core.data.download.download_ham10000`; keywords such as ``server``, ``retries``,
    ``keep_archives`` and ``log`` pass through)."""
    from ..download import download_ham10000

    return download_ham10000(out, options, progress, **kwargs)


DESCRIPTOR = DatasetDescriptor(
    name="ham10000",
    title="HAM10000",
    labels=LABEL_SET,
    grouping="lesion",
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://doi.org/10.7910/DVN/DBW86T",
    layout="HAM10000_metadata.csv (lesion_id,image_id,dx,dx_type,age,sex,localization) and the JPEGs in "
           "HAM10000_images_part_1/ and HAM10000_images_part_2/ (Kaggle's lower-case copies also accepted)",
    access="`derma download ham10000 --out DIR` (Harvard Dataverse), or by hand from "
           "https://doi.org/10.7910/DVN/DBW86T or Kaggle's 'skin-cancer-mnist-ham10000'",
    class_counts=CLASS_COUNTS,
    reader=read_raw,
    downloader=download,
    synth_writer=ProfiledWriter(write_synthetic, SYNTH_PROFILE),
)
