"""The study file: what it may say, and its expansion into cells (see docs/study.md).

A study file is read, checked and expanded before any work starts: every key of every cell is
validated against its backend's config schema, with errors naming the file and the place in it
(``configs/studies/x.yaml: axes.backend[1].overrides: unknown key 'train.epoch'; ...``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, flatten, load_yaml, set_dotted

#: Study and cell names: what MLflow run names, tags and file names take without quoting.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")

TOP_KEYS = ("study", "title", "description", "experiment", "base", "axes", "cells", "baseline", "report")
BACKEND_KEYS = ("plugin", "name", "config", "overrides", "axes")
DATASET_KEYS = ("name", "source", "dir", "path", "image_root", "eval", "overrides")
CELL_KEYS = ("name", "plugin", "config", "overrides", "dataset", "seed")
REPORT_KEYS = ("out", "metric", "split", "bootstrap", "title")
#: Dataset entry keys that are config keys (``dir`` -> ``data.dir``); the paths among them are
#: machine settings: ``${VAR}`` and ``~`` are expanded, ``--data-dir NAME=DIR`` replaces ``dir``.
#: ``eval: {NAME: DIR}`` becomes ``evaluation.datasets`` (cross-dataset evaluation: the run is
#: also evaluated on each prepared folder), its folders expanded and replaced the same way.
DATASET_CONFIG = {"source": "data.source", "dir": "data.dir", "path": "data.path", "image_root": "data.image_root"}


class StudyError(ValueError):
    """A study file (or a command-line option about it) is invalid; the message is one line
    naming the file, the place in it and what to do."""


@dataclass(frozen=True)
class ReportSpec:
    out: str | None = None
    metric: str = "macro_f1"
    split: str = "test"
    bootstrap: int = 1000
    title: str | None = None


@dataclass
class Cell:
    """One run of a study: a backend, a dataset and config values, named."""

    name: str
    plugin: str
    #: the backend's label in the study (its ``name:``, default the plugin name)
    backend: str
    #: the dataset's name in the study (its ``name:``, default its source), or ``-`` when the
    #: study has no dataset axis (the config's own ``data.source``)
    dataset: str
    seed: int | None
    #: where the cell comes from in the file (``axes``, ``cells[2]``, ``baseline``)
    origin: str
    #: what the cell name is made of without the seed: the cells of one group differ by seed only
    group: str
    #: the backend's YAML layer (``config:``), applied first
    config_file: Path | None = None
    #: ``(where in the file, {dotted key: value})`` in the order they apply
    layers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def user_config(self) -> dict:
        """The study's layers merged into one nested config (the backend's YAML layer excluded)."""
        out: dict = {}
        for _, values in self.layers:
            for key, value in values.items():
                set_dotted(out, key, copy.deepcopy(value))
        return out


@dataclass
class Study:
    name: str
    path: Path
    text: str
    experiment: str
    cells: list[Cell]
    baseline: str | None
    report: ReportSpec
    title: str | None = None
    description: str = ""

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)


# -- small checks ---------------------------------------------------------------------------
def _mapping(value: Any, where: str, allowed: tuple[str, ...] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
    if allowed is not None:
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise StudyError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    return value


def _list(value: Any, where: str) -> list:
    if isinstance(value, list):
        if not value:
            raise StudyError(f"{where} is an empty list; give at least one value or drop the key")
        return value
    return [value]


def _name(value: Any, where: str) -> str:
    text = str(value)
    if not NAME_RE.match(text):
        raise StudyError(f"{where}: name {text!r} must start with a letter or digit and hold only letters, digits "
                         "and . _ - = +")
    return text


def _dotted(values: Any, where: str) -> dict[str, Any]:
    """A mapping of config keys, nested or dotted (``train: {epochs: 2}`` or ``train.epochs: 2``),
    as ``{dotted key: value}``."""
    return flatten(_mapping(values, where)) if values else {}


def expand_path(value: Any, where: str) -> str:
    """``~`` and ``${VAR}`` expanded; a variable that is not set is an error naming it."""
    text = os.path.expanduser(os.path.expandvars(str(value)))
    left = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)
    if left:
        raise StudyError(f"{where}: environment variable {left.group(1)} is not set (in {value!r}); set it, or "
                         "give the folder with --data-dir NAME=DIR")
    return text


def value_label(value: Any) -> str:
    """A config value as it appears in a cell name."""
    if isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ""), sort_keys=True)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n, the index of a SLURM array task or a Kubernetes indexed job) ->
    ``(i, n)``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise StudyError(f"--shard {text!r} must be i/n with 0 <= i < n, e.g. 0/4 (SLURM: "
                         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(m.group(1)), int(m.group(2))


def parse_data_dirs(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--data-dir NAME=DIR`` options -> ``{NAME: DIR}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = str(item).partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise StudyError(f"--data-dir {item!r} must be NAME=DIR, NAME a dataset of the study")
        out[name.strip()] = folder.strip()
    return out


# -- schemas ----------------------------------------------------------------------------------
class _Schemas:
    """Each backend's defaults and schema, loaded once."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[dict, Any]] = {}

    def get(self, plugin: str, where: str) -> tuple[dict, Any]:
        if plugin not in self._cache:
            from .. import plugins
            from ..tuning.space import plugin_schema

            try:
                self._cache[plugin] = plugin_schema(plugin)
            except plugins.UnknownComponentError as exc:
                raise StudyError(f"{where}: {str(exc).strip(chr(39) + chr(34))}") from None
            except ConfigError as exc:
                raise StudyError(f"{where}: backend {plugin!r}: {exc}") from None
        return self._cache[plugin]

    def applies(self, plugin: str, key: str) -> bool:
        """Whether ``key`` is a config key of ``plugin`` (a key inside a free-form mapping such as
        ``model.kwargs`` counts)."""
        node: Any = self._cache[plugin][0]
        for part in key.split("."):
            if not isinstance(node, dict):
                return False
            if not node:  # a free-form mapping (its default is {})
                return True
            if part not in node:
                return False
            node = node[part]
        return True

    def check(self, plugin: str, values: dict[str, Any], where: str) -> None:
        """Refuse an unknown key or a wrong value, naming ``where``."""
        _, schema = self._cache[plugin]
        for key, value in values.items():
            nested: dict = {}
            set_dotted(nested, key, value)
            try:
                schema.validate(nested, where)
            except ConfigError as exc:
                raise StudyError(str(exc)) from None


