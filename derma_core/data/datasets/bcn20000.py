"""BCN20000 (Hernández-Pérez et al., Sci. Data 2024): dermoscopic images from Hospital Clínic
Barcelona in eight diagnostic categories — ISIC 2019's eight classes, whose training set holds
BCN20000's 12,413 training images (lesion ids ``BCN_...``).

Raw layout: an ISIC Archive export of the BCN20000 collection (``metadata.csv`` with ``isic_id``,
``diagnosis``, ``lesion_id``, ...; images ``<isic_id>.jpg``), read as
:mod:`~derma_core.data.datasets.isic_archive` reads any export, with ISIC 2019's label set.
Diagnoses outside the eight (the test set's out-of-distribution lesions) are refused naming the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ..descriptor import DatasetDescriptor
from .isic2019 import LABEL_SET
from .isic_archive import SUBGROUPS, read_export, write_synthetic

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: BCN20000's training images per class, as released in ISIC 2019 (its rows with BCN_ lesion ids).
CLASS_COUNTS = {"mel": 2857, "nv": 4206, "bcc": 2809, "ak": 737, "bkl": 1138, "df": 124, "vasc": 111, "scc": 431}

LAYOUT = ("metadata.csv of an ISIC Archive export of the BCN20000 collection (isic_id, diagnosis, lesion_id, ...) and "
          "the images <isic_id>.jpg")
ACCESS = ("export the BCN20000 collection from https://www.isic-archive.com (gallery download, or isic-cli's "
          "`isic image download`) into one folder, then `derma prep --dataset bcn20000 --raw FOLDER --out PREPARED`")


def read(root: Path, options: Mapping[str, str] | None = None):
    return read_export(root, {"labels": "isic2019"}, "BCN20000", LAYOUT)


def write(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """An ISIC Archive export's layout (:func:`isic_archive.write_synthetic`) with ISIC 2019's classes."""
    return write_synthetic(out, draws, {"labels": "isic2019"})


DESCRIPTOR = DatasetDescriptor(
    name="bcn20000",
    title="BCN20000",
    labels=LABEL_SET,
    grouping="lesion",
    modality="dermoscopic",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence="as the export's copyright_license column says (CC BY-NC for BCN20000 in the ISIC Archive)",
    citation=("Hernández-Pérez C. et al., BCN20000: dermoscopic lesions in the wild, Sci. Data 11, 641 (2024). "
              "doi:10.1038/s41597-024-03387-w"),
    url="https://doi.org/10.1038/s41597-024-03387-w",
    layout=LAYOUT,
    access=ACCESS,
    class_counts=CLASS_COUNTS,
    reader=read,
    synth_writer=write,
)
