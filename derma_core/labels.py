"""The seven HAM10000 diagnosis labels, in the canonical order used everywhere in derma."""

LABELS: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

#: Clinical names, as in the HAM10000 paper and the original study.
CLINICAL_NAMES: dict[str, str] = {
    "akiec": "Actinic keratoses and intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}

LABEL_TO_INDEX: dict[str, int] = {label: i for i, label in enumerate(LABELS)}
NUM_CLASSES = len(LABELS)


def label_index(label: str) -> int:
    """Index of ``label`` in :data:`LABELS`; a clear error for anything else."""
    try:
        return LABEL_TO_INDEX[label]
    except KeyError:
        raise ValueError(f"unknown label {label!r}: expected one of {', '.join(LABELS)}") from None