# -- loading ------------------------------------------------------------------------------------
@dataclass
class _Backend:
    label: str
    plugin: str
    config_file: Path | None
    overrides: dict[str, Any]
    axes: list[tuple[str, list]]
    where: str
    #: its own seed axis (``axes: {seed: [...]}`` under the backend), else None: the study's
    seeds: list[int] | None = None


@dataclass
class _Dataset:
    name: str
    values: dict[str, Any]
    where: str


class _Loader:
    """Reads one study file; ``where`` strings are places in it (``axes.backend[1]``), and every
    error names the file first."""

    def __init__(self, path: Path, data_dirs: dict[str, str]) -> None:
        self.path, self.f = path, str(path)
        self.data_dirs = data_dirs
        self.schemas = _Schemas()
        #: the places of dataset entries (their layer names), whose keys are checked per backend
        self.dataset_places: set[str] = set()
        #: the names of the datasets cells run on, and of those they are also evaluated on (``eval:``)
        self.dataset_names: set[str] = set()
        self.eval_names: set[str] = set()

    def at(self, where: str) -> str:
        return f"{self.f}: {where}"

    def config_file(self, value: Any, where: str, plugin: str) -> Path:
        from .. import plugins
        from ..config import resolve_config

        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute():
            path = self.path.parent / path
        if not path.is_file():
            raise StudyError(f"{self.at(where)}: config file {path} does not exist (a relative path is read from "
                             f"the study file's folder, {self.path.parent})")
        try:  # its own errors name it
            resolve_config(plugin, path, plugin_config=plugins.get_classifier(plugin).options.get("config"))
        except ConfigError as exc:
            raise StudyError(f"{self.at(where)}: {exc}") from None
        return path

    def backend(self, entry: Any, where: str) -> _Backend:
        if isinstance(entry, str):
            entry = {"plugin": entry}
        entry = _mapping(entry, self.at(where), BACKEND_KEYS)
        if "plugin" not in entry:
            raise StudyError(f"{self.at(where)}: give the backend as `plugin: NAME` (see `derma plugins`)")
        plugin = str(entry["plugin"])
        self.schemas.get(plugin, self.at(where))
        label = _name(entry.get("name", plugin), self.at(where))
        config_file = self.config_file(entry["config"], f"{where}.config", plugin) if entry.get("config") else None
        overrides = _dotted(entry.get("overrides"), self.at(f"{where}.overrides"))
        self.schemas.check(plugin, overrides, self.at(f"{where}.overrides"))
        axes = []
        seeds = None
        for key, values in _mapping(entry.get("axes"), self.at(f"{where}.axes")).items():
            values = _list(values, self.at(f"{where}.axes.{key}"))
            if key == "seed":  # this backend's own seeds, instead of the study's
                seeds = _seeds(values, self.at(f"{where}.axes.seed"))
                continue
            for value in values:
                self.schemas.check(plugin, {str(key): value}, self.at(f"{where}.axes.{key}"))
            axes.append((str(key), values))
        return _Backend(label, plugin, config_file, overrides, axes, where, seeds)

    def dataset(self, entry: Any, where: str) -> _Dataset:
        if isinstance(entry, str):
            entry = {"source": entry}
        entry = _mapping(entry, self.at(where), DATASET_KEYS)
        if "source" not in entry:
            raise StudyError(f"{self.at(where)}: give the dataset as `source: NAME` (see `derma datasets`), with "
                             "`dir:` for a prepared folder")
        name = _name(entry.get("name", entry["source"]), self.at(where))
        self.dataset_names.add(name)
        values: dict[str, Any] = {}
        for key, dotted in DATASET_CONFIG.items():
            if key == "dir" and name in self.data_dirs:
                values[dotted] = expand_path(self.data_dirs[name], f"--data-dir {name}")
            elif entry.get(key) is not None:
                values[dotted] = str(entry[key]) if key == "source" else expand_path(entry[key], self.at(f"{where}.{key}"))
        if entry.get("eval"):
            evals = {}
            for other, folder in _mapping(entry["eval"], self.at(f"{where}.eval")).items():
                other = _name(other, self.at(f"{where}.eval"))
                self.eval_names.add(other)
                evals[other] = expand_path(self.data_dirs.get(other, folder),
                                           f"--data-dir {other}" if other in self.data_dirs else self.at(f"{where}.eval.{other}"))
            values["evaluation.datasets"] = evals
        values.update(_dotted(entry.get("overrides"), self.at(f"{where}.overrides")))
        self.dataset_places.add(where)
        return _Dataset(name, values, where)

    def extra_cell(self, entry: dict, where: str, base: dict, by_name: dict[str, _Dataset],
                   datasets: list[_Dataset], seeds: list) -> Cell:
        plugin = str(entry["plugin"])
        if "name" not in entry:
            raise StudyError(f"{self.at(where)}: give the cell a `name:`")
        label = _name(entry["name"], self.at(where))
        config_file = self.config_file(entry["config"], f"{where}.config", plugin) if entry.get("config") else None
        overrides = _dotted(entry.get("overrides"), self.at(f"{where}.overrides"))
        self.schemas.check(plugin, overrides, self.at(f"{where}.overrides"))
        dataset = entry.get("dataset")
        if dataset is None:
            d = datasets[0] if datasets else None
        elif isinstance(dataset, str) and dataset in by_name:
            d = by_name[dataset]
        elif isinstance(dataset, str) and by_name:
            raise StudyError(f"{self.at(where)}.dataset: no dataset named {dataset!r} in axes.dataset "
                             f"({', '.join(by_name)}); or give a mapping with `source:`")
        else:
            d = self.dataset(dataset, f"{where}.dataset")
        seed = entry.get("seed", seeds[0] if seeds else None)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise StudyError(f"{self.at(where)}.seed must be a whole number, got {seed!r}")
        layers: list[tuple[str, dict]] = [("base", {k: v for k, v in base.items() if self.schemas.applies(plugin, k)})]
        if d is not None:
            layers.append((d.where, d.values))
        layers.append((f"{where}.overrides", overrides))
        if seed is not None:
            layers.append((f"{where}.seed", {"seed": seed}))
        return Cell(label, plugin, label, d.name if d else "-", seed, where, label, config_file, layers)


