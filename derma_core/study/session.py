"""One ``derma study`` process: load and plan the study, choose its cells (a shard, ``--only``,
what is missing), run them under the study's parent MLflow run and write the report. The
command's options are in :mod:`derma_core.cli.study`."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from ..cli import fail_usage
from .spec import StudyError, load_study, parse_data_dirs, parse_shard


def run_study(study_file, dry_run, rerun, only, shard, data_dirs, overrides, experiment, tracking_uri, device,
              report_out, no_report, report_only, quiet, verbose) -> None:
    """What ``derma study`` does with its options (:mod:`derma_core.cli.study` lists them): plan
    the cells, then a dry run, the report alone, or the missing cells under the parent run."""
    from .. import plugins, runner
    from . import execute, planning

    # one line per cell is the output; MLflow would add URL lines and artifact progress bars
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if sum([dry_run, report_only]) > 1:
        fail_usage("--dry-run and --report-only do not go together")
    study, shard_of = _load(study_file, shard, data_dirs, overrides, experiment)
    uri = _open_store(tracking_uri, dry_run)
    rank, world = runner._distributed()
    say = (lambda text: None) if rank != 0 else click.echo
    try:
        planned = planning.plan(study, uri=uri, device=device, quiet=not verbose)
    except (StudyError, plugins.UnknownComponentError) as exc:
        fail_usage(str(exc).strip("'\""))
    if rank == 0:
        planning.lookup(planned, uri, end_stale=not dry_run)
    mine = execute.select(planned, shard_of, tuple(only))
    if only and not mine:
        fail_usage(f"--only {' '.join(only)} matches no cell{' of this shard' if shard_of else ''} (cells: "
              f"{', '.join(pc.name for pc in planned[:10])}{', ...' if len(planned) > 10 else ''})")
    where = f" (shard {shard_of[0]}/{shard_of[1]}: {len(mine)} cells)" if shard_of else ""
    done = sum(pc.done is not None for pc in planned)
    out = Path(report_out or study.report.out or Path("reports") / f"{study.name}.html")

    if dry_run:
        todo = execute.to_run(mine, rerun)
        click.echo(f"study {study.name} ({study.path}): {len(planned)} cells, {done} done, {len(todo)} would run"
                   f"{where}; experiment {study.experiment!r} in {_redact(uri)}")
        for line in execute.dry_run_lines(study, planned, mine, rerun):
            click.echo(line)
        return
    if report_only:
        if rank == 0:
            _report(study, planned, uri, out, parent=_existing_parent(study, uri), say=click.echo)
        return

    todo, parent_id = _choose_cells(study, planned, mine, rerun, uri, rank, world, device)
    if not todo:
        running = [pc for pc in mine if pc.running is not None]
        busy = f"; {len(running)} running in another process now" if running else ""
        say(f"study {study.name}: nothing to run{where}: {sum(pc.done is not None for pc in mine)} of {len(mine)} "
            f"cells done{busy} (`--rerun` runs them again). The study: {done} of {len(planned)} cells done.")
        if rank == 0 and not no_report and not out.exists():
            _report(study, planned, uri, out, parent=_existing_parent(study, uri), say=say)
        elif rank == 0 and not no_report:
            say(f"report unchanged: {out} (`--report-only` writes it again)")
        _end_distributed(world)
        return

    say(f"study {study.name}: {len(planned)} cells, {done} done, {len(todo)} to run{where}; parent MLflow run "
        f"{parent_id} (experiment {study.experiment!r})")
    run = _StudyRun(study, planned, todo, uri, parent_id, rank, world, out, rerun, quiet, no_report, say)
    started = time.monotonic()
    outcomes, winner = _run_cells(run)
    _end_distributed(world)
    if rank != 0:
        return
    _conclude(run, outcomes, winner, started)


def _load(study_file, shard, data_dirs, overrides, experiment):
    """The study of ``study_file`` with the command line's data folders, overrides and
    experiment, and the shard (None: all cells)."""
    from ..config import ConfigError, parse_override

    try:
        shard_of = parse_shard(shard) if shard else None
        values = dict(parse_override(text) for text in overrides)
        study = load_study(study_file, parse_data_dirs(data_dirs), values, experiment)
    except (StudyError, ConfigError) as exc:
        fail_usage(str(exc).strip("'\""))
    return study, shard_of


def _open_store(tracking_uri, dry_run: bool) -> str:
    """The MLflow store's URI, configured (a dry run in a folder with no store yet creates none)."""
    from .. import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:  # a dry run of a study in a folder with no store yet creates none
        if not (dry_run and uri == tracking.default_tracking_uri()
                and not (tracking.default_store_dir() / "mlflow.db").exists()):
            tracking.configure(uri)
    except tracking.StoreError as exc:
        fail_usage(str(exc), 1)
    return uri


def _choose_cells(study, planned, mine, rerun: bool, uri: str, rank: int, world: int, device):
    """The cells to run and the study's parent run (found or made by rank 0 when there is work);
    under torchrun every rank gets the cells rank 0 chose."""
    from .. import runner
    from . import execute

    todo = execute.to_run(mine, rerun)
    parent_id = None
    if rank == 0 and todo:
        parent_id, _ = execute.find_or_create_parent(study, uri)
    if world > 1:  # torchrun: every rank runs the cells rank 0 chose, in step (runner.run is collective)
        from ..reproducibility import resolve_device

        runner._init_distributed(resolve_device(device or planned[0].config.get("device", "auto")))
        chosen = runner._broadcast([[pc.index for pc in todo], parent_id] if rank == 0 else None)
        todo, parent_id = [planned[i] for i in chosen[0]], chosen[1]
    return todo, parent_id


