"""``derma eval-predictions``: a prediction file made elsewhere, evaluated as an MLflow run (the
reading, matching and evaluating live in :mod:`derma_core.evaluation.external`)."""

from __future__ import annotations

import sys
from typing import Sequence

import click

from ..evaluation.external import FORMATS, PLUGIN, ExternalError, evaluate_file
from ..textio import encoding_option
from .run import _print_metrics


@click.command("eval-predictions")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="The dataset the predictions are on (see `derma datasets`).")
@click.option("--data-dir", help="Its prepared folder (`derma prep`): labels, groups and metadata.")
@click.option("--metadata", help="Its metadata table (e.g. HAM10000_metadata.csv): labels, groups, metadata.")
@click.option("--val", "val_file", type=click.Path(dir_okay=False),
              help="Predictions on validation images (same format): fits calibration and conformal sets.")
@click.option("--class-order", "order", help="Classes of probability_class_0..K-1: a,b,c or a diag,label CSV.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="The file's layout (default: from its columns).")
@click.option("--ignore-column", "ignore", multiple=True, help="A column to ignore (e.g. ISIC 2019's UNK).")
@click.option("--option", "options", multiple=True, metavar="NAME=VALUE",
              help="The dataset's preparation option its classes depend on (e.g. label=9 for Fitzpatrick17k).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]),
              help="Which split the predictions are on (the metric prefix).")
@click.option("--model", help="What made the predictions (the curated model param; default: the file name).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML overriding evaluation defaults.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. -o evaluation.bootstrap=200.")
@click.option("--experiment", help="MLflow experiment (default: the dataset's).")
@click.option("--run-name", help="MLflow run name.")
@click.option("--tracking-uri",
              help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).")
@encoding_option("FILE, --val, --class-order and --metadata")
def eval_predictions_command(file, dataset, data_dir, metadata, val_file, order, fmt, ignore, options, split,
                             model, config_file, overrides, experiment, run_name, tracking_uri, encoding):
    """Evaluate a per-image prediction file made elsewhere as an MLflow run.

    Reads derma's predictions.csv, ISIC challenge submissions and
    image_path,true_label,predicted_label,probability_class_0..K-1 files (with --class-order).
    """
    from .. import tracking
    from ..config import ConfigError

    try:
        result = evaluate_file(file, dataset, data_dir=data_dir, metadata=metadata, val=val_file, order=order,
                               fmt=fmt, ignore=ignore, options=_option_pairs(options), split=split,
                               config_file=config_file, overrides=overrides, experiment=experiment,
                               run_name=run_name, model=model, uri=tracking_uri,
                               log=lambda line: click.echo(line, err=True), encoding=encoding)
    except (ExternalError, ConfigError, FileNotFoundError, tracking.StoreError) as exc:
        click.echo(f"error: {str(exc).strip()}", err=True)
        sys.exit(1)
    click.echo(f"{file} on {dataset} ({split} split, {int(result.metrics['external_evaluated'])} images):")
    _print_metrics(result.metrics, split)
    click.echo(f"MLflow run id: {result.run_id}  (experiment {result.experiment!r}; plugin tag {PLUGIN})")


def _option_pairs(values: Sequence[str]) -> dict[str, str]:
    """``--option NAME=VALUE`` pairs as a dict."""
    out = {}
    for value in values:
        if "=" not in value:
            raise ExternalError(f"--option {value!r}: use NAME=VALUE (e.g. label=9)")
        k, v = value.split("=", 1)
        out[k.strip()] = v.strip()
    return out
