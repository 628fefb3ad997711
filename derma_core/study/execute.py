"""Running a study: its one parent MLflow run, each missing cell as a child run, and the cells table.

Shards: ``--shard i/n`` takes the cells whose position in the study (0-based) is ``i`` modulo
``n``, and runs those that are missing. The partition depends only on the study file, never on
what is done, so n processes started together (a SLURM job array, a Kubernetes indexed job)
run every cell exactly once between them, however their starts and finishes interleave.

The parent run: every process of a study looks for the study's parent run (tags ``derma.kind =
study`` and ``derma.study = NAME`` in the study's experiment) and creates it when there is none.
Two processes starting together may both create one: all of them then agree on the oldest
(start time, then run id); a process that made another one deletes its own, and at its end
re-checks and moves its cells under the agreed parent, so the store ends with one parent run.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .planning import (KIND_CELL, KIND_STUDY, TAG_CELL, TAG_CELL_ID, TAG_CODE_VERSION, TAG_STUDY, TAG_STUDY_FILE,
                   PlannedCell, headline)
from .spec import Study


def select(planned: list[PlannedCell], shard: tuple[int, int] | None = None, only: tuple[str, ...] = ()) -> list[PlannedCell]:
    """The cells this process is responsible for: its shard's (position modulo n), of those the
    ones matching any ``--only`` glob."""
    out = planned
    if shard is not None:
        i, n = shard
        out = [pc for pc in out if pc.index % n == i]
    if only:
        out = [pc for pc in out if any(fnmatch.fnmatchcase(pc.name, pattern) for pattern in only)]
    return out


def to_run(selected: list[PlannedCell], rerun: bool) -> list[PlannedCell]:
    """Of the selected cells, those to run now: the missing ones (all with ``rerun``), never one
    that a live process on this host is running."""
    return [pc for pc in selected if pc.running is None and (rerun or pc.done is None)]


# -- the parent run ---------------------------------------------------------------------------------
def find_parents(study: Study, uri: str) -> list:
    """The study's parent runs in the store, the agreed one (the oldest) first; usually one."""
    from .. import tracking

    found = tracking.find_runs(f"tags.\"{tracking.TAG_KIND}\" = '{KIND_STUDY}' and tags.\"{TAG_STUDY}\" = "
                               f"'{study.name}'", uri, experiment=study.experiment)
    return sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def parent_tags(study: Study) -> dict[str, Any]:
    from .. import __version__, tracking

    return {tracking.TAG_KIND: KIND_STUDY, TAG_STUDY: study.name, TAG_STUDY_FILE: str(study.path),
            tracking.TAG_VERSION: __version__, tracking.TAG_GIT_SHA: tracking.git_sha()}


def find_or_create_parent(study: Study, uri: str) -> tuple[str, bool]:
    """``(run id, created)`` of the study's parent run (see the module docstring)."""
    from .. import tracking

    found = find_parents(study, uri)
    if found:
        return found[0].info.run_id, False
    tracking.ensure_experiment(study.experiment, tracking.configure(uri))
    with tracking.start_run(study.experiment, run_name=study.name, tags=parent_tags(study), uri=uri) as parent:
        created = parent.run_id
        parent.log_params({"study": study.name, "cells": len(study.cells), "baseline": study.baseline or "-",
                           "report_metric": study.report.metric})
        parent.log_text(study.text, "study.yaml")
        if study.description:
            tracking.Tracker(created, uri).set_tags({"mlflow.note.content": study.description})
    winner = find_parents(study, uri)[0].info.run_id
    if winner != created:
        tracking.delete_run(created, uri)
    return winner, winner == created


def settle_parent(study: Study, parent_id: str, uri: str) -> str:
    """The study's one parent run after this process's work: when another process's parent is
    the agreed one, this process's cells move under it. Returns the agreed parent's id."""
    from .. import tracking

    winner = find_parents(study, uri)[0].info.run_id
    if winner != parent_id:
        for run in tracking.find_runs(f"tags.\"{TAG_STUDY}\" = '{study.name}'", uri, experiment=study.experiment):
            if tracking.parent_run_id(run) == parent_id:
                tracking.set_parent_run(run.info.run_id, winner, uri)
    return winner


# -- one cell -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str          # FINISHED or FAILED
    seconds: float
    run_id: str | None
    metrics: dict
    error: str | None = None


def cell_tags(study: Study, pc: PlannedCell) -> dict[str, Any]:
    from .. import tracking

    return {tracking.TAG_KIND: KIND_CELL, TAG_STUDY: study.name, TAG_CELL: pc.name, TAG_CELL_ID: pc.identity,
            TAG_CODE_VERSION: pc.code, "derma.study_backend": pc.cell.backend, "derma.study_dataset": pc.cell.dataset,
            "derma.study_group": pc.cell.group}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__).splitlines()[0]


