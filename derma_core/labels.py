"""A dataset's label set: its class codes in order, their display names, optional groupings
(e.g. malignant vs benign), synonyms for parsing free-text answers, and the focus class whose
sensitivity at fixed specificity is reported (melanoma on HAM10000).

Nothing in derma assumes a particular label set: every split, prediction, evaluator and backend
takes the :class:`LabelSet` of the run's dataset. A dataset's label set is defined by its
descriptor (:mod:`derma_core.data.descriptor`) and recorded in the prepared folder's manifest,
so a run reads exactly the label set its data was prepared with.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

#: The index of an invalid answer (free text naming no single class) in predicted label indices.
INVALID = -1


def _frozen_map(mapping: Mapping | None) -> dict:
    return dict(mapping or {})


@dataclass(frozen=True, eq=False)
class LabelSet:
    """An ordered set of class codes with everything derma needs to know about them.

    * ``codes``: the class codes in canonical order (metric names use them: ``f1_mel``);
    * ``names``: display names, one per code (questions, prompts, figures);
    * ``groupings``: name -> {code: group}; e.g. ``{"malignancy": {"mel": "malignant", ...}}``.
      Every code must be mapped. ``positive`` names each grouping's positive group (the one whose
      sensitivity and AUROC are reported, e.g. ``malignant``);
    * ``synonyms``: code -> other names a free-text answer may use (``nevus`` for ``nv``);
    * ``focus``: the class whose sensitivity at fixed specificity is reported (``mel``), or None.
    """

    codes: tuple[str, ...]
    names: tuple[str, ...] = ()
    groupings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    positive: Mapping[str, str] = field(default_factory=dict)
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    focus: str | None = None

    def __post_init__(self) -> None:
        codes = tuple(str(c) for c in self.codes)
        object.__setattr__(self, "codes", codes)
        if len(codes) < 2:
            raise ValueError(f"a label set needs at least two classes, got {list(codes)}")
        if len(set(codes)) != len(codes):
            dup = sorted({c for c in codes if codes.count(c) > 1})
            raise ValueError(f"label set: duplicate class codes {dup}")
        bad = [c for c in codes if not c or c != c.strip() or "," in c]
        if bad:
            raise ValueError(f"label set: class codes must be non-empty, without surrounding spaces or commas: {bad}")
        names = tuple(str(n) for n in self.names) if self.names else codes
        if len(names) != len(codes):
            raise ValueError(f"label set: {len(names)} names for {len(codes)} codes")
        object.__setattr__(self, "names", names)
        groupings = {str(g): {str(k): str(v) for k, v in m.items()} for g, m in _frozen_map(self.groupings).items()}
        for gname, mapping in groupings.items():
            missing = [c for c in codes if c not in mapping]
            extra = [c for c in mapping if c not in codes]
            if missing or extra:
                raise ValueError(f"label set: grouping {gname!r} must map every class exactly "
                                 f"(missing {missing}, unknown {extra})")
        object.__setattr__(self, "groupings", groupings)
        positive = {str(k): str(v) for k, v in _frozen_map(self.positive).items()}
        for gname, group in positive.items():
            if gname not in groupings or group not in set(groupings[gname].values()):
                raise ValueError(f"label set: positive group {group!r} of {gname!r} is not a group of that grouping")
        object.__setattr__(self, "positive", positive)
        synonyms = {str(k): tuple(str(s) for s in v) for k, v in _frozen_map(self.synonyms).items()}
        unknown = [k for k in synonyms if k not in codes]
        if unknown:
            raise ValueError(f"label set: synonyms for unknown classes {unknown}")
        object.__setattr__(self, "synonyms", synonyms)
        if self.focus is not None and self.focus not in codes:
            raise ValueError(f"label set: focus class {self.focus!r} is not one of {', '.join(codes)}")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(codes)})

    # ---- the sequence of codes
    def __len__(self) -> int:
        return len(self.codes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.codes)

    def __contains__(self, code: object) -> bool:
        return code in self._index  # type: ignore[attr-defined]

    def __getitem__(self, i: int) -> str:
        return self.codes[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"LabelSet({', '.join(self.codes)})"

    @property
    def size(self) -> int:
        return len(self.codes)

    def index(self, code: str) -> int:
        """Index of ``code``; a one-line error naming the valid codes for anything else."""
        try:
            return self._index[code]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(f"unknown label {code!r}: expected one of {', '.join(self.codes)}") from None

    def name(self, code: str) -> str:
        return self.names[self.index(code)]

    def encode(self, values: Sequence[Any], what: str = "label", allow_invalid: bool = True) -> np.ndarray:
        """Label codes to indices; ``None``/``""``/NaN becomes :data:`INVALID` when allowed.
        A one-line ``ValueError`` names the first unknown value and its row."""
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
                if not allow_invalid:
                    raise ValueError(f"row {i}: empty {what}; every row needs one of {', '.join(self.codes)}")
                out[i] = INVALID
                continue
            index = self._index.get(str(value))  # type: ignore[attr-defined]
            if index is None:
                raise ValueError(f"row {i}: unknown {what} {value!r}; expected one of {', '.join(self.codes)}"
                                 + (" (or empty for an invalid answer)" if allow_invalid else ""))
            out[i] = index
        return out

    def decode(self, indices: Iterable[int]) -> list[str | None]:
        return [None if int(i) == INVALID else self.codes[int(i)] for i in indices]

    # ---- answer parsing
    def aliases(self) -> dict[str, list[str]]:
        """code -> every lower-case name a free-text answer may use for it (code, display name,
        synonyms), in that order, without duplicates."""
        out: dict[str, list[str]] = {}
        for code, name in zip(self.codes, self.names):
            seen: list[str] = []
            for alias in (code, name, *self.synonyms.get(code, ())):
                a = alias.strip().lower()
                if a and a not in seen:
                    seen.append(a)
            out[code] = seen
        return out

    def lookup(self, text: str) -> str | None:
        """The code whose code, display name or synonym equals ``text`` (case and surrounding
        punctuation ignored), else None."""
        key = re.sub(r"^[\W_]+|[\W_]+$", "", str(text).strip().lower())
        for code, names in self.aliases().items():
            if key in names:
                return code
        return None

    # ---- groupings
    def grouping(self, name: str) -> tuple[tuple[str, ...], np.ndarray]:
        """(group names in first-appearance order, class index -> group index array)."""
        try:
            mapping = self.groupings[name]
        except KeyError:
            raise ValueError(f"label set has no grouping {name!r} (has {sorted(self.groupings) or 'none'})") from None
        groups: list[str] = []
        for code in self.codes:
            if mapping[code] not in groups:
                groups.append(mapping[code])
        return tuple(groups), np.array([groups.index(mapping[c]) for c in self.codes], dtype=np.int64)

    def group_codes(self, grouping: str, group: str) -> tuple[str, ...]:
        """The class codes in ``group`` of ``grouping``."""
        return tuple(c for c in self.codes if self.groupings[grouping][c] == group)

    # ---- identity and persistence
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"codes": list(self.codes), "names": list(self.names)}
        if self.groupings:
            d["groupings"] = {g: dict(m) for g, m in self.groupings.items()}
        if self.positive:
            d["positive"] = dict(self.positive)
        if self.synonyms:
            d["synonyms"] = {k: list(v) for k, v in self.synonyms.items()}
        if self.focus is not None:
            d["focus"] = self.focus
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LabelSet":
        if not isinstance(d, Mapping) or "codes" not in d:
            raise ValueError("a label set needs 'codes' (the class codes in order)")
        return cls(codes=tuple(d["codes"]), names=tuple(d.get("names") or ()),
                   groupings=d.get("groupings") or {}, positive=d.get("positive") or {},
                   synonyms={k: tuple(v) for k, v in (d.get("synonyms") or {}).items()}, focus=d.get("focus"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def same_classes(self, other: "LabelSet") -> bool:
        """Whether ``other`` has the same codes in the same order (names may differ)."""
        return self.codes == other.codes

    def require_same(self, other: "LabelSet", what: str, where: str) -> None:
        """One-line error when ``other``'s codes differ from this set's (a checkpoint or file
        trained on other classes than the run's dataset)."""
        if not self.same_classes(other):
            raise ValueError(f"{what} was made for the classes {', '.join(other.codes)} but the dataset has "
                             f"{', '.join(self.codes)}; {where}")


__all__ = ["INVALID", "LabelSet"]
