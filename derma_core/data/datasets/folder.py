"""Your own dataset, no code: a CSV, an image folder and a small YAML spec.

The spec declares what a descriptor holds: the dataset's name, its labels (codes, optional
names, groupings, synonyms, focus class), which CSV columns hold the image, the label, the group
(lesion or patient) and an official split, its metadata columns and their kinds (subgroups),
modality, licence and citation::

    name: my_clinic
    metadata: labels.csv            # the CSV, relative to the raw folder (default: its only .csv)
    images: images                  # the image folder, relative to the raw folder (default: the raw folder)
    columns: {image: file, label: diagnosis, group: patient_id}
    grouping: patient               # lesion | patient | none (default: lesion with a group column, else none)
    modality: clinical              # dermoscopic | clinical
    labels:                         # codes in order; a name each (optional)
      - {code: mel, name: Melanoma}
      - {code: nev, name: Naevus, synonyms: [mole]}
      - bcc
    groupings: {malignancy: {mel: malignant, nev: benign, bcc: malignant}}
    positive: {malignancy: malignant}
    focus: mel
    metadata_columns:
      sex: categorical
      age: {kind: banded, bands: [30, 45, 60, 75]}
      fitzpatrick: {kind: ordinal, order: ["1", "2", "3", "4", "5", "6"]}
    licence: internal use only
    citation: ...

``derma prep --spec my.yaml --raw DIR --out PREPARED`` prepares it like any other dataset;
``derma synth --spec my.yaml --out DIR`` draws a synthetic set in its layout. Without
``labels`` the label set is the distinct labels in the CSV, sorted. Without a spec, a CSV alone
(``data.source: folder``, ``data.path: labels.csv``) is read with derma's column names and their
usual aliases (``image``/``image_id``/``filename``, ``label``/``dx``, ``lesion_id``).

At run time, ``data.source: folder`` takes ``data.path`` (the spec, or a CSV) and
``data.image_root`` (the raw folder; default the file's folder) and prepares them into the cache
folder on first use, or ``data.dir`` (a folder prepared from a spec).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ...labels import LabelSet
from .. import raw as rawmod
from ..descriptor import GROUPINGS, MODALITIES, DatasetDescriptor, SubgroupColumn

SPEC_KEYS = ("name", "title", "metadata", "images", "columns", "grouping", "modality", "labels", "groupings",
             "positive", "synonyms", "focus", "metadata_columns", "licence", "citation", "url")
COLUMN_KEYS = ("image", "label", "group", "split")
#: Generic synthetic columns and the metadata column names they fill in a synthetic set.
_SYNTH_COLUMNS = {"age": ("age", "age_approx"), "sex": ("sex", "gender"),
                  "site": ("site", "localization", "location", "anatom_site", "anatom_site_general", "region"),
                  "skin_type": ("skin_type", "fitzpatrick", "fitzpatrick_skin_type", "fitzpatrick_scale", "fst")}


class SpecError(ValueError):
    """A YAML spec that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class FolderSpec:
    """A parsed spec (see the module docstring). ``labels`` None: the CSV's distinct labels."""

    name: str
    title: str
    path: Path | None = None
    metadata: str | None = None
    images: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    group_column: str | None = None
    split_column: str | None = None
    grouping: str | None = None
    modality: str = "dermoscopic"
    labels: LabelSet | None = None
    subgroups: tuple[SubgroupColumn, ...] = ()
    licence: str = ""
    citation: str = ""
    url: str = ""

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "the folder spec"


def _fail(path: Path, key: str, message: str) -> SpecError:
    return SpecError(f"{path}: {key}: {message}")


