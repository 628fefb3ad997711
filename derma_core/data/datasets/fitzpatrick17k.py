"""Fitzpatrick17k (Groh et al. 2021): clinical images of 114 skin conditions from two online
atlases, labelled with Fitzpatrick skin types.

Raw layout: ``fitzpatrick17k.csv`` (``md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,
nine_partition_label,three_partition_label,qc,url,url_alphanum``) and the images named by
``md5hash`` (``images/<md5hash>.jpg``, found by file stem anywhere in the folder). The prep option
``label`` (3, 9 or 114) chooses the class: ``three_partition_label`` (non-neoplastic, benign,
malignant; the default), ``nine_partition_label`` or ``label``. ``fitzpatrick_scale`` is -1 where
unknown. No patient ids are published: every image is its own group. The images are fetched from
each row's ``url`` (:func:`derma_core.data.download.download_fitzpatrick17k`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ...labels import LabelSet
from ..descriptor import DatasetDescriptor, DatasetOption, SubgroupColumn
from ..download import download_fitzpatrick17k
from . import common

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

METADATA = "fitzpatrick17k.csv"
COLUMNS = ("md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
           "three_partition_label", "qc", "url", "url_alphanum")
#: The label column each level reads.
LEVEL_COLUMNS = {"3": "three_partition_label", "9": "nine_partition_label", "114": "label"}

#: Every condition of the official CSV: (label, nine_partition_label, three_partition_label, images).
CONDITIONS = (
    ('acanthosis nigricans', 'inflammatory', 'non-neoplastic', 92),
    ('acne', 'inflammatory', 'non-neoplastic', 183),
    ('acne vulgaris', 'inflammatory', 'non-neoplastic', 335),
    ('acquired autoimmune bullous diseaseherpes gestationis', 'inflammatory', 'non-neoplastic', 67),
    ('acrodermatitis enteropathica', 'genodermatoses', 'non-neoplastic', 92),
    ('actinic keratosis', 'malignant epidermal', 'malignant', 175),
    ('allergic contact dermatitis', 'inflammatory', 'non-neoplastic', 430),
    ('aplasia cutis', 'inflammatory', 'non-neoplastic', 72),
    ('basal cell carcinoma', 'malignant epidermal', 'malignant', 468),
    ('basal cell carcinoma morpheiform', 'malignant epidermal', 'malignant', 62),
    ('becker nevus', 'benign dermal', 'benign', 63),
    ('behcets disease', 'inflammatory', 'non-neoplastic', 63),
    ('calcinosis cutis', 'inflammatory', 'non-neoplastic', 80),
    ('cheilitis', 'inflammatory', 'non-neoplastic', 106),
    ('congenital nevus', 'benign melanocyte', 'benign', 68),
    ('dariers disease', 'genodermatoses', 'non-neoplastic', 153),
    ('dermatofibroma', 'benign dermal', 'benign', 79),
    ('dermatomyositis', 'inflammatory', 'non-neoplastic', 151),
    ('disseminated actinic porokeratosis', 'benign epidermal', 'benign', 60),
    ('drug eruption', 'inflammatory', 'non-neoplastic', 200),
    ('drug induced pigmentary changes', 'inflammatory', 'non-neoplastic', 71),
    ('dyshidrotic eczema', 'inflammatory', 'non-neoplastic', 83),
    ('eczema', 'inflammatory', 'non-neoplastic', 204),
    ('ehlers danlos syndrome', 'genodermatoses', 'non-neoplastic', 127),
    ('epidermal nevus', 'benign epidermal', 'benign', 91),
    ('epidermolysis bullosa', 'genodermatoses', 'non-neoplastic', 70),
    ('erythema annulare centrifigum', 'inflammatory', 'non-neoplastic', 88),
    ('erythema elevatum diutinum', 'inflammatory', 'non-neoplastic', 55),
    ('erythema multiforme', 'inflammatory', 'non-neoplastic', 236),
    ('erythema nodosum', 'inflammatory', 'non-neoplastic', 81),
    ('factitial dermatitis', 'inflammatory', 'non-neoplastic', 66),
    ('fixed eruptions', 'inflammatory', 'non-neoplastic', 125),
    ('folliculitis', 'inflammatory', 'non-neoplastic', 342),
    ('fordyce spots', 'benign dermal', 'benign', 100),
    ('granuloma annulare', 'inflammatory', 'non-neoplastic', 211),
    ('granuloma pyogenic', 'benign dermal', 'benign', 75),
    ('hailey hailey disease', 'genodermatoses', 'non-neoplastic', 174),
    ('halo nevus', 'benign melanocyte', 'benign', 82),
    ('hidradenitis', 'inflammatory', 'non-neoplastic', 90),
    ('ichthyosis vulgaris', 'genodermatoses', 'non-neoplastic', 65),
    ('incontinentia pigmenti', 'genodermatoses', 'non-neoplastic', 102),
    ('juvenile xanthogranuloma', 'inflammatory', 'non-neoplastic', 149),
    ('kaposi sarcoma', 'malignant dermal', 'malignant', 156),
    ('keloid', 'inflammatory', 'non-neoplastic', 156),
    ('keratosis pilaris', 'inflammatory', 'non-neoplastic', 78),
    ('langerhans cell histiocytosis', 'inflammatory', 'non-neoplastic', 60),
    ('lentigo maligna', 'malignant melanoma', 'malignant', 83),
    ('lichen amyloidosis', 'inflammatory', 'non-neoplastic', 77),
    ('lichen planus', 'inflammatory', 'non-neoplastic', 491),
    ('lichen simplex', 'inflammatory', 'non-neoplastic', 97),
    ('livedo reticularis', 'inflammatory', 'non-neoplastic', 60),
    ('lupus erythematosus', 'inflammatory', 'non-neoplastic', 410),
    ('lupus subacute', 'inflammatory', 'non-neoplastic', 111),
    ('lyme disease', 'inflammatory', 'non-neoplastic', 129),
    ('lymphangioma', 'benign dermal', 'benign', 100),
    ('malignant melanoma', 'malignant melanoma', 'malignant', 111),
    ('melanoma', 'malignant melanoma', 'malignant', 261),
    ('milia', 'benign epidermal', 'benign', 112),
    ('mucinosis', 'inflammatory', 'non-neoplastic', 92),
    ('mucous cyst', 'benign dermal', 'benign', 79),
    ('mycosis fungoides', 'malignant cutaneous lymphoma', 'malignant', 182),
    ('myiasis', 'inflammatory', 'non-neoplastic', 67),
    ('naevus comedonicus', 'benign epidermal', 'benign', 73),
    ('necrobiosis lipoidica', 'inflammatory', 'non-neoplastic', 123),
    ('nematode infection', 'inflammatory', 'non-neoplastic', 260),
    ('neurodermatitis', 'inflammatory', 'non-neoplastic', 69),
    ('neurofibromatosis', 'genodermatoses', 'non-neoplastic', 189),
    ('neurotic excoriations', 'inflammatory', 'non-neoplastic', 73),
    ('neutrophilic dermatoses', 'inflammatory', 'non-neoplastic', 361),
    ('nevocytic nevus', 'benign melanocyte', 'benign', 86),
    ('nevus sebaceous of jadassohn', 'benign epidermal', 'benign', 95),
    ('papilomatosis confluentes and reticulate', 'inflammatory', 'non-neoplastic', 150),
    ('paronychia', 'inflammatory', 'non-neoplastic', 59),
    ('pediculosis lids', 'inflammatory', 'non-neoplastic', 151),
    ('perioral dermatitis', 'inflammatory', 'non-neoplastic', 61),
    ('photodermatoses', 'inflammatory', 'non-neoplastic', 348),
    ('pilar cyst', 'benign dermal', 'benign', 93),
    ('pilomatricoma', 'benign dermal', 'benign', 53),
    ('pityriasis lichenoides chronica', 'inflammatory', 'non-neoplastic', 73),
    ('pityriasis rosea', 'inflammatory', 'non-neoplastic', 193),
    ('pityriasis rubra pilaris', 'inflammatory', 'non-neoplastic', 278),
    ('porokeratosis actinic', 'benign epidermal', 'benign', 183),
    ('porokeratosis of mibelli', 'benign epidermal', 'benign', 78),
    ('porphyria', 'inflammatory', 'non-neoplastic', 127),
    ('port wine stain', 'benign dermal', 'benign', 59),
    ('prurigo nodularis', 'benign epidermal', 'benign', 170),
    ('psoriasis', 'inflammatory', 'non-neoplastic', 653),
    ('pustular psoriasis', 'inflammatory', 'non-neoplastic', 53),
    ('pyogenic granuloma', 'benign dermal', 'benign', 113),
    ('rhinophyma', 'inflammatory', 'non-neoplastic', 91),
    ('rosacea', 'inflammatory', 'non-neoplastic', 102),
    ('sarcoidosis', 'inflammatory', 'non-neoplastic', 349),
    ('scabies', 'inflammatory', 'non-neoplastic', 339),
    ('scleroderma', 'inflammatory', 'non-neoplastic', 309),
    ('scleromyxedema', 'inflammatory', 'non-neoplastic', 108),
    ('seborrheic dermatitis', 'inflammatory', 'non-neoplastic', 126),
    ('seborrheic keratosis', 'benign epidermal', 'benign', 69),
    ('solid cystic basal cell carcinoma', 'malignant epidermal', 'malignant', 66),
    ('squamous cell carcinoma', 'malignant epidermal', 'malignant', 581),
    ('stasis edema', 'inflammatory', 'non-neoplastic', 69),
    ('stevens johnson syndrome', 'inflammatory', 'non-neoplastic', 113),
    ('striae', 'inflammatory', 'non-neoplastic', 67),
    ('sun damaged skin', 'inflammatory', 'non-neoplastic', 66),
    ('superficial spreading melanoma ssm', 'malignant melanoma', 'malignant', 118),
    ('syringoma', 'benign dermal', 'benign', 127),
    ('telangiectases', 'benign dermal', 'benign', 126),
    ('tick bite', 'inflammatory', 'non-neoplastic', 73),
    ('tuberous sclerosis', 'genodermatoses', 'non-neoplastic', 141),
    ('tungiasis', 'inflammatory', 'non-neoplastic', 152),
    ('urticaria', 'inflammatory', 'non-neoplastic', 151),
    ('urticaria pigmentosa', 'inflammatory', 'non-neoplastic', 112),
    ('vitiligo', 'inflammatory', 'non-neoplastic', 166),
    ('xanthomas', 'inflammatory', 'non-neoplastic', 53),
    ('xeroderma pigmentosum', 'genodermatoses', 'non-neoplastic', 81),
)

#: The three- and nine-way partitions in the order derma lists them.
THREE = ("non-neoplastic", "benign", "malignant")
NINE = ("inflammatory", "genodermatoses", "benign dermal", "benign epidermal", "benign melanocyte",
        "malignant epidermal", "malignant melanoma", "malignant cutaneous lymphoma", "malignant dermal")
#: The focus class per level: melanoma where it is one class (at 114 it is split over several
#: labels - melanoma, malignant melanoma, superficial spreading melanoma, lentigo maligna - so
#: the malignancy grouping's sensitivity is the one to read there).
FOCUS = {"3": "malignant", "9": "malignant_melanoma", "114": None}

OPTIONS = (DatasetOption("label", default="3", choices=("3", "9", "114"),
                         help="3: non-neoplastic/benign/malignant; 9: the nine-way partition; 114: the conditions"),)


def _malignancy(three: str) -> str:
    return "malignant" if three == "malignant" else "not malignant"


def _level(options: Mapping[str, str] | None) -> str:
    level = str((options or {}).get("label", "3"))
    if level not in LEVEL_COLUMNS:
        raise ValueError(f"dataset fitzpatrick17k: option label={level!r}: use one of {', '.join(LEVEL_COLUMNS)}")
    return level


def label_set(options: Mapping[str, str] | None = None) -> LabelSet:
    """The label set of the chosen level (class codes are the slugged label strings)."""
    level = _level(options)
    nine_to_three = {nine: three for _, nine, three, _ in CONDITIONS}
    if level == "3":
        names = THREE
        groupings = {"malignancy": {common.slug(t): _malignancy(t) for t in THREE}}
    elif level == "9":
        names = NINE
        groupings = {"malignancy": {common.slug(n): _malignancy(nine_to_three[n]) for n in NINE},
                     "three_partition": {common.slug(n): nine_to_three[n] for n in NINE}}
    else:
        names = tuple(label for label, _, _, _ in CONDITIONS)
        groupings = {"malignancy": {common.slug(lab): _malignancy(three) for lab, _, three, _ in CONDITIONS},
                     "three_partition": {common.slug(lab): three for lab, _, three, _ in CONDITIONS},
                     "nine_partition": {common.slug(lab): nine for lab, nine, _, _ in CONDITIONS}}
    codes = tuple(common.slug(n) for n in names)
    return LabelSet(codes=codes, names=tuple(n[:1].upper() + n[1:] for n in names), groupings=groupings,
                    positive={"malignancy": "malignant"}, focus=FOCUS[level])


def class_counts(options: Mapping[str, str] | None = None) -> dict[str, int]:
    """Images per class of the chosen level in the official CSV (summed over its conditions)."""
    level = _level(options)
    index = {"3": 2, "9": 1, "114": 0}[level]
    counts: dict[str, int] = {}
    for row in CONDITIONS:
        key = common.slug(row[index])
        counts[key] = counts.get(key, 0) + row[3]
    return {code: counts[code] for code in label_set(options).codes}


FITZPATRICK_TYPES = ("1", "2", "3", "4", "5", "6")
SUBGROUPS = (SubgroupColumn("fitzpatrick_scale", kind="ordinal", order=FITZPATRICK_TYPES, unknown=("-1",),
                            title="Fitzpatrick skin type"),)

LAYOUT = f"{METADATA} ({','.join(COLUMNS)}) and the images named <md5hash>.jpg (e.g. in images/)"


def read(root: Path, options: Mapping[str, str] | None = None):
    """The Fitzpatrick17k raw folder as RawData, classes at the ``label`` option's level."""
    level = _level(options)
    codes = set(label_set(options).codes)
    path = common.find_file(root, (METADATA,), "Fitzpatrick17k", LAYOUT)
    column = LEVEL_COLUMNS[level]
    meta = common.read_table(path, "Fitzpatrick17k", ("md5hash", column))
    for col in ("fitzpatrick_scale", "fitzpatrick_centaur"):
        if col in meta.columns:
            meta[col] = common.map_values(meta[col], common.normalise_number)
    frame = meta.copy()
    frame.insert(0, "image_id", meta["md5hash"])
    # a label of another release stays as written, so the verification names it
    frame.insert(1, "dx", common.map_values(meta[column], lambda v: common.slug(v) if v.strip() and
                                            common.slug(v) in codes else v))
    frame.insert(2, "group_id", "")
    images, problems = common.find_images(root)
    return common.raw_data(root, path, frame, images, problems)


