"""Prompt builders: the original study's VQA questions, a generic question, and option-order permutations.

Every builder takes the dataset's :class:`~derma_core.labels.LabelSet` and returns the question
text that follows ``<image>\\n``.

* ``p0``, ``p1`` (and ``p1_perm0`` .. ``p1_perm5``): the study's design is "list the class
  codes", so they list the label set's codes; on HAM10000 they are the study's questions
  character for character.
* ``p2``, ``p4``: the study's fixed wording (p2's irregular double spaces, p4's "vsc" typo are
  part of the experiment); they exist for HAM10000 only and are refused on any other label set
  in one line.
* ``classes`` (:data:`GENERIC`): the dataset-generic question, each class by its display name
  with its code (the answer the scorers and LoRA targets use) in brackets.
"""

from __future__ import annotations

from . import hookimpl
from .data.datasets.ham10000 import LABEL_SET as HAM10000, require_ham10000
from .labels import LabelSet

#: The dataset-generic prompt's name.
GENERIC = "classes"

#: How many option-order permutations of p1 are registered (p1_perm0 .. p1_perm{N-1}).
N_PERMUTATIONS = 6

#: The study's p2 and p4, character for character: fixed strings, valid on HAM10000 only.
_FIXED: dict[str, str] = {
    "p2": ("Classify this skin lesion. Answer with only one label: Actinic keratoses and intraepithelial "
           "carcinoma (akiec),  Basal cell carcinoma (bcc),  Benign keratosis-like lesions (bkl),  "
           "Dermatofibroma (df), Melanoma (mel),  Melanocytic nevi (nv), Vascular lesions (vasc)."),
    "p4": "Is this skin lesion akiec, bcc, bkl, df, mel, nv or vsc?",
}


def _options(items: list[str] | tuple[str, ...]) -> str:
    """``a, b, or c`` (``a or b`` for two): p1's way of listing options."""
    *head, last = items
    if len(head) == 1:
        return f"{head[0]} or {last}"
    return f"{', '.join(head)}, or {last}"


def p0(label_set: LabelSet) -> str:
    """The study's first prompt, listing the label set's codes."""
    return ("You are a medical vision assistant. Answer with EXACTLY one label from: "
            f"{', '.join(label_set.codes)}. Do not output anything else. Just the single label. "
            "What is the lesion type?")


def p1_with_order(codes: tuple[str, ...] | list[str]) -> str:
    """p1's wording with the options in the given order."""
    return f"Classify this skin lesion. Answer with only one label: {_options(list(codes))}."


def p1(label_set: LabelSet) -> str:
    """The study's main prompt, listing the label set's codes in its order."""
    return p1_with_order(label_set.codes)


def generic(label_set: LabelSet) -> str:
    """The dataset-generic question: every class as ``Display name (code)`` (the code alone where
    the name is the code), in the label set's order."""
    items = [code if name.strip().lower() == code.strip().lower() else f"{name} ({code})"
             for code, name in zip(label_set.codes, label_set.names)]
    return f"Classify this skin lesion. Answer with only one label: {_options(items)}."


def permutation(k: int, codes: tuple[str, ...], seed: int = 0) -> tuple[str, ...]:
    """The k-th seeded shuffle of ``codes`` (k = 0 is a reversal, so it always differs from p1)."""
    import random

    if k == 0:
        return tuple(reversed(codes))
    order = list(codes)
    random.Random(seed * 1000 + k).shuffle(order)
    return tuple(order)


def _fixed_builder(name: str):
    def build(label_set: LabelSet) -> str:
        require_ham10000(label_set, f"prompt {name} (its wording is the study's own; p0, p1 and {GENERIC} "
                                    "work on any dataset)")
        return _FIXED[name]

    build.__name__ = f"prompt_{name}"
    return build


def _permutation_builder(k: int):
    def build(label_set: LabelSet) -> str:
        return p1_with_order(permutation(k, label_set.codes))

    build.__name__ = f"prompt_p1_perm{k}"
    return build


#: Every built-in builder by name.
BUILDERS = {"p0": p0, "p1": p1, "p2": _fixed_builder("p2"), "p4": _fixed_builder("p4"), GENERIC: generic,
            **{f"p1_perm{k}": _permutation_builder(k) for k in range(N_PERMUTATIONS)}}

#: The original study's questions (on HAM10000), character for character.
SEED_PROMPTS: dict[str, str] = {name: BUILDERS[name](HAM10000) for name in ("p0", "p1", "p2", "p4")}


@hookimpl
def register_prompt_builders(register):
    for name, builder in BUILDERS.items():
        register(name, builder)
