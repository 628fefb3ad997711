"""Prompt builders: the original study's exact VQA questions, and option-order permutations.

Every builder takes the label tuple and returns the question text that follows ``<image>\\n``.
"""

from __future__ import annotations

from . import hookimpl
from .labels import LABELS

#: The original study's prompts, character for character (p2's double spaces and p4's
#: "vsc" typo are part of the experiment).
SEED_PROMPTS: dict[str, str] = {
    "p0": ("You are a medical vision assistant. Answer with EXACTLY one label from: akiec, bcc, bkl, df, mel, "
           "nv, vasc. Do not output anything else. Just the single label. What is the lesion type?"),
    "p1": "Classify this skin lesion. Answer with only one label: akiec, bcc, bkl, df, mel, nv, or vasc.",
    "p2": ("Classify this skin lesion. Answer with only one label: Actinic keratoses and intraepithelial "
           "carcinoma (akiec),  Basal cell carcinoma (bcc),  Benign keratosis-like lesions (bkl),  "
           "Dermatofibroma (df), Melanoma (mel),  Melanocytic nevi (nv), Vascular lesions (vasc)."),
    "p4": "Is this skin lesion akiec, bcc, bkl, df, mel, nv or vsc?",
}

#: How many option-order permutations of p1 are registered (p1_perm0 .. p1_perm{N-1}).
N_PERMUTATIONS = 6


def p1_with_order(labels: tuple[str, ...]) -> str:
    """p1's wording with the options in the given order."""
    *head, last = labels
    return f"Classify this skin lesion. Answer with only one label: {', '.join(head)}, or {last}."


def permutation(k: int, seed: int = 0) -> tuple[str, ...]:
    """The k-th seeded shuffle of LABELS (k = 0 is a reversal, so it always differs from p1)."""
    import random

    if k == 0:
        return tuple(reversed(LABELS))
    order = list(LABELS)
    random.Random(seed * 1000 + k).shuffle(order)
    return tuple(order)


def _seed_builder(name: str):
    def build(labels: tuple[str, ...] = LABELS) -> str:
        return SEED_PROMPTS[name]

    build.__name__ = f"prompt_{name}"
    return build


@hookimpl
def register_prompt_builders(register):
    for name in SEED_PROMPTS:
        register(name, _seed_builder(name))
    for k in range(N_PERMUTATIONS):
        register(f"p1_perm{k}", lambda labels=LABELS, _k=k: p1_with_order(permutation(_k)))