def shipped_studies() -> list[str]:
    """The names of the studies that ship in ``configs/studies/`` (in a wheel too)."""
    from ..config import configs_dir

    return sorted(p.stem for p in (configs_dir() / "studies").glob("*.yaml"))


def find_study_file(text: str | os.PathLike) -> Path:
    """A study file path, or the name of a shipped study (``smoke`` -> ``configs/studies/smoke.yaml``)."""
    from ..config import configs_dir

    path = Path(text)
    if path.exists():
        return path
    shipped = configs_dir() / "studies" / f"{path.name}.yaml"
    if not path.suffix and len(path.parts) == 1 and shipped.is_file():
        return shipped
    raise StudyError(f"study file {path} does not exist (shipped studies, usable by name: "
                     f"{', '.join(shipped_studies()) or 'none'})")


def load_study(path: str | os.PathLike, data_dirs: dict[str, str] | None = None,
               overrides: dict[str, Any] | None = None, experiment: str | None = None) -> Study:
    """Read, check and expand a study file. ``data_dirs`` (``--data-dir NAME=DIR``) give or
    replace datasets' folders; ``overrides`` (``-o KEY=VALUE``) are added to ``base``.
    Raises :class:`StudyError` (one line) for anything wrong, before any work starts."""
    from .. import plugins

    path = find_study_file(path)
    try:
        raw = load_yaml(path)
        text = path.read_text(encoding="utf-8")
    except ConfigError as exc:
        raise StudyError(str(exc).replace("config file", "study file")) from None
    plugins.load_plugins()
    ld = _Loader(path, dict(data_dirs or {}))
    f = ld.f
    raw = _mapping(raw, f, TOP_KEYS)
    if "study" not in raw:
        raise StudyError(f"{f}: give the study a name: `study: NAME` (it names its MLflow parent run)")
    name = _name(raw["study"], ld.at("study"))

    axes = dict(_mapping(raw.get("axes"), ld.at("axes")))
    backends = [ld.backend(e, f"axes.backend[{i}]")
                for i, e in enumerate(_list(axes.pop("backend"), ld.at("axes.backend")))] if "backend" in axes else []
    datasets = [ld.dataset(e, f"axes.dataset[{i}]")
                for i, e in enumerate(_list(axes.pop("dataset"), ld.at("axes.dataset")))] if "dataset" in axes else []
    seeds = _seeds(_list(axes.pop("seed"), ld.at("axes.seed")), ld.at("axes.seed")) if "seed" in axes else []
    global_axes = [(str(k), _list(v, ld.at(f"axes.{k}"))) for k, v in axes.items()]
    base = _dotted(raw.get("base"), ld.at("base"))
    base.update(overrides or {})

    extra = [(f"cells[{i}]", _mapping(e, ld.at(f"cells[{i}]"), CELL_KEYS))
             for i, e in enumerate(_list(raw["cells"], ld.at("cells")))] if raw.get("cells") else []
    baseline_raw = raw.get("baseline")
    if isinstance(baseline_raw, dict):
        extra.append(("baseline", dict({"name": "baseline"}, **_mapping(baseline_raw, ld.at("baseline"), CELL_KEYS))))
    if not backends and not extra:
        raise StudyError(f"{f}: no cells: give axes.backend (a list of backends) or cells")
    names = [d.name for d in datasets]
    if len(set(names)) < len(names):
        raise StudyError(f"{ld.at('axes.dataset')}: two datasets share a name; give each a `name:`")

    _check_study_wide(ld, backends, extra, base, global_axes)
    cells = _grid_cells(ld, backends, datasets, seeds, global_axes, base)
    by_name = {d.name: d for d in datasets}
    for where, entry in extra:
        cells.append(ld.extra_cell(entry, where, base, by_name, datasets, seeds))
    _check_cells(ld, cells)
    return Study(name=name, path=path, text=text, experiment=str(experiment or raw.get("experiment") or name),
                 cells=cells, baseline=_baseline(baseline_raw, cells, f), report=_report(raw.get("report"), f),
                 title=raw.get("title"), description=str(raw.get("description") or ""))


