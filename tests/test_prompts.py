"""Prompt builders take the dataset's label set: the study's p0, p1, p2, p4 are its exact strings
on HAM10000; p0, p1 and the permutations list any label set's codes; p2 and p4 (the study's own
wording) are refused on any other label set in one line; ``classes`` is the generic question."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import derma_core
from derma_core import plugins
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_core.prompts import GENERIC, SEED_PROMPTS, generic, permutation

#: The study's questions, character for character (../shared/docs/SEED_FACTS.md).
STUDY = {
    "p0": "You are a medical vision assistant. Answer with EXACTLY one label from: akiec, bcc, bkl, df, mel, nv, vasc. "
          "Do not output anything else. Just the single label. What is the lesion type?",
    "p1": "Classify this skin lesion. Answer with only one label: akiec, bcc, bkl, df, mel, nv, or vasc.",
    "p2": "Classify this skin lesion. Answer with only one label: Actinic keratoses and intraepithelial carcinoma "
          "(akiec),  Basal cell carcinoma (bcc),  Benign keratosis-like lesions (bkl),  Dermatofibroma (df), "
          "Melanoma (mel),  Melanocytic nevi (nv), Vascular lesions (vasc).",
    "p4": "Is this skin lesion akiec, bcc, bkl, df, mel, nv or vsc?",
}
SEED_FACTS = Path(derma_core.__file__).resolve().parents[2] / "shared" / "docs" / "SEED_FACTS.md"

THREE = LabelSet(codes=("scc", "sk", "nev"), names=("Squamous cell carcinoma", "Seborrheic keratosis", "nev"))
TWO = LabelSet(codes=("benign", "malignant"))
MANY = LabelSet(codes=tuple(f"d{i}" for i in range(114)), names=tuple(f"Disease {i}" for i in range(114)))


def build(name: str, label_set: LabelSet) -> str:
    return plugins.get_prompt_builder(name)(label_set)


@pytest.mark.parametrize("name", ["p0", "p1", "p2", "p4"])
def test_study_prompts_are_exact_on_ham10000(name):
    assert build(name, HAM) == STUDY[name] == SEED_PROMPTS[name]


def test_study_prompts_match_seed_facts():
    if not SEED_FACTS.exists():
        pytest.skip(f"{SEED_FACTS} not found (the shared docs sit next to the repository)")
    found = dict(re.findall(r"^- `(p\d)`[^:\n]*: `(.+)`$", SEED_FACTS.read_text(encoding="utf-8"), re.MULTILINE))
    assert found == STUDY


def test_p0_p1_and_permutations_list_any_label_sets_codes():
    assert build("p1", THREE) == "Classify this skin lesion. Answer with only one label: scc, sk, or nev."
    assert build("p1", TWO) == "Classify this skin lesion. Answer with only one label: benign or malignant."
    assert "from: scc, sk, nev. Do not output" in build("p0", THREE)
    many = build("p1", MANY)
    assert many.index("d0,") < many.index("d57,") < many.index("or d113.")
    assert build("p1_perm0", THREE) == "Classify this skin lesion. Answer with only one label: nev, sk, or scc."
    for label_set in (HAM, THREE, MANY):
        perms = [build(f"p1_perm{k}", label_set) for k in range(6)]
        assert perms[0] != build("p1", label_set)  # perm0 reverses the order
        for k, text in enumerate(perms):
            order = permutation(k, label_set.codes)
            assert sorted(order) == sorted(label_set.codes) and all(code in text for code in order)
    assert len({build(f"p1_perm{k}", HAM) for k in range(6)} | {STUDY["p1"]}) == 7  # as before label sets


@pytest.mark.parametrize("name", ["p2", "p4"])
@pytest.mark.parametrize("label_set", [THREE, TWO, MANY], ids=["3", "2", "114"])
def test_study_wordings_are_refused_on_other_label_sets_in_one_line(name, label_set):
    with pytest.raises(ValueError) as err:
        build(name, label_set)
    message = str(err.value)
    assert "\n" not in message and f"prompt {name}" in message and "HAM10000" in message
    assert ", ".join(HAM.codes) in message and label_set.codes[-1] in message


def test_generic_prompt_names_every_class_with_its_code():
    assert build(GENERIC, THREE) == ("Classify this skin lesion. Answer with only one label: Squamous cell carcinoma "
                                     "(scc), Seborrheic keratosis (sk), or nev.")  # a name equal to its code once
    assert build(GENERIC, TWO) == "Classify this skin lesion. Answer with only one label: benign or malignant."
    ham = generic(HAM)
    assert ham.startswith("Classify this skin lesion. Answer with only one label: Actinic keratoses and "
                          "intraepithelial carcinoma (akiec), Basal cell carcinoma (bcc), ")
    assert ham.endswith(", or Vascular lesions (vasc).") and "  " not in ham
    many = build(GENERIC, MANY)
    assert all(f"Disease {i} (d{i})" in many for i in range(114))