def _str(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _fail(path, key, f"expected a text value, got {type(value).__name__}")
    return str(value)


def _labels(path: Path, doc: Mapping[str, Any]) -> LabelSet | None:
    value = doc.get("labels")
    if value is None:
        return None
    codes, names, synonyms = [], [], {}
    if isinstance(value, Mapping):  # code: name
        entries = [{"code": k, "name": v} for k, v in value.items()]
    elif isinstance(value, list):
        entries = value
    else:
        raise _fail(path, "labels", "expected a list of codes (or {code, name, synonyms} entries) or a mapping "
                                    "code: name")
    for k, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            unknown = sorted(set(entry) - {"code", "name", "synonyms"})
            if unknown or "code" not in entry:
                raise _fail(path, f"labels[{k}]", "an entry has code, optionally name and synonyms"
                                                 + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""))
            code = _str(path, f"labels[{k}].code", entry["code"])
            names.append(_str(path, f"labels[{k}].name", entry["name"]) if entry.get("name") is not None else code)
            if entry.get("synonyms"):
                if not isinstance(entry["synonyms"], list):
                    raise _fail(path, f"labels[{k}].synonyms", "expected a list")
                synonyms[code] = tuple(_str(path, f"labels[{k}].synonyms", s) for s in entry["synonyms"])
        else:
            code = _str(path, f"labels[{k}]", entry)
            names.append(code)
        codes.append(code)
    for code, more in (doc.get("synonyms") or {}).items():
        synonyms[str(code)] = synonyms.get(str(code), ()) + tuple(str(s) for s in (more or ()))
    try:
        return LabelSet(codes=tuple(codes), names=tuple(names), groupings=doc.get("groupings") or {},
                        positive=doc.get("positive") or {}, synonyms=synonyms, focus=doc.get("focus"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise _fail(path, "labels", str(exc)) from None


def _subgroups(path: Path, value: Any) -> tuple[SubgroupColumn, ...]:
    if value is None:
        return ()
    if isinstance(value, list):  # plain column names: categorical
        value = {str(v): "categorical" for v in value}
    if not isinstance(value, Mapping):
        raise _fail(path, "metadata_columns", "expected a mapping column: kind (or {kind, bands, order, unknown})")
    out = []
    for column, kind in value.items():
        key = f"metadata_columns.{column}"
        entry = {"kind": kind} if isinstance(kind, str) or kind is None else kind
        if not isinstance(entry, Mapping):
            raise _fail(path, key, "expected a kind (categorical, banded, ordinal) or {kind, bands, order, unknown}")
        unknown = sorted(set(entry) - {"kind", "bands", "order", "unknown", "title"})
        if unknown:
            raise _fail(path, key, f"unknown keys {', '.join(map(str, unknown))} (use kind, bands, order, unknown, title)")
        try:
            out.append(SubgroupColumn.from_dict({"column": str(column), "kind": entry.get("kind") or "categorical",
                                                 **{k: v for k, v in entry.items() if k != "kind"}}))
        except (ValueError, TypeError) as exc:
            raise _fail(path, key, str(exc)) from None
    return tuple(out)


def parse_spec(doc: Any, path: Path) -> FolderSpec:
    """A :class:`FolderSpec` from a loaded YAML document; a one-line :class:`SpecError` naming
    the file and key for anything wrong (unknown keys included: they are usually typos)."""
    if not isinstance(doc, Mapping):
        raise SpecError(f"{path}: a dataset spec is a mapping (name, labels, columns, ...); see docs/data.md")
    unknown = [k for k in doc if k not in SPEC_KEYS]
    if unknown:
        raise _fail(path, str(unknown[0]), f"unknown key; a spec has {', '.join(SPEC_KEYS)}")
    columns = doc.get("columns") or {}
    if not isinstance(columns, Mapping) or any(k not in COLUMN_KEYS for k in columns):
        raise _fail(path, "columns", f"expected a mapping with {', '.join(COLUMN_KEYS)}")
    columns = {k: _str(path, f"columns.{k}", v) for k, v in columns.items() if v is not None}
    grouping = doc.get("grouping", "lesion" if "group" in columns else None)
    grouping = None if grouping in (None, "none") else str(grouping)
    if grouping not in GROUPINGS:
        raise _fail(path, "grouping", f"{grouping!r}: use lesion, patient or none")
    if grouping and "group" not in columns:
        raise _fail(path, "columns.group", f"grouping {grouping} needs the column that holds the {grouping} id")
    modality = str(doc.get("modality") or "dermoscopic")
    if modality not in MODALITIES:
        raise _fail(path, "modality", f"{modality!r}: use one of {', '.join(MODALITIES)}")
    name = _str(path, "name", doc.get("name") or path.stem)
    if not name or any(c.isspace() or c in "/\\," for c in name):
        raise _fail(path, "name", f"{name!r}: use a short name without spaces, slashes or commas")
    optional = {k: _str(path, k, doc[k]) for k in ("title", "metadata", "images", "licence", "citation", "url")
                if doc.get(k) is not None}
    return FolderSpec(name=name, title=optional.get("title", name), path=path, metadata=optional.get("metadata"),
                      images=optional.get("images"), image_column=columns.get("image"),
                      label_column=columns.get("label"), group_column=columns.get("group"),
                      split_column=columns.get("split"), grouping=grouping, modality=modality,
                      labels=_labels(path, doc), subgroups=_subgroups(path, doc.get("metadata_columns")),
                      licence=optional.get("licence", ""), citation=optional.get("citation", ""),
                      url=optional.get("url", ""))


def load_spec(path: str | Path) -> FolderSpec:
    """Read and check a YAML spec file."""
    import yaml

    from ...textio import SAVE_AS_UTF8_REMEDY, TextEncodingError, read_text

    path = Path(path).expanduser()
    try:
        doc = yaml.safe_load(read_text(path, remedy=SAVE_AS_UTF8_REMEDY))
    except TextEncodingError as exc:
        raise SpecError(str(exc)) from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read ({exc.strerror or exc}); pass the dataset's YAML spec") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    return parse_spec(doc, path)


def csv_spec(csv: Path, root: Path) -> FolderSpec:
    """The spec of a lone label CSV: derma's column names (and their aliases), grouped by lesion
    when it has a ``lesion_id`` column, labels from its distinct values."""
    frame, _ = rawmod.read_table(csv, ("image_id", "dx"), ("lesion_id",), fill_optional=False)
    grouping = "lesion" if "lesion_id" in frame.columns else None
    metadata = str(csv if csv.is_absolute() else csv.resolve())
    return FolderSpec(name=f"folder-{csv.stem}", title=f"folder {csv.name}", metadata=metadata, images=None,
                      group_column="lesion_id" if grouping else None, grouping=grouping)


# ---------------------------------------------------------------- reading

def _csv_path(spec: FolderSpec, root: Path) -> Path:
    if spec.metadata:
        return root / spec.metadata
    return rawmod.find_table(root, (), "label CSV", f"name it in the spec's metadata key ({spec.where})")


def _read(spec: FolderSpec, root: Path) -> tuple[pd.DataFrame, list[rawmod.Problem], Path]:
    """The CSV with derma's column names: image_id (the file stem), dx, group_id, split."""
    csv = _csv_path(spec, root)
    if not csv.is_file():
        raise rawmod.PrepError(f"error: {csv}: no such file; the spec's metadata key ({spec.where}) names the label "
                               "CSV relative to the raw folder")
    wanted = {"image_id": spec.image_column, "dx": spec.label_column}
    aliases = {k: v for k, v in rawmod.COLUMN_ALIASES.items() if wanted.get(k) is None}
    required = [wanted["image_id"] or "image_id", wanted["dx"] or "dx"]
    if spec.group_column:
        required.append(spec.group_column)
    if spec.split_column:
        required.append(spec.split_column)
    frame, problems = rawmod.read_table(csv, tuple(required), (), aliases=aliases, fill_optional=False)
    image_col, label_col = required[0], required[1]
    if image_col in frame.columns:
        frame["image_id"] = frame[image_col].map(lambda v: Path(v).stem if v else v)  # a path -> its stem
        if image_col != "image_id":
            frame = frame.drop(columns=[image_col])
    if label_col in frame.columns and label_col != "dx":
        frame = frame.rename(columns={label_col: "dx"})
    if spec.group_column and spec.group_column in frame.columns:
        frame["group_id"] = frame[spec.group_column]  # the raw column stays as metadata too
    else:
        frame["group_id"] = ""
    if spec.split_column and spec.split_column in frame.columns:
        frame["split"] = frame[spec.split_column].str.lower()
        if spec.split_column != "split":
            frame = frame.drop(columns=[spec.split_column])
    return frame, problems, csv


def make_reader(spec: FolderSpec):
    def read(root: Path, options: Mapping[str, str]) -> rawmod.RawData:
        root = Path(root)
        if not root.is_dir():
            raise rawmod.PrepError(f"error: {root}: no such folder; pass the folder holding the label CSV and images")
        frame, problems, csv = _read(spec, root)
        if spec.path is None and spec.group_column is None and "image_id" in frame.columns:
            problems.append(rawmod.Problem("missing_column", f"{csv.name} header", "no lesion_id column",
                                           "each image is treated as its own lesion; add lesion_id if a lesion has "
                                           "several images, or they may leak between splits"))
        image_root = root / spec.images if spec.images else root
        images, image_problems = rawmod.find_images(image_root)
        return rawmod.RawData(root, csv, frame, images, problems + image_problems)

    return read


def csv_labels(spec: FolderSpec, root: Path) -> LabelSet:
    """The distinct labels of the spec's CSV, sorted (for a spec or CSV that declares none)."""
    frame, problems, csv = _read(spec, root)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise rawmod.PrepError(fatal[0].line())
    codes = sorted({v for v in frame["dx"] if v})
    if len(codes) < 2:
        raise rawmod.PrepError(f"error: {csv}: the labels are taken from the CSV (the spec declares none), which has "
                               f"{len(codes)} distinct label(s) ({', '.join(codes) or 'none'}); a dataset needs at "
                               "least two classes")
    return LabelSet(codes=tuple(codes))


# ---------------------------------------------------------------- the synthetic imitation

def make_writer(spec: FolderSpec):
    def write(out: Path, draws: pd.DataFrame, options: Mapping[str, str]) -> list[Path]:
        out = Path(out)
        csv = out / (spec.metadata or "labels.csv")
        if Path(spec.metadata or "labels.csv").is_absolute():
            raise ValueError(f"{spec.where}: metadata is an absolute path; a synthetic set needs it relative to the "
                             "output folder")
        image_dir = out / spec.images if spec.images else out
        paths = [image_dir / f"{i}.jpg" for i in draws["image_id"]]
        table = pd.DataFrame({spec.image_column or "image": [str(p.relative_to(csv.parent)) if p.is_relative_to(
            csv.parent) else str(p.relative_to(out)) for p in paths], spec.label_column or "label": draws["dx"]})
        if spec.group_column:
            table[spec.group_column] = draws["group_id"].to_numpy()
        if spec.split_column and "split" in draws.columns:
            table[spec.split_column] = draws["split"].to_numpy()
        for sub in spec.subgroups:
            source = next((k for k, names in _SYNTH_COLUMNS.items() if sub.column.lower() in names), None)
            table[sub.column] = draws[source].to_numpy() if source else ""
        csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv, index=False)
        return paths

    return write


# ---------------------------------------------------------------- the descriptor

def descriptor_from_spec(spec: FolderSpec, root: Path | None = None) -> DatasetDescriptor:
    """The dataset a spec declares; its labels come from the CSV under ``root`` when the spec
    declares none."""
    labels = spec.labels
    if labels is None:
        if root is None:
            raise SpecError(f"{spec.where}: labels: the spec declares no labels, so they come from the CSV; "
                            "declare them to draw a synthetic set")
        labels = csv_labels(spec, Path(root))
    layout = (f"{spec.metadata or 'one .csv'} (columns {spec.image_column or 'image_id'}, {spec.label_column or 'dx'}"
              + (f", {spec.group_column}" if spec.group_column else "") + ") and the images under "
              + (spec.images or "the raw folder"))
    return DatasetDescriptor(
        name=spec.name, title=spec.title, labels=labels, grouping=spec.grouping, modality=spec.modality,
        subgroups=spec.subgroups, split_policy="official" if spec.split_column else "grouped", licence=spec.licence,
        citation=spec.citation, url=spec.url, layout=layout,
        access=f"your own data, declared in {spec.where}", reader=make_reader(spec), synth_writer=make_writer(spec))


def spec_key(spec: FolderSpec, root: Path) -> str:
    """Identifies a spec (its file's content) with its data (the CSV's path and content)."""
    h = hashlib.sha256()
    if spec.path is not None:
        h.update(spec.path.read_bytes())
    csv = _csv_path(spec, root)
    h.update(f"{csv.resolve()}|{root.resolve()}".encode())
    if csv.is_file():
        from ..prepare import sha256_file

        h.update(sha256_file(csv).encode())
    return h.hexdigest()[:16]


def folder_dataset(config: dict):
    """The ``folder`` source: ``data.dir`` (a folder prepared from a spec), or ``data.path`` (a
    YAML spec, or a label CSV) with ``data.image_root`` (default: that file's folder), verified,
    split and resized to ``data.size`` into the cache folder on first use."""
    from ..prepare import PrepParams, load_prepared, prepare
    from ..sources import DEFAULT_SPLIT_SEED, cache_dir, log_for, registered_descriptor

    data = config.get("data") or {}
    if data.get("dir"):
        dataset = load_prepared(Path(data["dir"]).expanduser(), fold=data.get("fold"))
        registered = registered_descriptor(dataset.descriptor.name)
        if registered is not None and registered.name != "folder":
            raise ValueError(f"{data['dir']} was prepared as dataset {dataset.descriptor.name!r}; pass --dataset "
                             f"{dataset.descriptor.name}")
        return dataset
    if not data.get("path"):
        raise ValueError("data.source folder needs data.path (the YAML spec or the label CSV) and data.image_root "
                         "(the images), or data.dir (a folder prepared with `derma prep --spec`)")
    path = Path(data["path"]).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: data.path must be the dataset's YAML spec or its label CSV")
    root = Path(data.get("image_root") or path.parent).expanduser()
    if path.suffix.lower() in (".yaml", ".yml"):
        spec = load_spec(path)
    else:
        spec = csv_spec(path, root)
    descriptor = descriptor_from_spec(spec, root)
    size = int(data.get("size", 64))
    out = cache_dir(config) / "folder" / f"{path.stem}-{spec_key(spec, root)}-{size}px"
    params = PrepParams(size=size, seed=DEFAULT_SPLIT_SEED, resize="squash")
    prepare(root, out, params, dataset=descriptor, name=spec.name, progress=not config.get("quiet"),
            log=log_for(config))
    return load_prepared(out, fold=data.get("fold"))


def _labels_from_spec(options: Mapping[str, str]) -> LabelSet:
    raise ValueError("the folder dataset's labels come from its YAML spec (`derma prep --spec FILE`) or, "
                     "without one, from its label CSV")


#: The ``folder`` source as a registered dataset (its facts come from each spec).
DESCRIPTOR = DatasetDescriptor(
    name="folder",
    title="your own images: a CSV and an image folder, declared in a YAML spec",
    labels=_labels_from_spec,
    grouping=None,
    layout="a label CSV (image, label, optionally group, split and metadata columns) and an image folder",
    access="your own data: declare it in a YAML spec and run `derma prep --spec SPEC.yaml --raw DIR --out PREPARED` "
           "(see docs/data.md), or run with -o data.source=folder -o data.path=SPEC.yaml|labels.csv",
    loader=folder_dataset,
)