def write_synthetic(out: Path, draws: "pd.DataFrame", options: Mapping[str, str] | None = None) -> list[Path]:
    """Fitzpatrick17k's raw layout for synthetic draws: ``fitzpatrick17k.csv`` with consistent
    labels at all three levels (a condition of the drawn class), md5-like ids, and the images in
    ``images/<md5hash>.jpg``; the urls point nowhere (``.invalid``)."""
    import hashlib

    level = _level(options)
    index = {"3": 2, "9": 1, "114": 0}[level]
    by_code: dict[str, list] = {}
    for row in CONDITIONS:
        by_code.setdefault(common.slug(row[index]), []).append(row)
    out = Path(out)
    rows, paths = [], []
    for i, (dx, fitz) in enumerate(zip(common.draw_column(draws, "dx"), common.draw_column(draws, "skin_type", None))):
        choices = by_code.get(str(dx))
        label, nine, three = (choices[i % len(choices)][:3]) if choices else (str(dx),) * 3
        md5 = hashlib.md5(f"derma-synthetic-fitzpatrick17k-{i}".encode()).hexdigest()
        fitzpatrick = "-1" if i % 29 == 28 else str(common.skin_type(fitz))
        url = f"https://synthetic.invalid/{md5}.jpg"
        rows.append({"md5hash": md5, "fitzpatrick_scale": fitzpatrick, "fitzpatrick_centaur": fitzpatrick,
                     "label": label, "nine_partition_label": nine, "three_partition_label": three, "qc": "",
                     "url": url, "url_alphanum": "".join(ch for ch in url if ch.isalnum()) + ".jpg"})
        paths.append(out / "images" / f"{md5}.jpg")
    common.write_table(out / METADATA, rows, COLUMNS)
    return paths


LICENCE = "CC BY-NC-SA 3.0 (non-commercial, share-alike, attribution required)"
CITATION = ("Groh M. et al., Evaluating deep neural networks trained on clinical images in dermatology with the "
            "Fitzpatrick 17k dataset, CVPR Workshops 2021, pp. 1820-1828")

DESCRIPTOR = DatasetDescriptor(
    name="fitzpatrick17k",
    title="Fitzpatrick17k",
    labels=label_set,
    grouping=None,
    modality="clinical",
    subgroups=SUBGROUPS,
    split_policy="grouped",
    licence=LICENCE,
    citation=CITATION,
    url="https://github.com/mattgroh/fitzpatrick17k",
    layout=LAYOUT,
    access="`derma download fitzpatrick17k --out DIR` fetches the CSV and each image from its source url "
           "(some are gone: they are listed in download_failures.csv); the authors share an image archive on request "
           "(form linked at https://github.com/mattgroh/fitzpatrick17k)",
    options=OPTIONS,
    class_counts=class_counts,
    reader=read,
    downloader=download_fitzpatrick17k,
    synth_writer=write_synthetic,
)
