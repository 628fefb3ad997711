"""``derma compare``: runs side by side, and a paired test of whether one backend is really better.

The command only reads runs (:mod:`derma_core.evaluation.records`, through
:mod:`derma_core.tracking`) and prints what :mod:`derma_core.evaluation.compare` makes of them; the
paired statistics are :func:`derma_core.evaluation.paired.paired_comparison`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import click
import numpy as np
import pandas as pd

from . import fail
from .. import tracking
from ..evaluation.compare import display_table, metric_order, paired_text, sort_runs
from ..evaluation.paired import PairedComparison, PairingError, paired_comparison
from ..evaluation.records import (INFO_COLUMNS, RunRecord, check_same_classes_tags, curated_param_names,
                                  load_pair_inputs, load_records, runs_frame)
from ..evaluation.tables import render_markdown, render_text, run_label


@click.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", "-e", help="Compare every finished run of this MLflow experiment.")
@click.option("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG forest plot of --metric.")
@click.option("--metric", default="macro_f1", show_default=True, help="Metric to sort and plot by (no split prefix).")
@click.option("--split", default="test", show_default=True, help="Which evaluated split's metrics to compare.")
@click.option("--paired/--no-paired", default=None,
              help="Paired test of two runs (default: whenever exactly two runs share their test images).")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the paired comparison.")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the paired bootstrap.")
def compare_command(run_ids, experiment, tracking_uri, fmt, plot_path, metric, split, paired, n_resamples,
                    confidence, seed):
    """Compare runs side by side; for two runs on the same test set, test whether one is better.

    Give RUN_IDs (in the order A, B) or --experiment NAME.
    """
    if bool(run_ids) == bool(experiment):
        fail("give run ids or --experiment NAME (not both)", 2)
    # MLflow draws a progress bar for every predictions table it downloads: noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        records, notes = load_records(run_ids, experiment, tracking_uri, split, metric)
    except LookupError as exc:
        fail(str(exc).strip("'\""))
    frame = runs_frame(records, split)
    if metric not in frame.columns:
        available = sorted(c for c in frame.columns if not c.endswith(("_ci_low", "_ci_high"))
                           and c not in INFO_COLUMNS and c not in curated_param_names())
        fail(f"no run has metric {split}_{metric}; available: {', '.join(available) or 'none'}", 2)
    if experiment:
        frame = sort_runs(frame, metric)
        order = {rid: i for i, rid in enumerate(frame["run_id"])}
        records = sorted(records, key=lambda r: order[r.run_id])
    frame = frame.reset_index(drop=True)
    pair, pair_note = _compare_pair(records, paired, tracking_uri, split, n_resamples, confidence, seed, notes)
    if plot_path:
        from ..evaluation.figures import compare_figure

        fig = compare_figure([run_label(r) for _, r in frame.iterrows()], frame[metric].tolist(),
                             frame.get(f"{metric}_ci_low", pd.Series([np.nan] * len(frame))).tolist(),
                             frame.get(f"{metric}_ci_high", pd.Series([np.nan] * len(frame))).tolist(),
                             f"{split}_{metric}")
        save_figure_atomic(fig, plot_path)
        notes.append(f"plot written to {plot_path}")
    _print_comparison(fmt, frame, records, pair, pair_note, notes, metric, split, tracking_uri)


def _compare_pair(records: list[RunRecord], paired: bool | None, tracking_uri: str | None, split: str,
                  n_resamples: int, confidence: float, seed: int,
                  notes: list[str]) -> tuple[PairedComparison | None, str | None]:
    """The paired comparison of two runs (by default whenever there are two), or None and why
    not (--paired: a failure exits instead)."""
    pair: PairedComparison | None = None
    pair_note: str | None = None
    if paired is None:
        want = len(records) == 2
    else:
        want = paired
        if paired and len(records) != 2:
            fail(f"--paired needs exactly two runs, got {len(records)}", 2)
    if want:
        a, b = records
        try:
            check_same_classes_tags(a, b)
            inputs = [load_pair_inputs(r, tracking_uri, split) for r in (a, b)]
            pair = paired_comparison(inputs[0][0], inputs[1][0], (a.label, b.label), n_resamples, confidence, seed,
                                     label_sets=(inputs[0][1], inputs[1][1]), unit=inputs[0][2])
            digests = [r.tags.get(tracking.TAG_DATASET_DIGEST) for r in (a, b)]
            if all(digests) and digests[0] != digests[1]:
                notes.append("the two runs' dataset digests differ although their test images match")
        except (PairingError, LookupError, ValueError) as exc:
            if paired:
                fail(str(exc).strip("'\""))
            pair_note = str(exc).strip("'\"")
    return pair, pair_note


def _print_comparison(fmt: str, frame: pd.DataFrame, records: list[RunRecord], pair: PairedComparison | None,
                      pair_note: str | None, notes: list[str], metric: str, split: str,
                      tracking_uri: str | None) -> None:
    """The comparison in ``fmt`` on stdout; the notes on stderr."""
    if fmt == "json":
        payload = {"split": split, "metric": metric, "tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
                   "runs": [{"run_id": r.run_id, "run_name": r.run_name, "plugin": r.plugin, "status": r.status,
                             "params": {k: v for k, v in r.params.items()},
                             "metrics": {k[len(split) + 1:]: v for k, v in r.metrics.items()
                                         if k.startswith(f"{split}_")}}
                            for r in records],
                   "paired": pair.as_dict() if pair else None,
                   "paired_skipped": pair_note}
        click.echo(json.dumps(_jsonable(payload), indent=2))
    elif fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
        if pair is not None:
            notes.append("the paired comparison is shown by --format table, markdown or json")
    else:
        table = display_table(frame, metric_order(metric, frame.columns))
        markdown = fmt == "markdown"
        click.echo(render_markdown(table) if markdown else render_text(table))
        if pair is not None:
            click.echo()
            click.echo(paired_text(pair, markdown))
        elif pair_note:
            click.echo()
            click.echo(pair_note)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if fmt in ("json", "csv") and pair_note:
        click.echo(f"note: {pair_note}", err=True)


def save_figure_atomic(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG, atomically (:func:`derma_core.atomic.atomic_path`)."""
    from ..atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, np.bool_):
        return bool(value)
    return value


