"""The two answer parsers: a VLM's free-text answer -> a class code of a label set, or ``None`` (invalid).

``seed``
    exactly the original study's ``parse_to_label`` (see SEED_FACTS): first whole-token class
    code in label order, else the first alias phrase found as a substring, else the first class
    code found as a raw substring ("melanocytic lesion" -> mel), else invalid. A reply listing
    several labels silently becomes the first in label order. Its alias table is the study's, so
    it runs on HAM10000's label set only (any other is refused in one line).
``strict``
    whole-word names of the label set's classes only (:meth:`LabelSet.aliases`: the code, the
    display name and the synonyms, each also with a plural ``s``/``es``; the longest name wins
    where names overlap, so "actinic keratosis" is not also "keratosis"); a reply naming two or
    more different classes, or none, is invalid. Each failure kind is counted (``empty``,
    ``no_label``, ``multiple_labels``) so a run reports why answers were rejected. Works on any
    label set.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..data.datasets.ham10000 import require_ham10000
from ..labels import LabelSet

PARSERS = ("seed", "strict")

# -- the seed parser, verbatim in behaviour -----------------------------------------------------
#: Alias phrases of the original parser, in its order (first substring hit wins); HAM10000 only.
SEED_ALIASES: tuple[tuple[str, str], ...] = (
    ("actinic keratosis", "akiec"), ("actinic keratoses", "akiec"), ("intraepithelial carcinoma", "akiec"),
    ("bowen", "akiec"),
    ("basal cell carcinoma", "bcc"),
    ("benign keratosis", "bkl"), ("seborrheic keratosis", "bkl"), ("solar lentigo", "bkl"),
    ("dermatofibroma", "df"),
    ("melanoma", "mel"),
    ("melanocytic nevus", "nv"), ("melanocytic nevi", "nv"), ("nevus", "nv"), ("nevi", "nv"),
    ("vascular lesion", "vasc"), ("hemangioma", "vasc"),
)

_NON_ALNUM = re.compile(r"[^a-z0-9\s]")
_SPACES = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    """Lowercase; every char outside [a-z0-9 whitespace] becomes a space; whitespace collapsed."""
    text = _NON_ALNUM.sub(" ", (text or "").lower())
    return _SPACES.sub(" ", text).strip()


def require_seed_parser(label_set: LabelSet) -> None:
    """One line when the seed parser (the study's, HAM10000's alias table) meets another label set."""
    require_ham10000(label_set, "parser seed (the study's parse_to_label; parser strict works on any dataset)")


def parse_to_label(text: str | None, label_set: LabelSet) -> str | None:
    """The original study's parser (``parse_to_label``): a label, or None when invalid.
    ``label_set`` must be HAM10000's (:func:`require_seed_parser`)."""
    require_seed_parser(label_set)
    return _seed_parse(text, label_set.codes)


def _seed_parse(text: str | None, codes: tuple[str, ...]) -> str | None:
    norm = normalize(text)
    tokens = set(norm.split())
    for label in codes:  # 1. first class code, in label order, present as a whole token
        if label in tokens:
            return label
    for phrase, label in SEED_ALIASES:  # 2. first alias phrase as a substring
        if phrase in norm:
            return label
    for label in codes:  # 3. first class code as a raw substring
        if label in norm:
            return label
    return None


# -- the strict parser ---------------------------------------------------------------------------
FAILURE_KINDS = ("empty", "no_label", "multiple_labels")


@functools.lru_cache(maxsize=32)
def _strict_matcher(label_set: LabelSet) -> tuple[re.Pattern, dict[str, tuple[str, ...]]]:
    """One whole-word regex over every normalised alias of every class (longest first, so a
    longer name wins where names overlap) and alias -> the class codes it names."""
    owners: dict[str, list[str]] = {}
    for code, aliases in label_set.aliases().items():
        for alias in aliases:
            norm = normalize(alias)
            if norm and code not in owners.setdefault(norm, []):
                owners[norm].append(code)
    phrases = sorted(owners, key=lambda p: (-len(p), p))
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")(?:e?s)?\b")
    return pattern, {p: tuple(c) for p, c in owners.items()}


def strict_parse(text: str | None, label_set: LabelSet) -> tuple[str | None, str | None]:
    """``(code, None)`` when the answer names exactly one class of ``label_set``;
    ``(None, failure_kind)`` otherwise."""
    norm = normalize(text)
    if not norm:
        return None, "empty"
    pattern, owners = _strict_matcher(label_set)
    found = {code for match in pattern.finditer(norm) for code in owners[match.group(1)]}
    if not found:
        return None, "no_label"
    if len(found) > 1:
        return None, "multiple_labels"
    return found.pop(), None


@dataclass
class ParseReport:
    """Labels parsed from answers, with counts of why answers were invalid."""

    labels: list[str | None]
    parser: str
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def n_invalid(self) -> int:
        return sum(1 for label in self.labels if label is None)

    def as_info(self) -> dict[str, Any]:
        return {"parser": self.parser, "n_invalid": self.n_invalid,
                "failures": {k: int(self.failures.get(k, 0)) for k in FAILURE_KINDS}}


def check_parser(parser: str, label_set: LabelSet) -> None:
    """One line for an unknown parser, or the seed parser on a label set other than HAM10000's."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    if parser == "seed":
        require_seed_parser(label_set)


def parse_answers(texts: Iterable[str | None], parser: str = "seed", *, label_set: LabelSet) -> ParseReport:
    """Parse every answer with ``parser`` (``seed`` or ``strict``) into codes of ``label_set``;
    failure kinds are counted for both (for ``seed``, ``multiple_labels`` counts replies it
    resolved silently although the strict reading names several classes)."""
    check_parser(parser, label_set)
    labels: list[str | None] = []
    failures: Counter = Counter()
    for text in texts:
        strict_label, kind = strict_parse(text, label_set)
        if parser == "strict":
            labels.append(strict_label)
            if kind:
                failures[kind] += 1
        else:
            label = _seed_parse(text, label_set.codes)
            labels.append(label)
            if label is None:
                failures["empty" if not normalize(text) else "no_label"] += 1
            elif kind == "multiple_labels":
                failures["multiple_labels"] += 1
    return ParseReport(labels, parser, dict(failures))
