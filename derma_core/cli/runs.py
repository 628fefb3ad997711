"""``derma runs``: list runs and recognise those left RUNNING by a process that is gone (how a
run's process is judged alive or gone, and how a stale run is ended, lives in
:mod:`derma_core.lifetime`).

Every run records the pid, process start time, host and folder of the process that runs it
(tags ``derma.pid``, ``derma.process_start``, ``derma.host``, ``derma.cwd``). A RUNNING run whose
process no longer exists on this host was killed without a chance to end it (SIGKILL, power
cut, out of memory); ``derma runs --end-stale`` ends such runs as KILLED with the reason in
``derma.error`` (never FINISHED: what they hold is partial), and ``derma run --resume RUN_ID``
continues one from its checkpoint.
"""

from __future__ import annotations

import sys

import click

from ..lifetime import ELSEWHERE, GONE, end_stale, liveness


def run_row(run, experiments: dict[str, str] | None = None) -> dict:
    """What ``derma runs`` shows of one run (its ``--json`` record): id, name, status, the
    process state of a RUNNING run, experiment, plugin, dataset, start time, the headline metric
    of the split it was evaluated on and the headline metrics with their intervals."""
    from datetime import datetime, timezone

    from .. import tracking

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

    from .. import tracking

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