@dataclass
class _StudyRun:
    """The cells this process runs: the study, all its planned cells and those to run, the
    store and the parent run, the torchrun rank and world size, the report and what to say."""

    study: Any
    planned: list
    todo: list
    uri: str
    parent_id: str | None
    rank: int
    world: int
    out: Path
    rerun: bool
    quiet: bool
    no_report: bool
    say: Callable[[str], None]


def _run_cells(r: _StudyRun) -> tuple[list, str | None]:
    """Run the cells under the parent run (rank 0 then settles it and writes the report);
    returns the outcomes and the study's parent run (None on other ranks). Ctrl-C says how far
    the study got and exits 130 (143 on SIGTERM)."""
    from .. import tracking
    from ..lifetime import interrupt_exit_code, interrupt_reason
    from . import execute, planning

    study, todo, say = r.study, r.todo, r.say
    width = max(len(pc.name) for pc in todo)
    outcomes: list[execute.Outcome] = []
    current: tuple[int, planning.PlannedCell] | None = None
    winner = None
    try:
        with tracking.start_run(study.experiment, uri=r.uri, resume_run_id=r.parent_id) if r.rank == 0 \
                else _nothing() as parent:
            for i, pc in enumerate(todo, 1):
                if r.world == 1 and i > 1:  # another process may have run it meanwhile (shards never do)
                    planning.lookup([pc], r.uri)
                    if pc.running is not None or (pc.done is not None and not r.rerun):
                        if not r.quiet:
                            say(f"[{i}/{len(todo)}] {pc.name:<{width}}  skipped: "
                                f"{'running in another process' if pc.running is not None else 'done meanwhile'}")
                        continue
                current = (i, pc)
                outcome = execute.run_cell(study, pc, r.parent_id, r.uri)
                pc.outcome, pc.seconds = outcome.status, outcome.seconds
                outcomes.append(outcome)
                if not r.quiet:
                    say(execute.progress_line(i, len(todo), pc, outcome, study.report.split, study.report.metric,
                                              width))
            current = None
            if r.rank == 0:
                winner = _finish(study, r.planned, r.uri, r.parent_id, parent, r.out, r.no_report, say)
    except KeyboardInterrupt as exc:
        if r.rank == 0:
            finished = sum(o.status == "FINISHED" for o in outcomes)
            stopped = ""
            if current is not None:
                rid = getattr(exc, "run_id", None)
                stopped = (f" in cell {current[1].name} ({current[0]}/{len(todo)})"
                           f"{f', whose run {rid} ended KILLED' if rid else ''}")
            click.echo(f"{interrupt_reason(exc)}: study {study.name} stopped{stopped}; {finished} cell(s) finished "
                       f"before it. Run `derma study {study.path}` again to run only the missing cells.", err=True)
        sys.exit(interrupt_exit_code(exc))
    return outcomes, winner


def _conclude(r: _StudyRun, outcomes: list, winner: str, started: float) -> None:
    """Rank 0 after the cells: drop an empty parent run, say what ran, exit 1 if a cell failed."""
    from .. import tracking

    if winner != r.parent_id:  # another process's parent run is the study's: this one is left empty
        tracking.delete_run(r.parent_id, r.uri)
    failed = [o for o in outcomes if o.status == "FAILED"]
    missing = sum(pc.done is None for pc in r.planned)
    r.say(f"study {r.study.name}: ran {len(outcomes)} cell(s) in {time.monotonic() - started:.0f} s "
          f"({len(outcomes) - len(failed)} finished, {len(failed)} failed); the study: "
          f"{len(r.planned) - missing} of {len(r.planned)} cells done; parent MLflow run {winner}")
    if failed:
        sys.exit(1)


def _finish(study, planned, uri, parent_id, parent, out, no_report, say) -> str:
    """Settle the parent run, record the cells table and the counts on it, write the report."""
    from .. import tracking
    from . import execute, planning

    planning.lookup(planned, uri)
    winner = execute.settle_parent(study, parent_id, uri)
    target = parent if winner == parent_id else tracking.Tracker(winner, uri)
    frame = execute.cells_frame(planned, study.report.split, study.report.metric)
    target.log_text(tracking.table_csv(frame), "cells.csv")
    done = sum(pc.done is not None for pc in planned)
    target.set_tags({"derma.cells_total": len(planned), "derma.cells_done": done,
                     "derma.cells_missing": len(planned) - done})
    if not no_report:
        _report(study, planned, uri, out, parent=target, say=say)
    return winner


def _report(study, planned, uri, out, parent, say) -> None:
    from .summary import write_study_report

    try:
        written = write_study_report(study, planned, uri, out, parent=parent)
    except Exception as exc:  # the runs are recorded; a report that cannot be made must not hide them
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        say(f"warning: the report could not be written ({type(exc).__name__}: {first}); the runs are in MLflow, "
            f"`derma study {study.path} --report-only` tries again")
        return
    if written is None:
        say("no report: no cell is done yet")
    else:
        say(f"report: {written[0]} (Markdown twin: {written[1]})")


def _existing_parent(study, uri):
    """A Tracker on the study's parent run when there is one (the report is logged there too)."""
    from .. import tracking
    from .execute import find_parents

    found = find_parents(study, uri)
    return tracking.Tracker(found[0].info.run_id, uri) if found else None


class _nothing:
    """A stand-in for the parent run's context on ranks other than 0 (they log nothing)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _end_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _redact(uri: str) -> str:
    from ..tuning.study import redact

    return redact(uri)
