"""``derma tune``: the command's options; the study it runs is :func:`derma_core.tuning.session.tune`."""

from __future__ import annotations

import click

from ..tuning.space import PRUNERS, SAMPLERS
from ..tuning.study import DEFAULT_METRIC


@click.command("tune")
@click.option("--plugin", "-p", help="Backend to tune (see `derma plugins`); stored in the study for --resume/--best.")
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="Search space YAML (default: configs/tune/PLUGIN.yaml).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML overriding the backend's defaults.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
@click.option("--trials", "n_trials", type=click.IntRange(min=0), help="Trials this process runs (default 20; several workers each run this many).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop starting trials after this many seconds.")
@click.option("--study-name", help="Optuna study (default: tune-PLUGIN). Workers with the same name and storage share it.")
@click.option("--storage", help="Optuna storage: a journal file (default mlruns/optuna.journal) or an SQLAlchemy URL "
                                "such as postgresql+psycopg2://user:pw@host/db for several machines.")
@click.option("--sampler", type=click.Choice(SAMPLERS), help="Sampler (default tpe, or the space file's).")
@click.option("--pruner", type=click.Choice(PRUNERS), help="Pruner (default median, or the space file's).")
@click.option("--metric", help=f"Validation metric to optimise (default {DEFAULT_METRIC}, or the space file's).")
@click.option("--direction", type=click.Choice(["maximize", "minimize"]), help="Default maximize, or the space file's.")
@click.option("--resume", is_flag=True, help="Continue an existing study with its stored plugin, space and config.")
@click.option("--best", "show_best", is_flag=True, help="Print the best trial's config YAML and write it to --output; run no trial.")
@click.option("--output", type=click.Path(dir_okay=False), help="Where --best writes (default STUDY-best.yaml).")
@click.option("--dataset", help="Dataset source (data.source).")
@click.option("--data-dir", help="Prepared folder from `derma prep` (data.dir).")
@click.option("--experiment", help="MLflow experiment (default: the dataset name).")
@click.option("--tracking-uri", help="MLflow tracking URI; use one `mlflow server` for all workers.")
@click.option("--seed", type=int, help="Training seed of every trial (config key seed).")
@click.option("--sampler-seed", type=int, help="Seed of the sampler (reproducible single-worker studies).")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between trial heartbeats (database storage).")
@click.option("--grace-period", type=click.IntRange(min=1), default=60, show_default=True,
              help="A running trial without a heartbeat for this long is failed and retried.")
@click.option("--max-retry", type=click.IntRange(min=0), default=2, show_default=True,
              help="How often a trial of a dead worker is queued again.")
@click.option("--log-models", is_flag=True, help="Also log each trial's model (off: the --best config's run logs it).")
@click.option("--quiet", "-q", is_flag=True, help="No per-trial lines.")
def tune_command(**options):
    """Search hyperparameters with Optuna; every trial is an MLflow run nested under the study's run.

    Trials are evaluated on the validation split only. Several `derma tune` processes (on several
    machines) with the same --study-name, --storage and --tracking-uri work on one study.
    """
    from ..tuning.session import tune

    tune(**options)
