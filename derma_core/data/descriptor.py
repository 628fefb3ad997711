"""Dataset descriptors: the one home of everything that belongs to a dataset.

A :class:`DatasetDescriptor` says what a dataset *is* — its label set, grouping column (lesion,
patient or none), subgroup columns and their kinds, modality, raw layout, split policy, licence
and citation — and how to *read* it (its raw-folder reader), *fetch* it (a download function,
or a line saying where to get it) and *imitate* it (a writer of synthetic data in its layout).

Descriptors are registered through the ``register_datasets`` hook (``register(name,
descriptor)``); a descriptor is also a dataset source: calling it with a run config loads the
prepared folder at ``data.dir``. ``derma prep`` records the descriptor's facts in the prepared
folder's manifest, so a run reads the label set, grouping and subgroups its data was prepared
with, even for a dataset declared in a YAML file (``folder``) or by a plugin that is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..labels import LabelSet

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..interfaces import Dataset
    from .raw import RawData

GROUPINGS = ("lesion", "patient", None)
MODALITIES = ("dermoscopic", "clinical")
SUBGROUP_KINDS = ("categorical", "banded", "ordinal")
SPLIT_POLICIES = ("grouped", "official")


@dataclass(frozen=True)
class SubgroupColumn:
    """A metadata column usable for subgroup metrics.

    * ``categorical``: each value is a group (``sex``, ``localization``);
    * ``banded``: a number cut into bands at ``bands`` (age: <30, 30-44, ... 75+);
    * ``ordinal``: ordered levels ``order`` (Fitzpatrick I-VI, DDI's 12/34/56); values in
      ``unknown`` (e.g. ``-1``) are the missing group.
    """

    column: str
    kind: str = "categorical"
    bands: tuple[float, ...] = ()
    order: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    title: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SUBGROUP_KINDS:
            raise ValueError(f"subgroup column {self.column!r}: kind {self.kind!r} is not one of {SUBGROUP_KINDS}")
        if self.kind == "banded" and not self.bands:
            raise ValueError(f"subgroup column {self.column!r}: a banded column needs bands")
        object.__setattr__(self, "bands", tuple(float(b) for b in self.bands))
        object.__setattr__(self, "order", tuple(str(o) for o in self.order))
        object.__setattr__(self, "unknown", tuple(str(u) for u in self.unknown))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"column": self.column, "kind": self.kind}
        if self.bands:
            d["bands"] = list(self.bands)
        if self.order:
            d["order"] = list(self.order)
        if self.unknown:
            d["unknown"] = list(self.unknown)
        if self.title:
            d["title"] = self.title
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> "SubgroupColumn":
        if isinstance(d, str):
            return cls(d)
        return cls(column=str(d["column"]), kind=str(d.get("kind", "categorical")), bands=tuple(d.get("bands") or ()),
                   order=tuple(d.get("order") or ()), unknown=tuple(d.get("unknown") or ()),
                   title=str(d.get("title") or ""))


@dataclass(frozen=True)
class DatasetOption:
    """A choice a dataset offers at preparation time (``derma prep --option NAME=VALUE``), e.g.
    Fitzpatrick17k's label level (3, 9 or 114 classes) or Derm7pt's image (derm or clinic)."""

    name: str
    default: str
    choices: tuple[str, ...]
    help: str = ""


#: reader(raw_root, options) -> RawData with the columns image_id, dx (a class code), group_id
#: ("" where the dataset has no grouping), optionally split (an official split) and metadata.
Reader = Callable[[Path, Mapping[str, str]], "RawData"]
#: downloader(out, options, progress) -> None; fetches the raw files into ``out``.
Downloader = Callable[..., None]
#: writer(out, draws, options) -> image paths: writes the metadata files of a synthetic set in the
#: dataset's raw layout and returns, per row of ``draws``, the path (under ``out``) where that
#: row's image must go (``.jpg`` or ``.png``); the generic generator then draws the images there.
#: ``draws`` has the columns image_id (unique), dx (a class code), group_id (several images per
#: group where the dataset has a grouping), age (int or NA), sex (male/female), site (anatomical
#: site), skin_type (Fitzpatrick 1-6) and split (train/val/test, for datasets with an official split).
SynthWriter = Callable[[Path, "pd.DataFrame", Mapping[str, str]], "list[Path]"]


@dataclass(frozen=True, eq=False)
class DatasetDescriptor:
    """Everything that belongs to one dataset (see the module docstring).

    ``labels`` is a :class:`LabelSet`, or a function of the prep options returning one (a
    dataset whose label level is chosen, like Fitzpatrick17k). ``class_counts`` are the
    published images per class (synthetic sets keep these proportions).
    """

    name: str
    title: str
    labels: LabelSet | Callable[[Mapping[str, str]], LabelSet]
    grouping: str | None = "lesion"
    modality: str = "dermoscopic"
    subgroups: tuple[SubgroupColumn, ...] = ()
    split_policy: str = "grouped"
    licence: str = ""
    citation: str = ""
    url: str = ""
    layout: str = ""
    access: str = ""
    options: tuple[DatasetOption, ...] = ()
    class_counts: Mapping[str, int] | Callable[[Mapping[str, str]], Mapping[str, int]] = field(default_factory=dict)
    reader: Reader | None = None
    downloader: Downloader | None = None
    synth_writer: SynthWriter | None = None
    loader: Callable[[dict], "Dataset"] | None = None

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ValueError(f"dataset {self.name!r}: grouping {self.grouping!r} is not one of {GROUPINGS}")
        if self.modality not in MODALITIES:
            raise ValueError(f"dataset {self.name!r}: modality {self.modality!r} is not one of {MODALITIES}")
        if self.split_policy not in SPLIT_POLICIES:
            raise ValueError(f"dataset {self.name!r}: split policy {self.split_policy!r} is not one of {SPLIT_POLICIES}")
        object.__setattr__(self, "subgroups", tuple(
            s if isinstance(s, SubgroupColumn) else SubgroupColumn.from_dict(s) for s in self.subgroups))

    # ---- options and label set
    def resolve_options(self, given: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Every option with its value (given, else default); one-line errors for unknown names
        and values."""
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = [k for k in given if k not in known]
        if unknown:
            have = ", ".join(known) or "none"
            raise ValueError(f"dataset {self.name}: unknown option {unknown[0]!r} (options: {have})")
        out = {}
        for name, opt in known.items():
            value = str(given.get(name, opt.default))
            if value not in opt.choices:
                raise ValueError(f"dataset {self.name}: option {name}={value!r}: use one of {', '.join(opt.choices)}")
            out[name] = value
        return out

    def label_set(self, options: Mapping[str, Any] | None = None) -> LabelSet:
        opts = self.resolve_options(options)
        return self.labels(opts) if callable(self.labels) else self.labels

    def counts(self, options: Mapping[str, Any] | None = None) -> dict[str, int]:
        opts = self.resolve_options(options)
        counts = self.class_counts(opts) if callable(self.class_counts) else self.class_counts
        return dict(counts)

    @property
    def group_column(self) -> str | None:
        """The raw metadata column that holds the group (``lesion_id``/``patient_id``), or None."""
        return None if self.grouping is None else f"{self.grouping}_id"

    # ---- as a dataset source: load the prepared folder at data.dir
    def __call__(self, config: dict) -> "Dataset":
        if self.loader is not None:
            return self.loader(config)
        from .prepare import load_prepared

        data = config.get("data") or {}
        folder = data.get("dir")
        if not folder:
            raise ValueError(f"dataset {self.name} needs data.dir: `derma prep --dataset {self.name} --raw RAW "
                             f"--out PREPARED`, then --data-dir PREPARED")
        dataset = load_prepared(Path(folder).expanduser(), fold=data.get("fold"))
        prepared_as = dataset.descriptor.name
        if prepared_as != self.name:
            raise ValueError(f"{folder} was prepared as dataset {prepared_as!r}, not {self.name!r}; pass "
                             f"--dataset {prepared_as}, or prepare it again with --dataset {self.name}")
        return dataset

    # ---- persistence (the manifest's "dataset" block)
    def facts(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The facts a prepared folder records: name, title, label set (for the options used),
        grouping, modality, subgroups, split policy, licence, citation, url and the options."""
        opts = self.resolve_options(options)
        return {"name": self.name, "title": self.title, "labels": self.label_set(opts).to_dict(),
                "grouping": self.grouping, "modality": self.modality,
                "subgroups": [s.to_dict() for s in self.subgroups], "split_policy": self.split_policy,
                "licence": self.licence, "citation": self.citation, "url": self.url, "options": opts}

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> "DatasetDescriptor":
        """A descriptor holding only the recorded facts (no reader, downloader or writer)."""
        return cls(name=str(facts["name"]), title=str(facts.get("title") or facts["name"]),
                   labels=LabelSet.from_dict(facts["labels"]), grouping=facts.get("grouping"),
                   modality=str(facts.get("modality") or "dermoscopic"),
                   subgroups=tuple(SubgroupColumn.from_dict(s) for s in facts.get("subgroups") or ()),
                   split_policy=str(facts.get("split_policy") or "grouped"), licence=str(facts.get("licence") or ""),
                   citation=str(facts.get("citation") or ""), url=str(facts.get("url") or ""))

    def with_labels(self, labels: LabelSet) -> "DatasetDescriptor":
        return replace(self, labels=labels)

    def licence_line(self) -> str:
        """One line for the terminal when the dataset is prepared."""
        parts = [f"{self.title}"]
        if self.licence:
            parts.append(f"licence: {self.licence}")
        if self.citation:
            parts.append(f"cite: {self.citation}")
        return "; ".join(parts)


__all__ = ["DatasetDescriptor", "DatasetOption", "SubgroupColumn", "GROUPINGS", "MODALITIES", "SUBGROUP_KINDS"]