def run_cell(study: Study, pc: PlannedCell, parent_id: str | None, uri: str) -> Outcome:
    """Run one cell as a child of ``parent_id``; a failure is recorded (a FAILED run with the
    error) and returned, never raised. Ctrl-C and SIGTERM are raised (the run ends KILLED)."""
    from .. import runner

    started = time.monotonic()
    run_id: str | None = None

    def on_started(rid: str) -> None:
        nonlocal run_id
        run_id = rid

    tags = cell_tags(study, pc)
    try:
        if pc.error is not None:  # its data did not load: record why, as a FAILED run of the cell
            raise RuntimeError(pc.error)
        result = runner.run(pc.config, parent_run_id=parent_id, extra_tags=tags, on_started=on_started)
    except KeyboardInterrupt as exc:
        exc.run_id = run_id  # type: ignore[attr-defined]
        raise
    except Exception as exc:
        message = pc.error if pc.error is not None else _one_line(exc)
        if run_id is None and not _distributed_rank():
            run_id = _record_failure(study, pc, parent_id, uri, tags, exc)
        return Outcome("FAILED", time.monotonic() - started, run_id, {}, message)
    return Outcome("FINISHED", time.monotonic() - started, result.run_id, result.metrics)


def _distributed_rank() -> int:
    from .. import runner

    return runner._distributed()[0]


def _record_failure(study: Study, pc: PlannedCell, parent_id: str | None, uri: str, tags: dict,
                    exc: BaseException) -> str | None:
    """A FAILED run for a cell that failed before its run started (its data, its plugin), with
    the error as every failed run has it (``derma.error``, ``error.txt``)."""
    from .. import tracking

    tags = {k: v for k, v in tags.items() if v is not None}
    rid = None
    try:
        with tracking.start_run(study.experiment, run_name=pc.name, uri=uri, parent_run_id=parent_id,
                                tags={tracking.TAG_PLUGIN: pc.cell.plugin, **tags}) as tracker:
            rid = tracker.run_id
            raise exc
    except Exception:  # the FAILED run is what was wanted (None if the store refused even that)
        return rid


# -- lines ---------------------------------------------------------------------------------------------
def progress_line(i: int, n: int, pc: PlannedCell, outcome: Outcome, split: str, metric: str, width: int) -> str:
    """``[2/7] resnet18-seed1   FINISHED   41.2 s  test_macro_f1 0.612 [0.551, 0.668]  run 1a2b3c4d``"""
    what = headline(outcome.metrics, split, metric) if outcome.status == "FINISHED" else (outcome.error or "")
    run = f"  run {outcome.run_id}" if outcome.run_id else ""
    return (f"[{i}/{n}] {pc.name:<{width}}  {outcome.status:<8} {outcome.seconds:7.1f} s  {what}{run}").rstrip()


def cells_frame(planned: list[PlannedCell], split: str, metric: str) -> pd.DataFrame:
    """One row per cell: where it stands in the store and what it scored."""
    rows = []
    for pc in planned:
        run = pc.done or pc.last
        rows.append({
            "cell": pc.name, "backend": pc.cell.backend, "plugin": pc.cell.plugin, "dataset": pc.cell.dataset,
            "seed": pc.config.get("seed", ""),
            "status": pc.status() if pc.done is not None or pc.running is not None or pc.last is None
            else f"to run (last {pc.last.info.status})",
            "run_id": run.info.run_id if run is not None else "",
            "seconds": round(pc.seconds, 1) if pc.seconds is not None else (
                round(((run.info.end_time or 0) - (run.info.start_time or 0)) / 1000, 1)
                if run is not None and run.info.end_time else ""),
            "headline": headline(pc.done, split, metric) if pc.done is not None else "",
            "error": (pc.error or (pc.last.data.tags.get("derma.error", "") if pc.last is not None and pc.done is None
                                   else "")),
            "identity": pc.identity or "",
        })
    return pd.DataFrame(rows)


def dry_run_lines(study: Study, planned: list[PlannedCell], mine: list[PlannedCell], rerun: bool) -> list[str]:
    """The cells, and which are done, as ``--dry-run`` prints them."""
    chosen = {pc.index for pc in to_run(mine, rerun)}
    mine_ids = {pc.index for pc in mine}
    width = max([len(pc.name) for pc in planned] + [4])
    lines = [f"{'#':>3}  {'cell':<{width}}  {'backend':<14} {'dataset':<12} {'seed':>5}  status"]
    for pc in planned:
        if pc.index in chosen:
            status = "will run" + (" again" if pc.done is not None else "")
            if pc.done is None and pc.last is not None and pc.last.info.status == "RUNNING":
                status += (f" (its run {pc.last.info.run_id[:8]} was left RUNNING by a process that is gone; "
                           "the study ends it KILLED)")
            elif pc.done is None and pc.last is not None:
                status += f" (last attempt {pc.last.info.status}: {pc.last.data.tags.get('derma.error', '-')})"
            if pc.error:
                status += f" - will fail: {pc.error}"
        elif pc.done is not None:
            status = f"done (run {pc.done.info.run_id[:8]}{', ' + h if (h := headline(pc.done, study.report.split, study.report.metric)) else ''})"
        elif pc.running is not None:
            status = f"running now (run {pc.running.info.run_id[:8]}, pid {pc.running.data.tags.get('derma.pid', '?')})"
        elif pc.index not in mine_ids:
            status = "missing (another shard's)" if pc.done is None else "done"
        else:
            status = "missing"
        seed = str(pc.config.get("seed", "-"))
        lines.append(f"{pc.index + 1:>3}  {pc.name:<{width}}  {pc.cell.backend:<14} {pc.cell.dataset:<12} {seed:>5}  "
                     f"{status}")
    return lines


