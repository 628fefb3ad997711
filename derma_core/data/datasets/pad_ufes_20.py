"""PAD-UFES-20 (Pacheco et al. 2020): six diagnoses in smartphone (clinical) images, grouped by patient.

Raw layout: ``metadata.csv`` (26 columns, below; ``diagnostic`` one of ACK, BCC, MEL, NEV, SCC,
SEK; ``img_id`` like ``PAT_1516_1765_530.png``) and the PNGs in ``images/imgs_part_{1,2,3}/``
(any depth: images are found by file name). All 26 columns are kept as metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, SubgroupColumn
from ..download import download_pad_ufes_20
from . import common
from .ham10000 import AGE_BANDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

METADATA = "metadata.csv"
#: The published columns of metadata.csv, in the file's order.
COLUMNS = ("patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
           "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
           "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed",
           "elevation", "img_id", "biopsed")
DIAGNOSTICS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")

LABEL_SET = LabelSet(
    codes=tuple(d.lower() for d in DIAGNOSTICS),
    names=("Actinic keratosis", "Basal cell carcinoma", "Melanoma", "Nevus", "Squamous cell carcinoma",
           "Seborrheic keratosis"),
    # the dataset's own grouping: BCC, MEL and SCC (which includes Bowen's disease) are the skin
    # cancers, all biopsy-proven; ACK here is actinic keratosis alone (pre-malignant, no Bowen's)
    # and is counted with the non-cancer diseases, as its authors do
    groupings={"malignancy": {"ack": "benign", "bcc": "malignant", "mel": "malignant", "nev": "benign",
                              "scc": "malignant", "sek": "benign"}},
    positive={"malignancy": "malignant"},
    synonyms={
        "ack": ("actinic keratosis", "actinic keratoses", "solar keratosis", "ak"),
        "bcc": ("basal cell carcinoma",),
        "mel": ("melanoma",),
        "nev": ("nevus", "nevi", "naevus", "mole", "melanocytic nevus"),
        "scc": ("squamous cell carcinoma", "bowen's disease", "bowen disease"),
        "sek": ("seborrheic keratosis", "seborrhoeic keratosis", "sk"),
    },
    focus="mel",
)
_CODES = {d.lower(): d.lower() for d in DIAGNOSTICS}

#: Images per diagnosis in PAD-UFES-20 (Pacheco et al. 2020, 2,298 images of 1,373 patients).
CLASS_COUNTS = {"ack": 730, "bcc": 845, "mel": 52, "nev": 244, "scc": 192, "sek": 235}

FITZPATRICK_TYPES = ("1", "2", "3", "4", "5", "6")
SUBGROUPS = (
    SubgroupColumn("fitspatrick", kind="ordinal", order=FITZPATRICK_TYPES, unknown=("",), title="Fitzpatrick type"),
    SubgroupColumn("region", title="body region"),
    SubgroupColumn("age", kind="banded", bands=AGE_BANDS, title="age band"),
    SubgroupColumn("gender"),
)

LAYOUT = (f"{METADATA} (26 columns: patient_id, ..., diagnostic, ..., img_id, biopsed) and the PNGs in "
          "images/imgs_part_1/, imgs_part_2/, imgs_part_3/")


def read(root: Path, options: Mapping[str, str] | None = None):
    """The PAD-UFES-20 raw folder as RawData (see the module docstring)."""
    path = common.find_file(root, (METADATA,), "PAD-UFES-20", LAYOUT)
    meta = common.read_table(path, "PAD-UFES-20 metadata", ("patient_id", "diagnostic", "img_id"))
    if "fitspatrick" in meta.columns:  # written 3.0 where the column has blanks
        meta["fitspatrick"] = common.map_values(meta["fitspatrick"], common.normalise_number)
    frame = meta.copy()
    frame.insert(0, "image_id", [Path(v).stem if v else "" for v in meta["img_id"]])
    frame.insert(1, "dx", common.map_values(meta["diagnostic"], lambda v: common.one_of(v, _CODES)))
    frame.insert(2, "group_id", meta["patient_id"])
    images, problems = common.find_images(root)
    return common.raw_data(root, path, frame, images, problems)


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """PAD-UFES-20's raw layout for synthetic draws: patients ``PAT_n``, images
    ``PAT_n_lesion_k.png`` spread over ``images/imgs_part_{1,2,3}/``, all 26 columns."""
    out = Path(out)
    n = len(draws)
    patients = common.group_numbers(common.draw_column(draws, "group_id"))
    rows, paths = [], []
    for i, (dx, patient, age, sex, site, fitz) in enumerate(zip(
            common.draw_column(draws, "dx"), patients, common.draw_column(draws, "age"),
            common.draw_column(draws, "sex"), common.draw_column(draws, "site"),
            common.draw_column(draws, "skin_type", None))):
        code = str(dx).upper()
        lesion = 1000 + i
        img_id = f"PAT_{patient + 1}_{lesion}_{100 + i}.png"
        age_years = common.age_value(age)
        cancer = code in ("BCC", "MEL", "SCC")
        row = {c: "" for c in COLUMNS}
        row.update(patient_id=f"PAT_{patient + 1}", lesion_id=str(lesion),
                   age="" if age_years is None else str(age_years),
                   gender=str(sex).upper(), fitspatrick=f"{common.skin_type(fitz)}.0", region=str(site).upper(),
                   diameter_1=f"{5 + i % 11}.0", diameter_2=f"{4 + i % 9}.0", diagnostic=code,
                   itch=str(i % 2 == 0), grew=str(cancer), hurt="False", changed=str(cancer), bleed=str(i % 4 == 0),
                   elevation=str(i % 3 == 0), img_id=img_id, biopsed=str(cancer or i % 3 == 0))
        rows.append(row)
        paths.append(out / "images" / f"imgs_part_{1 + 3 * i // max(n, 1)}" / img_id)
    common.write_table(out / METADATA, rows, COLUMNS)
    return paths


LICENCE = "CC BY 4.0 (attribution required)"
CITATION = ("Pacheco A.G.C. et al., PAD-UFES-20: a skin lesion dataset composed of patient data and clinical images "
            "collected from smartphones, Data in Brief 32, 106221 (2020). doi:10.1016/j.dib.2020.106221; dataset "
            "doi:10.17632/zr7vgbcyr2.1")

DESCRIPTOR = DatasetDescriptor(
    name="pad_ufes_20",
    title="PAD-UFES-20",
    labels=LABEL_SET,
    grouping="patient",
    modality="clinical",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://doi.org/10.17632/zr7vgbcyr2.1",
    layout=LAYOUT,
    access="`derma download pad_ufes_20 --out DIR` (Mendeley Data), or by hand from "
           "https://data.mendeley.com/datasets/zr7vgbcyr2/1",
    class_counts=CLASS_COUNTS,
    reader=read,
    downloader=download_pad_ufes_20,
    synth_writer=write_synthetic,
)
