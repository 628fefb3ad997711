"""``derma runs``: list runs and recognise those left RUNNING by a process that is gone.

Every run records the pid, process start time, host and folder of the process that runs it
(tags ``derma.pid``, ``derma.process_start``, ``derma.host``, ``derma.cwd``). A RUNNING run whose
process no longer exists on this host was killed without a chance to end it (SIGKILL, power
cut, out of memory); ``derma runs --end-stale`` ends such runs as KILLED with the reason in
``derma.error`` (never FINISHED: what they hold is partial), and ``derma run --resume RUN_ID``
continues one from its checkpoint.
"""

from __future__ import annotations

import socket
import sys

import click

from . import hookimpl
from .lifetime import pid_alive, process_start

ALIVE = "running"
GONE = "process gone"
ELSEWHERE = "on another host"
UNKNOWN = "no process recorded"


def liveness(run) -> str:
    """For a RUNNING run: :data:`ALIVE`, :data:`GONE`, :data:`ELSEWHERE` or :data:`UNKNOWN`."""
    from . import tracking

    tags = run.data.tags
    pid, host = tags.get(tracking.TAG_PID, ""), tags.get(tracking.TAG_HOST)
    if not pid.isdigit() or not host:
        return UNKNOWN
    if host != socket.gethostname():
        return ELSEWHERE
    if not pid_alive(int(pid)):
        return GONE
    started = tags.get(tracking.TAG_PROCESS_START)
    if started and process_start(int(pid)) not in (None, started):
        return GONE  # the pid now belongs to another process
    return ALIVE


def stale_runs(uri: str | None = None, experiment: str | None = None) -> list:
    """RUNNING runs whose process on this host is gone."""
    from . import tracking

    return [r for r in tracking.list_runs(uri, experiment, status="RUNNING") if liveness(r) == GONE]


def end_stale(uri: str | None = None, experiment: str | None = None) -> list[str]:
    """End every stale run as KILLED with the reason; returns their ids."""
    from . import tracking

    ended = []
    for run in stale_runs(uri, experiment):
        tags = run.data.tags
        reason = (f"killed: process {tags.get(tracking.TAG_PID)} on {tags.get(tracking.TAG_HOST)} ended without "
                  "ending the run (found by `derma runs --end-stale`); results are partial, "
                  f"`derma run --resume {run.info.run_id}` continues it")
        tracking.end_run(run.info.run_id, "KILLED", reason, uri)
        ended.append(run.info.run_id)
    return ended


class ResumeError(LookupError):
    """A run cannot be resumed (unknown, or still running); the message says what to do."""


def resume_config(run_id: str, uri: str | None = None, re_evaluate: bool = False):
    """``(stored config, run)`` to resume ``run_id`` with, or ``(None, run)`` when the run is
    FINISHED and ``re_evaluate`` is not set (nothing to do).

    Relative paths in the stored config (``data.dir``, ``output.work_dir``, a checkpoint...) are
    resolved against the folder the run was started in (tag ``derma.cwd``), so ``--resume`` from
    another folder finds the run's checkpoint and data, not the current folder's."""
    from pathlib import Path

    from . import tracking

    try:
        run = tracking.get_run(run_id, uri)
    except Exception:  # MlflowException: no such run (or a malformed id)
        raise ResumeError(f"no run {run_id!r} in {tracking.resolve_tracking_uri(uri)}; pass --tracking-uri "
                          "(or set MLFLOW_TRACKING_URI) to the store it was logged to") from None
    if run.info.status == "FINISHED" and not re_evaluate:
        return None, run
    if run.info.status == "RUNNING" and liveness(run) == ALIVE:
        tags = run.data.tags
        raise ResumeError(f"run {run_id} is still running (pid {tags.get(tracking.TAG_PID)} on "
                          f"{tags.get(tracking.TAG_HOST)}); wait for it to end or stop that process first")
    stored = tracking.load_run_config(run_id, uri)
    base = run.data.tags.get(tracking.TAG_CWD)
    if base and Path(base).resolve() != Path.cwd().resolve():
        stored = _rebase(stored, Path(base))
    return stored, run


def _rebase(node, base):
    """Relative path strings that exist under ``base`` become absolute paths there."""
    from pathlib import Path

    if isinstance(node, dict):
        return {k: _rebase(v, base) for k, v in node.items()}
    if isinstance(node, str) and node and not Path(node).is_absolute() and (base / node).exists():
        return str((base / node).resolve())
    return node


@click.command("runs")
@click.option("--experiment", help="Only this MLflow experiment (default: all).")
@click.option("--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED"]), help="Only runs with this status.")
@click.option("--end-stale", "end_stale_flag", is_flag=True, help="End RUNNING runs whose process is gone as KILLED, with the reason.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the same as derma run).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Runs to list.")
def runs_command(experiment, status, end_stale_flag, tracking_uri, limit):
    """List runs, marking RUNNING runs whose process is gone; --end-stale ends them as KILLED."""
    from . import tracking

    try:
        if end_stale_flag:
            ended = end_stale(tracking_uri, experiment)
            for run_id in ended:
                click.echo(f"{run_id}: ended as KILLED (its process is gone)")
            click.echo(f"{len(ended)} stale run(s) ended", err=True)
            return
        runs = tracking.list_runs(tracking_uri, experiment, status=status, max_results=limit)
    except LookupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not runs:
        click.echo("no runs", err=True)
        return
    stale = 0
    for run in runs:
        tags, info = run.data.tags, run.info
        mark = ""
        if info.status == "RUNNING":
            state = liveness(run)
            if state == GONE:
                stale += 1
                mark = f"  [{GONE}: pid {tags.get(tracking.TAG_PID)}]"
            elif state == ELSEWHERE:
                mark = f"  [{ELSEWHERE}: {tags.get(tracking.TAG_HOST)}]"
        name = info.run_name or ""
        click.echo(f"{info.run_id}  {info.status:<8}  {tags.get(tracking.TAG_PLUGIN, tags.get(tracking.TAG_KIND, '-')):<16}"
                   f"  {name}{mark}")
    if stale:
        click.echo(f"{stale} run(s) RUNNING with their process gone: `derma runs --end-stale` ends them as KILLED, "
                   "`derma run --resume RUN_ID` continues one", err=True)


@hookimpl
def register_commands(cli):
    cli.add_command(runs_command)
