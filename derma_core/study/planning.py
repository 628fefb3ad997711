"""From cells to runs: each cell's resolved config, its identity, and what the store already holds.

A cell's **identity** is a hash of three things:

- its config as ``derma run`` resolves it (:func:`derma_core.config.resolve_config`), without the
  machine settings that do not change what is computed (:data:`MACHINE_KEYS`: data folders,
  cache folder, device, quiet, work folder, and every ``tracking.*`` key);
- the code version: derma's version, the source tree's git commit **without** ``-dirty``, and
  the backend plugin's package and version (:func:`code_version`). Uncommitted edits do not make
  a cell new (the ``-dirty`` flag says that the tree differs from the commit, not how): after
  editing code without committing, force the cells with ``--rerun``. Every run still records the
  full ``derma.git_sha`` (with ``-dirty``);
- the data digest of the dataset the config loads (its manifest digest: content, split, size),
  and of each dataset it is also evaluated on (``evaluation.datasets``, whose folders are machine
  paths and count by their digests).

A FINISHED run anywhere in the store whose ``derma.cell_id`` tag holds the identity is the
cell's result; nothing else counts (FAILED and KILLED runs are attempts, shown but rerun).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, dump_config, load_yaml
from ..tuning.study import MACHINE_KEYS
from .spec import Cell, Study, StudyError

#: MLflow tags of study runs.
TAG_STUDY = "derma.study"
TAG_CELL = "derma.study_cell"
TAG_CELL_ID = "derma.cell_id"
TAG_CODE_VERSION = "derma.code_version"
TAG_STUDY_FILE = "derma.study_file"
#: ``derma.kind`` of a study's parent run and of its cells' runs.
KIND_STUDY = "study"
KIND_CELL = "study_cell"


@dataclass
class PlannedCell:
    """A cell with its resolved config, identity and the runs the store holds for it."""

    index: int
    cell: Cell
    config: dict
    code: str = ""
    digest: str | None = None
    identity: str | None = None
    #: why the cell cannot be identified (its data do not load); it fails when run
    error: str | None = None
    #: its FINISHED run (the newest), if any
    done: Any = None
    #: its newest run of any status (the last attempt)
    last: Any = None
    #: a RUNNING run whose process is alive on this host
    running: Any = None
    #: what this process did with it: FINISHED, FAILED, or None (not run here)
    outcome: str | None = None
    seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cell.name

    def status(self) -> str:
        """done / running / to run (with the last attempt's state) / error."""
        if self.done is not None:
            return "done"
        if self.running is not None:
            return "running"
        if self.error is not None:
            return "error"
        return "to run"


def identity_config(config: dict) -> dict:
    """``config`` without the machine settings (:data:`MACHINE_KEYS`, ``tracking.*``, and the
    folders of ``evaluation.datasets``, which count by their digests)."""
    from ..config import get_dotted

    out = copy.deepcopy(config)
    out.pop("tracking", None)
    if isinstance(out.get("evaluation"), dict):  # their folders are machine paths; their digests count
        out["evaluation"].pop("datasets", None)
    for key in MACHINE_KEYS:
        parts = key.split(".")
        node = get_dotted(out, ".".join(parts[:-1])) if len(parts) > 1 else out
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def cell_identity(config: dict, code: str, digest: str) -> str:
    """The hash that says whether two cells compute the same thing (see the module docstring)."""
    payload = json.dumps({"config": identity_config(config), "code": code, "data": digest}, sort_keys=True,
                         default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


_GIT: list[str | None] = []


def code_version(plugin: str) -> str:
    """``derma VERSION; git SHA; PLUGIN-PACKAGE VERSION`` (the commit without ``-dirty``)."""
    from .. import __version__, plugins, runner, tracking

    if not _GIT:
        sha = tracking.git_sha()
        _GIT.append(sha[: -len("-dirty")] if sha and sha.endswith("-dirty") else sha)
    reg = plugins.get_classifier(plugin)
    return f"derma {__version__}; git {_GIT[0] or '-'}; {reg.plugin} {runner._plugin_version(reg) or '-'}"


def resolve_cell(study: Study, cell: Cell, *, uri: str, device: str | None, quiet: bool) -> dict:
    """The config ``derma run`` would run the cell with: defaults < the backend's file < the
    cell's ``config:`` file < the study's layers, plus where it is tracked."""
    from .. import plugins
    from ..config import deep_merge, resolve_config

    user = cell.user_config()
    if cell.config_file is not None:
        layer = {k: v for k, v in load_yaml(cell.config_file).items() if k not in ("_choices", "_types", "_ranges")}
        user = deep_merge(layer, user)
    user["tracking"] = dict(user.get("tracking") or {}, experiment=study.experiment, run_name=cell.name, uri=uri)
    user["quiet"] = bool(quiet)
    if device:
        user["device"] = device
    reg = plugins.get_classifier(cell.plugin)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{cell.name}.yaml"
        path.write_text(dump_config(user), encoding="utf-8")
        try:
            return resolve_config(cell.plugin, path, plugin_config=reg.options.get("config"))
        except ConfigError as exc:
            raise StudyError(str(exc).replace(str(path), f"{study.path} (cell {cell.name})")) from None


class DigestCache:
    """Data digests, each dataset loaded once: the run's own dataset (one load per distinct
    ``data`` section) and the datasets it is also evaluated on (``evaluation.datasets``, one load
    per prepared folder)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str | None, str | None]] = {}

    def get(self, config: dict) -> tuple[str | None, str | None]:
        """``(digest, None)`` or ``(None, one-line error)``. With evaluation datasets the digest
        is the run's dataset's and theirs, by name (``DIGEST eval:pad_ufes_20=DIGEST,...``)."""
        from ..config import get_dotted

        home, error = self._once(("data", json.dumps(config.get("data") or {}, sort_keys=True, default=str)),
                                 lambda: self._home(config), f"dataset {get_dotted(config, 'data.source')!r}")
        if error is not None:
            return None, error
        extra = get_dotted(config, "evaluation.datasets")
        if not extra:
            return home, None
        from ..evaluation.crossdataset import parse_datasets

        try:
            folders = parse_datasets(extra)
        except ValueError as exc:
            return None, str(exc).splitlines()[0]
        parts = []
        for key, folder in sorted(folders.items()):
            digest, error = self._once(("eval", str(Path(folder).expanduser().resolve())),
                                       lambda f=folder: _prepared_digest(f), f"evaluation dataset {key}={folder}")
            if error is not None:
                return None, error
            parts.append(f"{key}={digest}")
        return f"{home} eval:{','.join(parts)}", None

    def _once(self, key: tuple[str, str], load, what: str) -> tuple[str | None, str | None]:
        name = "|".join(key)
        if name not in self._seen:
            try:
                self._seen[name] = (load(), None)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                text = str(exc).strip().strip("'\"")
                message = f"{type(exc).__name__}: {text}".splitlines()[0] if text else type(exc).__name__
                self._seen[name] = (None, f"cannot load {what}: {message}")
        return self._seen[name]

    @staticmethod
    def _home(config: dict) -> str:
        from .. import runner

        return runner.load_dataset(dict(copy.deepcopy(config), quiet=True)).digest


def _prepared_digest(folder: str) -> str:
    from ..data.prepare import load_prepared

    return load_prepared(Path(folder).expanduser()).digest


def plan(study: Study, *, uri: str, device: str | None = None, quiet: bool = True,
         digests: DigestCache | None = None) -> list[PlannedCell]:
    """Every cell with its config and identity (datasets are loaded once each for their digests)."""
    digests = digests or DigestCache()
    out = []
    for i, cell in enumerate(study.cells):
        config = resolve_cell(study, cell, uri=uri, device=device, quiet=quiet)
        if cell.dataset == "-":  # no dataset axis: the dataset is the config's
            cell.dataset = str(config["data"].get("source"))
        pc = PlannedCell(i, cell, config, code=code_version(cell.plugin))
        pc.digest, pc.error = digests.get(config)
        if pc.digest is not None:
            pc.identity = cell_identity(config, pc.code, pc.digest)
        out.append(pc)
    return out


def lookup(planned: list[PlannedCell], uri: str, end_stale: bool = True) -> None:
    """Fill in each cell's runs from the store: its FINISHED run, its last attempt, and a run of
    it still RUNNING in a live process on this host. A RUNNING run whose process here is gone is
    ended KILLED (as ``derma runs --end-stale`` would; not with ``end_stale=False``, for
    ``--dry-run``), and the cell counts as missing either way."""
    from .. import lifetime, tracking

    ids = {pc.identity for pc in planned if pc.identity}
    flt = (f"tags.\"{TAG_CELL_ID}\" = '{next(iter(ids))}'" if len(ids) == 1
           else f'tags."{TAG_CELL_ID}" IS NOT NULL')
    by_id: dict[str, list] = {}
    for run in tracking.find_runs(flt, uri) if ids else []:
        by_id.setdefault(run.data.tags[TAG_CELL_ID], []).append(run)  # newest first
    for pc in planned:
        found = by_id.get(pc.identity or "", [])
        for i, run in enumerate(found):
            if run.info.status == "RUNNING" and lifetime.liveness(run) == lifetime.GONE:
                if not end_stale:
                    continue
                tags = run.data.tags
                tracking.end_run(run.info.run_id, "KILLED",
                                 f"killed: process {tags.get(tracking.TAG_PID)} on {tags.get(tracking.TAG_HOST)} ended "
                                 "without ending the run (found by `derma study`); the study runs the cell again", uri)
                found[i] = tracking.get_run(run.info.run_id, uri)
        pc.last = found[0] if found else None
        pc.done = next((r for r in found if r.info.status == "FINISHED"), None)
        pc.running = next((r for r in found if r.info.status == "RUNNING" and lifetime.liveness(r) == lifetime.ALIVE), None)


def headline(run_or_metrics: Any, split: str, metric: str) -> str:
    """``test_macro_f1 0.612 [0.551, 0.668]`` from a run or a metrics dict; ``""`` when absent."""
    metrics = run_or_metrics if isinstance(run_or_metrics, dict) else run_or_metrics.data.metrics
    name = f"{split}_{metric}"
    value = metrics.get(name)
    if value is None:
        return ""
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{name} {value:.3f}{interval}"
