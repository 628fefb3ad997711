"""ISIC 2020 (training set): melanoma vs benign from ``target``, grouped by patient.

Raw layout: ``ISIC_2020_Training_GroundTruth.csv`` (``image_name,patient_id,sex,age_approx,
anatom_site_general_challenge,diagnosis,benign_malignant,target``; the ``_v2`` file, which adds
``lesion_id``, is read when the first is absent), the organisers' ``ISIC_2020_Training_Duplicates.csv``
(``image_name_1,image_name_2``) and the JPEGs (the archive unpacks to ``train/``). ``diagnosis``
is ``unknown`` for most benign images, so the task is binary; it is kept as metadata.

Of each duplicate pair the first image is kept and the second dropped, with one warning giving
the count: the same image in train and test would inflate every score.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, SubgroupColumn
from ..download import download_isic2020
from . import common
from .ham10000 import AGE_BANDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

GROUND_TRUTH = ("ISIC_2020_Training_GroundTruth.csv", "ISIC_2020_Training_GroundTruth_v2.csv")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
IMAGE_FOLDER = "train"
COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target")

LABEL_SET = LabelSet(
    codes=("benign", "melanoma"),
    names=("Benign lesion", "Melanoma"),
    groupings={"malignancy": {"benign": "benign", "melanoma": "malignant"}},
    positive={"malignancy": "malignant"},
    synonyms={"benign": ("benign", "nevus", "not melanoma", "no melanoma"), "melanoma": ("malignant", "mel")},
    focus="melanoma",
)
_TARGETS = {"0": "benign", "1": "melanoma", "0.0": "benign", "1.0": "melanoma"}

#: Images per class in the ISIC 2020 training ground truth (its published counts, before duplicates).
CLASS_COUNTS = {"benign": 32542, "melanoma": 584}

SUBGROUPS = (
    SubgroupColumn("sex"),
    SubgroupColumn("anatom_site_general_challenge", title="anatomical site"),
    SubgroupColumn("age_approx", kind="banded", bands=AGE_BANDS, title="age band"),
)

LAYOUT = (f"{GROUND_TRUTH[0]} ({','.join(COLUMNS)}; or the _v2 file), {DUPLICATES} (image_name_1,image_name_2) "
          f"and the JPEGs (e.g. {IMAGE_FOLDER}/)")


def read(root: Path, options: Mapping[str, str] | None = None):
    """The ISIC 2020 raw folder as RawData (see the module docstring)."""
    gt_path = common.find_file(root, GROUND_TRUTH, "ISIC 2020", LAYOUT)
    gt = common.read_table(gt_path, "ISIC 2020 ground truth", ("image_name", "patient_id", "target"))
    frame = gt.rename(columns={"image_name": "image_id"})
    frame.insert(1, "dx", common.map_values(gt["target"], lambda t: common.one_of(t, _TARGETS)))
    frame.insert(2, "group_id", gt["patient_id"])
    problems: list = []
    images, image_problems = common.find_images(root)
    dup_path = common.find_optional(root, (DUPLICATES,))
    if dup_path is None:
        problems.append(common.problem(
            "missing_duplicates", str(root), f"no {DUPLICATES}: the organisers' duplicate image pairs stay in",
            f"a duplicate in train and test inflates every score; put {DUPLICATES} next to the ground truth"))
    else:
        kept, dup_problems = drop_duplicates(frame, dup_path)
        problems += dup_problems
        dropped = set(frame["image_id"]) - set(kept["image_id"])
        images = {k: v for k, v in images.items() if k not in dropped}  # not orphans: known copies
        frame = kept
    return common.raw_data(root, gt_path, frame, images, problems + image_problems)


def drop_duplicates(frame: "pd.DataFrame", path: Path) -> tuple["pd.DataFrame", list]:
    """Drop the second image of each pair listed in the duplicates file (pairs of images the
    ground truth lists); one warning with the count, a fatal problem for a pair whose two images
    carry different labels or patients."""
    pairs = common.read_table(path, "ISIC 2020 duplicates", ("image_name_1", "image_name_2"))
    labels = dict(zip(frame["image_id"].tolist(), frame["dx"].tolist()))
    groups = dict(zip(frame["image_id"].tolist(), frame["group_id"].tolist()))
    parent: dict[str, str] = {}  # union-find over the pairs: chains (a=b, b=c) keep one image

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    problems = []
    for line, first, second in zip(pairs["_line"].tolist(), pairs["image_name_1"].tolist(),
                                   pairs["image_name_2"].tolist()):
        if first not in labels or second not in labels or first == second:
            continue
        if labels[first] != labels[second] or groups[first] != groups[second]:
            problems.append(common.problem(
                "duplicate_conflict", f"{path.name} line {line} ({first}, {second})",
                f"the two copies of one image differ (label {labels[first]} vs {labels[second]}, patient "
                f"{groups[first]} vs {groups[second]})", "correct the ground truth of one of them", fatal=True))
        ra, rb = root(first), root(second)
        if ra != rb:
            parent[rb] = ra  # one image of each set of copies stays (the first of its first pair)
    drop = {x for x in parent if root(x) != x}
    if drop:
        problems.append(common.problem(
            "duplicates_dropped", path.name,
            f"{len(drop)} images duplicate another image of the ground truth and were dropped",
            "the first image of each pair is kept; nothing to do"))
    return frame[~frame["image_id"].isin(drop)], problems


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """ISIC 2020's raw layout for synthetic draws: ``ISIC_nnnnnnn`` images of patients
    ``IP_nnnnnnn``, ages written ``45.0``, an (empty) duplicates list, the images in ``train/``."""
    out = Path(out)
    ids = [f"ISIC_{i:07d}" for i in range(len(draws))]
    patients = common.group_numbers(common.draw_column(draws, "group_id"))
    rows = []
    for i, (image_id, dx, patient, age, sex, site) in enumerate(zip(
            ids, common.draw_column(draws, "dx"), patients, common.draw_column(draws, "age"),
            common.draw_column(draws, "sex"), common.draw_column(draws, "site"))):
        melanoma = dx == "melanoma"
        approx = common.age_approx(age)
        rows.append({"image_name": image_id, "patient_id": f"IP_{patient:07d}", "sex": sex,
                     "age_approx": "" if approx is None else f"{approx:.1f}", "anatom_site_general_challenge": site,
                     # most benign images have no finer diagnosis in ISIC 2020
                     "diagnosis": "melanoma" if melanoma else ("nevus" if i % 5 == 0 else "unknown"),
                     "benign_malignant": "malignant" if melanoma else "benign",
                     "target": "1" if melanoma else ("0" if dx == "benign" else dx)})
    common.write_table(out / GROUND_TRUTH[0], rows, COLUMNS)
    common.write_table(out / DUPLICATES, [], ("image_name_1", "image_name_2"))
    return [out / IMAGE_FOLDER / f"{image_id}.jpg" for image_id in ids]


LICENCE = "CC BY-NC 4.0 (non-commercial use, attribution required)"
CITATION = ("Rotemberg V. et al., A patient-centric dataset of images and metadata for identifying melanomas using "
            "clinical context, Sci. Data 8, 34 (2021). doi:10.1038/s41597-021-00815-z")

DESCRIPTOR = DatasetDescriptor(
    name="isic2020",
    title="ISIC 2020",
    labels=LABEL_SET,
    grouping="patient",
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://challenge.isic-archive.com/data/#2020",
    layout=LAYOUT,
    access="`derma download isic2020 --out DIR` (the ISIC challenge's public files, about 23 GB), or by hand "
           "from https://challenge.isic-archive.com/data/#2020",
    class_counts=CLASS_COUNTS,
    reader=read,
    downloader=download_isic2020,
    synth_writer=write_synthetic,
)
