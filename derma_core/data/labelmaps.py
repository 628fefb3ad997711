"""Label maps: how the classes of one label set correspond to those of another.

A classifier fitted on dataset A predicts A's classes; evaluated on dataset B, its predictions
must be read in B's classes. A :class:`LabelMap` says how: a many-to-one map from A's classes to
the classes evaluated (B's classes that have a counterpart, or the groups of a grouping both
share, e.g. malignant vs benign), the probabilities of A's classes mapped to one evaluated class
summed. Nothing is mapped silently: B's classes without a counterpart are excluded (and the
images counted), A's classes without one are reported and their probability left out.

Maps are declared in YAML (format: ``configs/labelmaps/README.md``). The built-in ones, for the
public label sets (HAM10000, ISIC 2019 / BCN20000 / ISIC Archive, PAD-UFES-20, Derm7pt, DDI's
malignant/benign, Fitzpatrick17k's three-way partition), live in ``configs/labelmaps/`` (they
travel in the wheel with the rest of ``configs/``); a user's own are given as files
(``--label-map FILE``, ``evaluation.label_maps``) and tried first. :func:`resolve_label_map`
picks the map for a pair of label sets; with none declared, identical classes are evaluated as
they are and label sets sharing a grouping are evaluated on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..labels import LabelSet

#: The folder of the built-in maps, under :func:`derma_core.config.configs_dir`.
LABELMAP_FOLDER = "labelmaps"
#: The keys a map may have.
MAP_KEYS = ("source", "target", "source_options", "target_options", "classes", "grouping", "target_grouping",
            "note", "name")


class LabelMapError(ValueError):
    """A label map that cannot be used: the one-line message names the file, the map and the fix."""


def _code(text: str) -> str:
    """A group name as a class code: ``"not malignant"`` -> ``not_malignant``."""
    out = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return out or str(text)


@dataclass(frozen=True)
class LabelMapSpec:
    """One map as declared in a YAML file (not yet checked against the label sets it is used on)."""

    source: str
    target: str
    classes: Mapping[str, str | None] | None = None
    grouping: str | None = None
    target_grouping: str | None = None
    source_options: Mapping[str, str] = field(default_factory=dict)
    target_options: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    origin: str = ""

    @property
    def title(self) -> str:
        def side(name: str, options: Mapping[str, str]) -> str:
            return name + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")

        return f"{side(self.source, self.source_options)} -> {side(self.target, self.target_options)}"

    def where(self) -> str:
        return f"label map {self.title}" + (f" in {self.origin}" if self.origin else "")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "target": self.target}
        for key in ("source_options", "target_options"):
            if getattr(self, key):
                d[key] = dict(getattr(self, key))
        if self.classes is not None:
            d["classes"] = dict(self.classes)
        for key in ("grouping", "target_grouping", "note", "origin"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d


def _options(value: Any, what: str, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LabelMapError(f"{where}: {what} must be a mapping such as {{label: \"3\"}}, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def parse_specs(data: Any, origin: str) -> list[LabelMapSpec]:
    """The maps of one YAML document: ``{source, maps: [...]}`` (every map inherits the file's
    ``source``, ``source_options``) or a single map at the top level."""
    if not isinstance(data, Mapping):
        raise LabelMapError(f"{origin}: a label map file must be a mapping (source, target, classes)")
    entries = data.get("maps")
    if entries is None:
        entries, defaults = [data], {}
    else:
        if not isinstance(entries, list) or not entries:
            raise LabelMapError(f"{origin}: 'maps' must be a non-empty list of maps")
        defaults = {k: v for k, v in data.items() if k != "maps"}
        unknown = [k for k in defaults if k not in ("source", "source_options", "note")]
        if unknown:
            raise LabelMapError(f"{origin}: unknown key {unknown[0]!r} beside 'maps' (allowed: source, source_options, "
                                "note)")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{origin} map {i + 1}" if len(entries) > 1 else origin
        if not isinstance(entry, Mapping):
            raise LabelMapError(f"{where}: each map must be a mapping (target, classes or grouping)")
        merged = {**{k: v for k, v in defaults.items() if k != "note"}, **entry}
        unknown = [k for k in merged if k not in MAP_KEYS]
        if unknown:
            raise LabelMapError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(MAP_KEYS)})")
        for key in ("source", "target"):
            if not merged.get(key):
                raise LabelMapError(f"{where}: no {key!r}: name the {key} dataset (e.g. {key}: ham10000)")
        classes = merged.get("classes")
        grouping = merged.get("grouping")
        if (classes is None) == (grouping is None):
            raise LabelMapError(f"{where}: give exactly one of 'classes' (source class -> target class) and "
                                "'grouping' (a grouping both label sets have)")
        if grouping is not None and merged.get("target_grouping"):
            raise LabelMapError(f"{where}: 'grouping' and 'target_grouping' exclude each other")
        if classes is not None:
            if not isinstance(classes, Mapping) or not classes:
                raise LabelMapError(f"{where}: 'classes' must map each source class to a target class or null")
            parsed: dict[str, str | None] = {}
            for key, value in classes.items():
                if value is not None and not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise LabelMapError(f"{where}: class {key!r} maps to {value!r}; give one class code (quote it) "
                                        "or null for no counterpart")
                parsed[str(key)] = None if value is None else str(value)
            classes = parsed
        specs.append(LabelMapSpec(
            source=str(merged["source"]), target=str(merged["target"]), classes=classes,
            grouping=None if grouping is None else str(grouping),
            target_grouping=str(merged["target_grouping"]) if merged.get("target_grouping") else None,
            source_options=_options(merged.get("source_options"), "source_options", where),
            target_options=_options(merged.get("target_options"), "target_options", where),
            note=" ".join(str(merged.get("note") or "").split()), origin=where))
    return specs


def read_specs(path: str | Path) -> list[LabelMapSpec]:
    """The maps declared in the YAML file ``path`` (one-line errors for a missing or bad file)."""
    from ..config import ConfigError, load_yaml

    path = Path(path)
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        if not path.exists():
            raise LabelMapError(f"label map file {path} does not exist") from None
        raise LabelMapError(str(exc)) from None
    return parse_specs(data, str(path))


def builtin_folder() -> Path:
    from ..config import configs_dir

    return configs_dir() / LABELMAP_FOLDER


def builtin_specs() -> list[LabelMapSpec]:
    """Every built-in map (``configs/labelmaps/*.yaml``), files in name order."""
    folder = builtin_folder()
    specs: list[LabelMapSpec] = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        for spec in read_specs(path):
            specs.append(LabelMapSpec(**{**spec.__dict__, "origin": spec.origin.replace(str(folder), "built-in", 1)}))
    return specs


# ---------------------------------------------------------------- a map resolved against two label sets

@dataclass(frozen=True, eq=False)
class LabelMap:
    """A map between a source label set (what a classifier predicts) and a target label set (a
    dataset's), resolved: ``evaluated`` is the label set the evaluation runs on, and each source
    and target class maps to one of its codes or to None (no counterpart)."""

    name: str
    kind: str  # "classes" | "grouping" | "identity"
    origin: str
    source: LabelSet
    target: LabelSet
    evaluated: LabelSet
    source_to_eval: Mapping[str, str | None]
    target_to_eval: Mapping[str, str | None]
    note: str = ""
    spec: LabelMapSpec | None = None

    @property
    def unmapped_source(self) -> tuple[str, ...]:
        """Source classes with no counterpart (their probability is left out)."""
        return tuple(c for c in self.source.codes if self.source_to_eval[c] is None)

    @property
    def excluded_target(self) -> tuple[str, ...]:
        """Target classes with no counterpart (their images are excluded and counted)."""
        return tuple(c for c in self.target.codes if self.target_to_eval[c] is None)

    @property
    def matrix(self) -> np.ndarray:
        """(source classes, evaluated classes) 0/1: ``P_source @ matrix`` sums the probabilities."""
        m = np.zeros((len(self.source), len(self.evaluated)), dtype=np.float64)
        for i, code in enumerate(self.source.codes):
            mapped = self.source_to_eval[code]
            if mapped is not None:
                m[i, self.evaluated.index(mapped)] = 1.0
        return m

    def map_probabilities(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities over the evaluated classes, renormalised; the share each row had on
        source classes without a counterpart). A row with all its mass there is uniform."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.source):
            raise ValueError(f"{self.name}: probabilities have shape {p.shape}, expected (N, {len(self.source)})")
        summed = p @ self.matrix
        kept = summed.sum(axis=1)
        total = p.sum(axis=1)
        unmapped = np.where(total > 0, 1.0 - kept / np.where(total > 0, total, 1.0), 0.0)
        out = np.full_like(summed, 1.0 / len(self.evaluated))
        ok = kept > 0
        out[ok] = summed[ok] / kept[ok, None]
        return out, np.clip(unmapped, 0.0, 1.0)

    def map_source_labels(self, labels: Sequence[str | None]) -> list[str | None]:
        """Source class codes to evaluated codes; None (invalid) for None or no counterpart."""
        return [None if label is None else self.source_to_eval[label] for label in labels]

    def map_target_labels(self, labels: Sequence[str]) -> list[str | None]:
        """The target dataset's true labels to evaluated codes; None where excluded."""
        return [self.target_to_eval[str(label)] for label in labels]

    def predict(self, labels: Sequence[str | None], probabilities: np.ndarray | None
                ) -> tuple[list[str | None], np.ndarray | None, np.ndarray | None]:
        """Evaluated predictions from a classifier's source-class predictions: with
        probabilities, the top class of the summed, renormalised probabilities (an invalid answer
        stays invalid, and so does a row with no probability on any evaluated class); without,
        each label mapped (None where it has no counterpart). Returns (labels, probabilities,
        unmapped share per row)."""
        if probabilities is None:
            return self.map_source_labels(labels), None, None
        mapped, unmapped = self.map_probabilities(probabilities)
        kept = np.asarray(probabilities, dtype=np.float64) @ self.matrix
        top = mapped.argmax(axis=1)
        out = [None if label is None or kept[i].sum() <= 0 else self.evaluated.codes[int(top[i])]
               for i, label in enumerate(labels)]
        return out, mapped, unmapped

    def describe(self) -> str:
        """One line: the map, what is evaluated and what has no counterpart."""
        parts = [f"{self.name} ({self.kind}, {self.origin}): evaluated on {', '.join(self.evaluated.codes)}"]
        if self.kind == "classes" or self.kind == "grouping":
            many = {}
            for src, dst in self.source_to_eval.items():
                if dst is not None:
                    many.setdefault(dst, []).append(src)
            parts.append("; ".join(f"{'+'.join(v)}->{k}" for k, v in many.items()))
        if self.excluded_target:
            parts.append(f"excluded (no counterpart): {_listed(self.excluded_target)}")
        if self.unmapped_source:
            parts.append(f"predicted classes without counterpart: {_listed(self.unmapped_source)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "origin": self.origin, "note": self.note,
                "source": self.source.to_dict(), "target": self.target.to_dict(),
                "evaluated": self.evaluated.to_dict(),
                "source_to_evaluated": dict(self.source_to_eval), "target_to_evaluated": dict(self.target_to_eval),
                "unmapped_source": list(self.unmapped_source), "excluded_target": list(self.excluded_target),
                "declared": self.spec.to_dict() if self.spec is not None else None}


def _listed(codes: Sequence[str], limit: int = 10) -> str:
    more = f" and {len(codes) - limit} more" if len(codes) > limit else ""
    return ", ".join(codes[:limit]) + more


def restrict(label_set: LabelSet, codes: Sequence[str]) -> LabelSet:
    """``label_set`` with only ``codes`` (in its own order): names, synonyms and the focus class
    kept where they survive, groupings kept where they still have two groups."""
    keep = [c for c in label_set.codes if c in set(codes)]
    if len(keep) == len(label_set):
        return label_set
    groupings = {}
    for gname, mapping in label_set.groupings.items():
        sub = {c: mapping[c] for c in keep}
        if len(set(sub.values())) >= 2:
            groupings[gname] = sub
    positive = {g: p for g, p in label_set.positive.items() if g in groupings and p in groupings[g].values()}
    return LabelSet(codes=tuple(keep), names=tuple(label_set.name(c) for c in keep), groupings=groupings,
                    positive=positive, synonyms={c: v for c, v in label_set.synonyms.items() if c in keep},
                    focus=label_set.focus if label_set.focus in keep else None)


def group_label_set(label_set: LabelSet, grouping: str, groups: Sequence[str]) -> LabelSet:
    """The label set whose classes are ``groups`` of ``label_set``'s ``grouping`` (codes are the
    group names made code-like: ``not malignant`` -> ``not_malignant``); the grouping itself is
    kept as the identity, so its sensitivity and specificity are reported."""
    codes = tuple(_code(g) for g in groups)
    positive = label_set.positive.get(grouping)
    focus = _code(positive) if positive in groups else None
    identity = {grouping: {c: g for c, g in zip(codes, groups)}} if len(codes) >= 2 else {}
    return LabelSet(codes=codes, names=tuple(g[:1].upper() + g[1:] for g in groups), groupings=identity,
                    positive={grouping: positive} if focus else {}, focus=focus)


def _check_codes(spec: LabelMapSpec, source: LabelSet, target_codes: Sequence[str], target_what: str) -> None:
    assert spec.classes is not None
    unknown = [c for c in spec.classes if c not in source]
    if unknown:
        raise LabelMapError(f"{spec.where()}: {unknown[0]!r} is not a class of {spec.source} "
                            f"({', '.join(source.codes)})")
    missing = [c for c in source.codes if c not in spec.classes]
    if missing:
        raise LabelMapError(f"{spec.where()}: source classes {', '.join(missing)} are not listed; map each source "
                            f"class to a {target_what} or to null (no counterpart)")
    bad = [v for v in spec.classes.values() if v is not None and v not in target_codes]
    if bad:
        raise LabelMapError(f"{spec.where()}: {bad[0]!r} is not a {target_what} of {spec.target} "
                            f"({', '.join(target_codes)})")


def _evaluated_or_fail(name: str, evaluated_codes: Sequence[str], where: str) -> None:
    if len(evaluated_codes) < 2:
        raise LabelMapError(f"{where}: only {list(evaluated_codes)} would be evaluated; a map must leave at least two "
                            "classes with a counterpart on both sides")


def build(spec: LabelMapSpec, source: LabelSet, target: LabelSet) -> LabelMap:
    """``spec`` resolved against the actual label sets; a one-line :class:`LabelMapError` for a
    code or grouping that is not there, a source class left out, or fewer than two classes left."""
    name = f"{spec.source} -> {spec.target}"
    if spec.grouping is not None:
        return grouping_map(source, target, spec.grouping, name=name, origin=spec.origin, note=spec.note,
                            spec=spec)
    assert spec.classes is not None
    if spec.target_grouping is not None:
        if spec.target_grouping not in target.groupings:
            raise LabelMapError(f"{spec.where()}: the target's classes ({', '.join(target.codes[:8])}"
                                f"{', ...' if len(target) > 8 else ''}) have no grouping {spec.target_grouping!r}"
                                f" (groupings: {', '.join(target.groupings) or 'none'})")
        groups, _ = target.grouping(spec.target_grouping)
        _check_codes(spec, source, groups, f"group of {spec.target_grouping!r}")
        produced = {v for v in spec.classes.values() if v is not None}
        kept = [g for g in groups if g in produced]
        _evaluated_or_fail(name, kept, spec.where())
        evaluated = group_label_set(target, spec.target_grouping, kept)
        to_code = dict(zip(kept, evaluated.codes))
        target_map = {c: to_code.get(target.groupings[spec.target_grouping][c]) for c in target.codes}
        source_map = {c: to_code.get(v) if v is not None else None for c, v in spec.classes.items()}
        return LabelMap(name, "classes", spec.origin, source, target, evaluated, source_map, target_map, spec.note,
                        spec)
    _check_codes(spec, source, target.codes, "class")
    produced = {v for v in spec.classes.values() if v is not None}
    kept = [c for c in target.codes if c in produced]
    _evaluated_or_fail(name, kept, spec.where())
    evaluated = restrict(target, kept)
    target_map = {c: (c if c in produced else None) for c in target.codes}
    source_map = {c: spec.classes[c] for c in source.codes}
    return LabelMap(name, "classes", spec.origin, source, target, evaluated, source_map, target_map, spec.note, spec)


def grouping_map(source: LabelSet, target: LabelSet, grouping: str, *, name: str, origin: str, note: str = "",
                 spec: LabelMapSpec | None = None) -> LabelMap:
    """Evaluate on ``grouping``, which both label sets have: the groups both produce, or — where
    their group names differ but both name the same positive group — that group against the
    rest (``not_<positive>``)."""
    where = spec.where() if spec is not None else name
    for side, ls in (("source", source), ("target", target)):
        if grouping not in ls.groupings:
            raise LabelMapError(f"{where}: the {side} classes ({', '.join(ls.codes[:8])}"
                                f"{', ...' if len(ls) > 8 else ''}) have no grouping {grouping!r} "
                                f"(groupings: {', '.join(ls.groupings) or 'none'})")
    src_groups, _ = source.grouping(grouping)
    tgt_groups, _ = target.grouping(grouping)
    shared = [g for g in tgt_groups if g in src_groups]
    if len(shared) >= 2 and set(src_groups) == set(tgt_groups):
        evaluated = group_label_set(target, grouping, shared)
        to_code = dict(zip(shared, evaluated.codes))
        source_map = {c: to_code.get(source.groupings[grouping][c]) for c in source.codes}
        target_map = {c: to_code.get(target.groupings[grouping][c]) for c in target.codes}
    else:
        positive = target.positive.get(grouping)
        if positive is None or source.positive.get(grouping) != positive:
            raise LabelMapError(f"{where}: the groups of {grouping!r} differ ({', '.join(src_groups)} vs "
                                f"{', '.join(tgt_groups)}) and no shared positive group says which is which; "
                                "write a label map (see configs/labelmaps/README.md)")
        rest = f"not {positive}"
        evaluated = LabelSet(codes=(_code(rest), _code(positive)), names=(rest[:1].upper() + rest[1:],
                                                                          positive[:1].upper() + positive[1:]),
                             groupings={grouping: {_code(rest): rest, _code(positive): positive}},
                             positive={grouping: positive}, focus=_code(positive))

        def side(ls: LabelSet) -> dict[str, str | None]:
            return {c: _code(positive) if ls.groupings[grouping][c] == positive else _code(rest) for c in ls.codes}

        source_map, target_map = side(source), side(target)
    _evaluated_or_fail(name, evaluated.codes, where)
    return LabelMap(name, "grouping", origin, source, target, evaluated, source_map, target_map,
                    note or f"evaluated on the grouping {grouping!r}", spec)


def identity_map(label_set: LabelSet, name: str) -> LabelMap:
    ident = {c: c for c in label_set.codes}
    return LabelMap(name, "identity", "same classes", label_set, label_set, label_set, ident, ident,
                    "the two label sets have the same classes")


# ---------------------------------------------------------------- choosing the map for a pair

def _declared_label_set(name: str, options: Mapping[str, str]) -> LabelSet | None:
    """The label set of the registered dataset ``name`` with ``options``; None when no loaded
    plugin registers it (a map for a user's own dataset then matches by name)."""
    from .sources import registered_descriptor

    descriptor = registered_descriptor(name)
    if descriptor is None:
        return None
    try:
        return descriptor.label_set(options)
    except ValueError as exc:
        raise LabelMapError(f"label map for {name}: {exc}") from None


def _matches(spec_name: str, options: Mapping[str, str], dataset_name: str, label_set: LabelSet) -> bool:
    declared = _declared_label_set(spec_name, options)
    if declared is None:
        return spec_name == dataset_name
    return declared.same_classes(label_set)


def resolve_label_map(source_name: str, source: LabelSet, target_name: str, target: LabelSet,
                      files: Sequence[str | Path] = ()) -> LabelMap:
    """The map from ``source`` (the classes a classifier predicts, fitted on ``source_name``) to
    ``target`` (dataset ``target_name``'s): the first map of ``files`` (a user's YAML files),
    then of the built-in maps, that names these label sets; else the identity when the classes
    are the same, else a grouping both have (``malignancy`` first). A one-line
    :class:`LabelMapError` when none applies, or when a matching map names unknown codes."""
    name = f"{source_name} -> {target_name}"
    user: list[LabelMapSpec] = []
    for path in files:
        user += read_specs(path)
    for spec in [*user, *builtin_specs()]:
        if (_matches(spec.source, spec.source_options, source_name, source)
                and _matches(spec.target, spec.target_options, target_name, target)):
            return build(spec, source, target)
    if source.same_classes(target):
        return identity_map(source, name)
    shared = [g for g in source.groupings if g in target.groupings]
    shared.sort(key=lambda g: g != "malignancy")
    problems = []
    for grouping in shared:
        try:
            return grouping_map(source, target, grouping, name=name, origin=f"shared grouping {grouping!r}")
        except LabelMapError as exc:
            problems.append(str(exc))
    why = f" ({problems[0]})" if problems else ""
    raise LabelMapError(f"no label map from {source_name}'s classes ({', '.join(source.codes[:8])}"
                        f"{', ...' if len(source) > 8 else ''}) to {target_name}'s ({', '.join(target.codes[:8])}"
                        f"{', ...' if len(target) > 8 else ''}) and no shared grouping{why}; write one "
                        "(configs/labelmaps/README.md) and pass it with --label-map FILE")


def check_builtin_maps() -> list[LabelMap]:
    """Every built-in map resolved against the label sets it names (raises on the first that
    does not fit): what the tests and ``derma datasets`` rely on."""
    out = []
    for spec in builtin_specs():
        source = _declared_label_set(spec.source, spec.source_options)
        target = _declared_label_set(spec.target, spec.target_options)
        if source is None or target is None:
            raise LabelMapError(f"{spec.where()}: names a dataset that is not registered")
        out.append(build(spec, source, target))
    return out


__all__ = ["LabelMap", "LabelMapSpec", "LabelMapError", "build", "builtin_specs", "check_builtin_maps",
           "grouping_map", "group_label_set", "identity_map", "parse_specs", "read_specs", "resolve_label_map",
           "restrict"]
