"""DDI, the Diverse Dermatology Images (Daneshjou et al., Sci. Adv. 2022): malignant vs benign in
clinical images across skin tones.

Raw layout: ``ddi_metadata.csv`` (an unnamed index column, then ``DDI_ID,DDI_file,skin_tone,
malignant,disease``; ``skin_tone`` 12, 34 or 56 for Fitzpatrick I-II, III-IV, V-VI; ``malignant``
TRUE/FALSE) and the images it names (``000001.png``...), found by file name anywhere in the
folder. The 78 disease names are kept as metadata. DDI publishes no patient ids, so every image
is its own group. Access needs Stanford AIMI's research-use agreement: no downloader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, SubgroupColumn
from . import common

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

METADATA = "ddi_metadata.csv"
COLUMNS = ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease")

LABEL_SET = LabelSet(
    codes=("benign", "malignant"),
    names=("Benign lesion", "Malignant lesion"),
    groupings={"malignancy": {"benign": "benign", "malignant": "malignant"}},
    positive={"malignancy": "malignant"},
    synonyms={"benign": ("not malignant", "non-malignant", "noncancerous"),
              "malignant": ("malignancy", "cancer", "cancerous", "skin cancer")},
    focus="malignant",
)
_MALIGNANT = {"true": "malignant", "false": "benign", "1": "malignant", "0": "benign"}

#: Images per class in DDI (656 images: 171 malignant, 485 benign; Daneshjou et al. 2022).
CLASS_COUNTS = {"benign": 485, "malignant": 171}

SKIN_TONES = ("12", "34", "56")
SUBGROUPS = (SubgroupColumn("skin_tone", kind="ordinal", order=SKIN_TONES,
                            title="Fitzpatrick skin type (12: I-II, 34: III-IV, 56: V-VI)"),)

LAYOUT = f"{METADATA} (index,{','.join(COLUMNS)}) and the images it names (000001.png, ...)"
ACCESS = ("DDI needs a research-use agreement: request it at https://ddi-dataset.github.io (Stanford AIMI, "
          "https://stanfordaimi.azurewebsites.net/datasets/35866158-8196-48d8-87bf-50dca81df965), unzip it so that "
          f"{METADATA} and the PNGs sit in one folder, then `derma prep --dataset ddi --raw FOLDER --out PREPARED`")

#: Disease names the synthetic writer uses (real DDI disease strings).
_DISEASES = {"malignant": ("melanoma-in-situ", "basal-cell-carcinoma", "squamous-cell-carcinoma-in-situ",
                           "mycosis-fungoides"),
             "benign": ("seborrheic-keratosis", "verruca-vulgaris", "melanocytic-nevi", "dermatofibroma",
                        "epidermal-cyst")}


def read(root: Path, options: Mapping[str, str] | None = None):
    """The DDI raw folder as RawData (see the module docstring)."""
    path = common.find_file(root, (METADATA,), "DDI", LAYOUT)
    meta = common.drop_index_columns(common.read_table(path, "DDI metadata", ("DDI_file", "malignant")))
    if "skin_tone" in meta.columns:
        meta["skin_tone"] = common.map_values(meta["skin_tone"], common.normalise_number)
    frame = meta.copy()
    frame.insert(0, "image_id", [Path(v).stem if v else "" for v in meta["DDI_file"]])
    frame.insert(1, "dx", common.map_values(meta["malignant"], lambda v: common.one_of(v, _MALIGNANT)))
    frame.insert(2, "group_id", "")
    images, problems = common.find_images(root)
    return common.raw_data(root, path, frame, images, problems)


def _tone(skin_type) -> str:
    return SKIN_TONES[(common.skin_type(skin_type) - 1) // 2]


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """DDI's raw layout for synthetic draws: ``ddi_metadata.csv`` with pandas' index column and
    the images ``000001.png``... next to it."""
    out = Path(out)
    rows, paths = [], []
    for i, (dx, fitz) in enumerate(zip(common.draw_column(draws, "dx"), common.draw_column(draws, "skin_type", None))):
        name = f"{i + 1:06d}.png"
        diseases = _DISEASES.get(str(dx), ("unknown",))
        malignant = {"malignant": "TRUE", "benign": "FALSE"}.get(str(dx), str(dx))
        rows.append({"": str(i), "DDI_ID": str(i + 1), "DDI_file": name, "skin_tone": _tone(fitz),
                     "malignant": malignant, "disease": diseases[i % len(diseases)]})
        paths.append(out / name)
    common.write_table(out / METADATA, rows, ("",) + COLUMNS)
    return paths


LICENCE = "Stanford University research-use agreement (no redistribution)"
CITATION = ("Daneshjou R. et al., Disparities in dermatology AI performance on a diverse, curated clinical image set, "
            "Sci. Adv. 8, eabq6147 (2022). doi:10.1126/sciadv.abq6147")

DESCRIPTOR = DatasetDescriptor(
    name="ddi",
    title="DDI (Diverse Dermatology Images)",
    labels=LABEL_SET,
    grouping=None,
    modality="clinical",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://ddi-dataset.github.io",
    layout=LAYOUT,
    access=ACCESS,
    class_counts=CLASS_COUNTS,
    reader=read,
    synth_writer=write_synthetic,
)