def _check_study_wide(ld: "_Loader", backends: list, extra: list[tuple[str, dict]], base: dict,
                      global_axes: list[tuple[str, list]]) -> None:
    """Base keys and global axes apply to the backends that have the key; a key none has is an
    error, and so is a value one of them refuses."""
    all_plugins = [b.plugin for b in backends]
    for where, entry in extra:
        if "plugin" not in entry:
            raise StudyError(f"{ld.at(where)}: give the backend: `plugin: NAME`")
        ld.schemas.get(str(entry["plugin"]), ld.at(where))
        all_plugins.append(str(entry["plugin"]))
    all_plugins = list(dict.fromkeys(all_plugins))
    study_wide = [(f"base.{k}", k, [v]) for k, v in base.items()] + [(f"axes.{k}", k, v) for k, v in global_axes]
    for where, key, values in study_wide:
        users = [p for p in all_plugins if ld.schemas.applies(p, key)]
        if not users:
            raise StudyError(f"{ld.at(where)}: no backend of this study has the config key {key!r} "
                             f"(backends: {', '.join(all_plugins)})")
        for p in users:
            for v in values:
                ld.schemas.check(p, {key: v}, ld.at(where))


def _grid_cells(ld: "_Loader", backends: list, datasets: list, seeds: list[int],
                global_axes: list[tuple[str, list]], base: dict) -> list[Cell]:
    """The grid's cells: every backend x dataset x combination of its axes x seed."""
    cells: list[Cell] = []
    multi_data = len(datasets) > 1
    for b in backends:
        applicable = [(k, v) for k, v in global_axes if ld.schemas.applies(b.plugin, k)] + b.axes
        keys = [k for k, _ in applicable]
        base_b = {k: v for k, v in base.items() if ld.schemas.applies(b.plugin, k)}
        for d in datasets or [None]:
            for combo in itertools.product(*[values for _, values in applicable]):
                chosen = dict(zip(keys, combo))
                parts = [b.label] + ([d.name] if multi_data and d is not None else [])
                parts += [f"{_short(k, keys)}={value_label(v)}" for (k, values), v in zip(applicable, combo)
                          if len(values) > 1]
                group = "-".join(parts)
                b_seeds = seeds if b.seeds is None else b.seeds
                for s in b_seeds or [None]:
                    layers: list[tuple[str, dict]] = [("base", base_b)]
                    if d is not None:
                        layers.append((d.where, d.values))
                    layers += [(f"{b.where}.overrides", b.overrides), ("axes", chosen)]
                    if s is not None:
                        layers.append((f"{b.where}.axes.seed" if b.seeds is not None else "axes.seed", {"seed": s}))
                    cells.append(Cell(group + (f"-seed{s}" if len(b_seeds) > 1 else ""), b.plugin, b.label,
                                      d.name if d else "-", s, b.where, group, b.config_file, layers))
    return cells


