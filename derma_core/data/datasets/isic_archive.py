"""Any export of the ISIC Archive (www.isic-archive.com): images named by ``isic_id`` and a
``metadata.csv`` with the archive's columns (``isic_id``, ``diagnosis`` — or, in the archive's
newer hierarchical schema, ``diagnosis_1`` .. ``diagnosis_5`` —, ``benign_malignant``,
``lesion_id``, ``patient_id``, ``age_approx``, ``anatom_site_general``, ``sex``, ...), as the
archive's gallery download or ``isic image download`` (isic-cli) writes it. Grouped by lesion;
images without a lesion id are their own group; ``patient_id`` is kept as metadata.

The prep option ``labels`` chooses the classes:

* ``isic2019`` (default): ISIC 2019's eight classes (:data:`isic2019.LABEL_SET`), from the
  documented mapping :data:`DIAGNOSES` of the archive's diagnosis strings (``diagnosis``, else
  ``diagnosis_3``). Any other diagnosis (e.g. ``scar``, ``lentigo NOS``) is refused naming the
  row: filter the export, or use ``binary``;
* ``binary``: benign vs malignant from ``benign_malignant`` (else ``diagnosis_1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, DatasetOption, SubgroupColumn
from . import common
from .ham10000 import AGE_BANDS
from .isic2019 import LABEL_SET as ISIC2019_LABELS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

METADATA = "metadata.csv"

#: The archive's diagnosis strings (lower case; legacy ``diagnosis`` and newer ``diagnosis_3``) that
#: fall in one of ISIC 2019's classes, following ISIC 2019's class definitions: bkl = solar
#: lentigo, seborrheic keratosis, lichen planus-like keratosis; vasc = angiomas, angiokeratomas,
#: pyogenic granulomas, haemorrhage; melanoma metastases count as melanoma.
DIAGNOSES = {
    "melanoma": "mel", "melanoma metastasis": "mel", "melanoma invasive": "mel", "melanoma in situ": "mel",
    "melanoma, nos": "mel",
    "nevus": "nv",
    "basal cell carcinoma": "bcc",
    "actinic keratosis": "ak", "solar or actinic keratosis": "ak",
    "seborrheic keratosis": "bkl", "solar lentigo": "bkl", "lichenoid keratosis": "bkl",
    "lichen planus like keratosis": "bkl", "pigmented benign keratosis": "bkl",
    "dermatofibroma": "df",
    "vascular lesion": "vasc", "angioma": "vasc", "hemangioma": "vasc", "angiokeratoma": "vasc",
    "pyogenic granuloma": "vasc", "hemorrhage": "vasc",
    "squamous cell carcinoma": "scc", "squamous cell carcinoma, invasive": "scc",
    "squamous cell carcinoma in situ": "scc",
}

BINARY = LabelSet(
    codes=("benign", "malignant"),
    names=("Benign lesion", "Malignant lesion"),
    groupings={"malignancy": {"benign": "benign", "malignant": "malignant"}},
    positive={"malignancy": "malignant"},
    synonyms={"benign": ("not malignant", "non-malignant"), "malignant": ("malignancy", "cancer", "skin cancer")},
    focus="malignant",
)
_BINARY = {"benign": "benign", "malignant": "malignant"}

OPTIONS = (DatasetOption("labels", default="isic2019", choices=("isic2019", "binary"),
                         help="isic2019: ISIC 2019's eight classes from the diagnosis; binary: benign/malignant"),)


def label_set(options: Mapping[str, str] | None = None) -> LabelSet:
    return BINARY if (options or {}).get("labels", "isic2019") == "binary" else ISIC2019_LABELS


SUBGROUPS = (
    SubgroupColumn("sex"),
    SubgroupColumn("anatom_site_general", title="anatomical site"),
    SubgroupColumn("age_approx", kind="banded", bands=AGE_BANDS, title="age band"),
)

LAYOUT = (f"{METADATA} (isic_id, diagnosis or diagnosis_1..5, benign_malignant, lesion_id, patient_id, ...) and the "
          "images <isic_id>.jpg")
ACCESS = ("export the images and their metadata from https://www.isic-archive.com (the gallery's download, or "
          "`isic image download FOLDER` of isic-cli), then `derma prep --dataset isic_archive --raw FOLDER --out "
          "PREPARED`")


def _first(frame, columns: tuple[str, ...]) -> list[str]:
    """Per row, the first non-blank value among ``columns`` (those the table has)."""
    present = [c for c in columns if c in frame.columns]
    out = []
    for values in zip(*(frame[c] for c in present)) if present else ([""] * len(frame),):
        out.append(next((v for v in values if v), ""))
    return out


def read_export(root: Path, options: Mapping[str, str] | None, title: str, layout: str):
    """An ISIC Archive export as RawData (see the module docstring)."""
    binary = (options or {}).get("labels", "isic2019") == "binary"
    path = common.find_file(root, (METADATA,), title, layout)
    meta = common.read_table(path, f"{title} metadata", ("isic_id",))
    source = ("benign_malignant", "diagnosis_1") if binary else ("diagnosis", "diagnosis_3")
    if not any(c in meta.columns for c in source):
        raise common.prep_error(f"{path.name}: no {' or '.join(source)} column (columns: {', '.join(meta.columns)}); "
                                f"export the images with their diagnosis")
    frame = meta.copy()
    frame.insert(0, "image_id", meta["isic_id"])
    frame.insert(1, "dx", [common.one_of(v, _BINARY if binary else DIAGNOSES) for v in _first(meta, source)])
    lesion = meta["lesion_id"] if "lesion_id" in meta.columns else None
    # images without a lesion id are their own group
    frame.insert(2, "group_id", meta["isic_id"] if lesion is None else lesion.where(lesion != "", meta["isic_id"]))
    images, problems = common.find_images(root)
    return common.raw_data(root, path, frame, images, problems)


def read(root: Path, options: Mapping[str, str] | None = None):
    return read_export(root, options, "ISIC Archive export", LAYOUT)


#: The columns the synthetic writer fills (a subset of an export's, in its order).
EXPORT_COLUMNS = ("isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
                  "benign_malignant", "diagnosis", "image_type", "lesion_id", "patient_id", "sex")


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """An ISIC Archive export's layout for synthetic draws: ``metadata.csv`` with ``ISIC_nnnnnnn``
    ids, a diagnosis string of the drawn class, lesion ids ``IL_nnnnnnn`` (one lesion per group)
    and the images ``<isic_id>.jpg`` next to it."""
    binary = (options or {}).get("labels", "isic2019") == "binary"
    first_name: dict[str, str] = {}
    for name, code in DIAGNOSES.items():
        first_name.setdefault(code, name)
    malignant = set(ISIC2019_LABELS.group_codes("malignancy", "malignant"))
    out = Path(out)
    ids = [f"ISIC_{i:07d}" for i in range(len(draws))]
    lesions = common.group_numbers(common.draw_column(draws, "group_id"))
    rows = []
    for image_id, dx, lesion, age, site, sex in zip(ids, common.draw_column(draws, "dx"), lesions,
                                                    common.draw_column(draws, "age"), common.draw_column(draws, "site"),
                                                    common.draw_column(draws, "sex")):
        code = str(dx)
        if binary:
            diagnosis = "melanoma" if code == "malignant" else "nevus"
            benign_malignant = code
        else:
            diagnosis = first_name.get(code, code)
            benign_malignant = "malignant" if code in malignant else "benign"
        approx = common.age_approx(age)
        rows.append({"isic_id": image_id, "attribution": "derma synthetic data", "copyright_license": "CC-0",
                     "age_approx": "" if approx is None else str(approx), "anatom_site_general": site,
                     "benign_malignant": benign_malignant, "diagnosis": diagnosis, "image_type": "dermoscopic",
                     "lesion_id": f"IL_{lesion:07d}", "patient_id": f"IP_{lesion // 2:07d}", "sex": sex})
    common.write_table(out / METADATA, rows, EXPORT_COLUMNS)
    return [out / f"{image_id}.jpg" for image_id in ids]


LICENCE = "per image, as the export's copyright_license column says (mostly CC-0, CC-BY, CC-BY-NC)"
CITATION = "The ISIC Archive, https://www.isic-archive.com; cite each image's attribution (attribution column)"

DESCRIPTOR = DatasetDescriptor(
    name="isic_archive",
    title="ISIC Archive export",
    labels=label_set,
    grouping="lesion",
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://www.isic-archive.com",
    layout=LAYOUT,
    access=ACCESS,
    options=OPTIONS,
    reader=read,
    synth_writer=write_synthetic,
)
