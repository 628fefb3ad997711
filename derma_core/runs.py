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


def run_row(run, experiments: dict[str, str] | None = None) -> dict:
    """What ``derma runs`` shows of one run (its ``--json`` record): id, name, status, the
    process state of a RUNNING run, experiment, plugin, dataset, start time, the headline metric
    of the split it was evaluated on and the headline metrics with their intervals."""
    from datetime import datetime, timezone

    from . import tracking

    tags, info, metrics = run.data.tags, run.info, run.data.metrics
    split = run.data.params.get("eval_split", "test")
    headline = {}
    for key in tracking.HEADLINE_METRICS:
        name = f"{split}_{key}"
        if name in metrics:
            headline[name] = {"value": metrics[name], "ci_low": metrics.get(f"{name}_ci_low"),
                              "ci_high": metrics.get(f"{name}_ci_high")}
    first = f"{split}_{tracking.HEADLINE_METRICS[0]}"
    started = (datetime.fromtimestamp(info.start_time / 1000, tz=timezone.utc).isoformat(timespec="seconds")
               if info.start_time else None)
    return {"run_id": info.run_id, "name": info.run_name or "", "status": info.status,
            "process": liveness(run) if info.status == "RUNNING" else None,
            "host": tags.get(tracking.TAG_HOST), "pid": tags.get(tracking.TAG_PID),
            "experiment_id": info.experiment_id, "experiment": (experiments or {}).get(info.experiment_id),
            "plugin": tags.get(tracking.TAG_PLUGIN, tags.get(tracking.TAG_KIND)),
            "dataset": tags.get(tracking.TAG_DATASET), "start_time": started,
            "headline_metric": first, "headline_value": metrics.get(first), "metrics": headline,
            "error": tags.get(tracking.TAG_ERROR)}


def _local_time(iso: str | None) -> str:
    from datetime import datetime

    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M") if iso else "-"


@click.command("runs")
@click.option("--experiment", help="Only this MLflow experiment (default: all).")
@click.option("--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED"]), help="Only runs with this status.")
@click.option("--end-stale", "end_stale_flag", is_flag=True, help="End RUNNING runs whose process is gone as KILLED, with the reason.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the same as derma run).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Runs to list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of runs (id, name, status, experiment, plugin, "
              "dataset, start time, headline metrics with intervals).")
def runs_command(experiment, status, end_stale_flag, tracking_uri, limit, as_json):
    """List runs, newest first: status, plugin, dataset, macro-F1, start time, name. RUNNING runs
    whose process is gone are marked; --end-stale ends them as KILLED."""
    import json

    from . import tracking

    try:
        if end_stale_flag:
            ended = end_stale(tracking_uri, experiment)
            for run_id in ended:
                click.echo(f"{run_id}: ended as KILLED (its process is gone)")
            click.echo(f"{len(ended)} stale run(s) ended", err=True)
            return
        runs = tracking.list_runs(tracking_uri, experiment, status=status, max_results=limit)
        experiments = {i: tracking.get_experiment(i, tracking_uri).name for i in {r.info.experiment_id for r in runs}}
    except (LookupError, tracking.StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    rows = [run_row(run, experiments) for run in runs]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs in {tracking.resolve_tracking_uri(tracking_uri)}", err=True)
        return
    width = max(32, *(len(r["run_id"]) for r in rows))
    plugin_w = max(8, *(len(r["plugin"] or "-") for r in rows))
    data_w = max(7, *(len(r["dataset"] or "-") for r in rows))
    click.echo(f"{'RUN ID':<{width}}  {'STATUS':<8}  {'PLUGIN':<{plugin_w}}  {'DATASET':<{data_w}}  "
               f"{'MACRO-F1':<8}  {'STARTED':<16}  NAME")
    stale = 0
    for row in rows:
        mark = ""
        if row["process"] == GONE:
            stale += 1
            mark = f"  [{GONE}: pid {row['pid']}]"
        elif row["process"] == ELSEWHERE:
            mark = f"  [{ELSEWHERE}: {row['host']}]"
        value = row["headline_value"]
        score = "-" if value is None else f"{value:.3f}"
        if value is not None and not row["headline_metric"].startswith("test_"):
            score += f" ({row['headline_metric'].split('_', 1)[0]})"
        click.echo(f"{row['run_id']:<{width}}  {row['status']:<8}  {row['plugin'] or '-':<{plugin_w}}  "
                   f"{row['dataset'] or '-':<{data_w}}  {score:<8}  {_local_time(row['start_time']):<16}  "
                   f"{row['name']}{mark}")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    click.echo(f"{len(rows)} run(s) in {uri}; `derma compare RUN_ID RUN_ID` compares two, "
               f"`derma report --experiment NAME` writes a report", err=True)
    if stale:
        click.echo(f"{stale} run(s) RUNNING with their process gone: `derma runs --end-stale` ends them as KILLED, "
                   "`derma run --resume RUN_ID` continues one", err=True)
