"""``derma report``: one self-contained HTML file (and a Markdown twin) of logged runs; the report
itself is built in :mod:`derma_core.report`."""

from __future__ import annotations

import os

import click

from ..report import build_report, write_report


@click.command("report")
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", "-e", help="Report every finished run of this MLflow experiment.")
@click.option("--runs", "runs_opt", multiple=True, help="A run id to report (repeatable; same as RUN_IDS).")
@click.option("--baseline", help="Run id the paired tests compare against (default: the first run).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The HTML file; the Markdown twin is written next to it with .md.")
@click.option("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).")
@click.option("--split", default="test", show_default=True, help="Which evaluated split's results to report.")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples of the paired tests.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the paired bootstrap.")
@click.option("--title", help="Report title.")
def report_command(run_ids, experiment, runs_opt, baseline, out, tracking_uri, split, n_resamples, seed, title):
    """Write a self-contained HTML report (and a Markdown twin) of logged runs.

    Give RUN_IDs / --runs ID ... or --experiment NAME.
    """
    ids = tuple(run_ids) + tuple(runs_opt)
    if bool(ids) == bool(experiment):
        raise click.UsageError("give run ids (or --runs ID ...) or --experiment NAME (not both)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        report = build_report(ids, experiment, tracking_uri, baseline, split, n_resamples, seed=seed, title=title)
    except LookupError as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    html_path, md_path = write_report(report, out)
    click.echo(f"report of {len(report.runs)} run(s) written to {html_path} (Markdown twin: {md_path})")