def _check_cells(ld: "_Loader", cells: list[Cell]) -> None:
    """Every --data-dir names a dataset of the study, a dataset's overrides suit every backend it
    is run with, and no two cells share a name."""
    f = ld.f
    known = ld.dataset_names | ld.eval_names
    unknown_dirs = [n for n in ld.data_dirs if n not in known]
    if unknown_dirs:
        raise StudyError(f"--data-dir {unknown_dirs[0]}=...: {f} has no dataset named {unknown_dirs[0]!r} "
                         f"(its datasets: {', '.join(sorted(known)) or 'none'})")
    checked: set[tuple[str, str]] = set()
    for c in cells:  # a dataset's overrides must suit every backend it is run with
        for where, values in c.layers:
            if where in ld.dataset_places and (where, c.plugin) not in checked:
                ld.schemas.check(c.plugin, values, ld.at(where))
                checked.add((where, c.plugin))
    seen: dict[str, str] = {}
    for c in cells:
        if c.name in seen:
            raise StudyError(f"{f}: two cells are named {c.name!r} ({seen[c.name]} and {c.origin}); give the "
                             "backends or cells distinct `name:`s")
        seen[c.name] = c.origin


def _seeds(values: list, where: str) -> list[int]:
    for s in values:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise StudyError(f"{where}: every seed must be a whole number >= 0, got {s!r}")
    return values


def _short(key: str, keys: list[str]) -> str:
    """The last part of a dotted key when no other axis key of the cell ends the same way."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _baseline(raw: Any, cells: list[Cell], f: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        return next(c.name for c in cells if c.origin == "baseline")
    text = str(raw)
    for c in cells:
        if c.name == text:
            return c.name
    for c in cells:
        if c.backend == text:
            return c.name
    raise StudyError(f"{f}: baseline {text!r} is neither a cell nor a backend of the study (cells: "
                     f"{', '.join(c.name for c in cells[:12])}{', ...' if len(cells) > 12 else ''})")


def _report(raw: Any, f: str) -> ReportSpec:
    spec = _mapping(raw, f"{f}: report", REPORT_KEYS)
    bootstrap = spec.get("bootstrap", 1000)
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise StudyError(f"{f}: report.bootstrap must be a whole number >= 0, got {bootstrap!r}")
    split = str(spec.get("split", "test"))
    if split not in ("test", "val"):
        raise StudyError(f"{f}: report.split must be test or val, got {split!r}")
    return ReportSpec(out=spec.get("out"), metric=str(spec.get("metric", "macro_f1")), split=split,
                      bootstrap=bootstrap, title=spec.get("title"))
