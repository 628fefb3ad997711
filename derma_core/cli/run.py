"""``derma run``, ``derma plugins`` (and ``plugins new``) and ``derma ui``; :func:`_print_metrics` is
shared with ``derma eval-predictions``."""

from __future__ import annotations

import json
import os
import sys

import click

from . import fail


def _print_metrics(metrics: dict[str, float], prefix: str) -> None:
    from ..tracking import HEADLINE_METRICS

    rows = []
    for key in HEADLINE_METRICS:
        name = f"{prefix}_{key}"
        if name in metrics:
            low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
            ci = f"  [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
            rows.append(f"  {name:<26} {metrics[name]:.4f}{ci}")
    click.echo("\n".join(rows) if rows else "  (no metrics)")


@click.command("run")
@click.option("--plugin", "-p", "plugin", help="Backend to run (see `derma plugins`).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file overriding the defaults.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key, e.g. -o train.epochs=3 (repeatable).")
@click.option("--dataset", help="Dataset (data.source): synthetic (default), or any of `derma datasets` with --data-dir.")
@click.option("--data-dir", help="Prepared folder from `derma prep` (data.dir).")
@click.option("--experiment", help="MLflow experiment (default: the dataset name).")
@click.option("--run-name", help="MLflow run name.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--quiet", "-q", is_flag=True, default=None, help="No progress bars.")
@click.option("--resume", "resume_run_id", metavar="RUN_ID", help="Continue an interrupted run from its checkpoint.")
@click.option("--re-evaluate", is_flag=True,
              help="With --resume of a FINISHED run: evaluate it again (its metrics are logged again).")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("--eval-dataset", "eval_datasets", multiple=True, metavar="NAME=DIR",
              help="Also evaluate on this prepared folder (repeatable; metrics eval_<name>_*); label-mapped, "
                   "its images that duplicate the training data excluded.")
@click.option("--eval-split", type=click.Choice(["test", "all"]), help="--eval-dataset rows: test (default) or all.")
@click.option("--allow-overlap", is_flag=True, default=None,
              help="Keep --eval-dataset images that duplicate the training data (warned and tagged).")
@click.option("--label-map", "label_maps", multiple=True, type=click.Path(dir_okay=False),
              help="A YAML label map tried before the built-in ones (repeatable).")
def run_command(plugin, config_file, overrides, dataset, data_dir, experiment, run_name, tracking_uri, seed,
                device, quiet, resume_run_id, re_evaluate, print_config, eval_datasets, eval_split, allow_overlap,
                label_maps):
    """Train and/or evaluate one backend and record everything in MLflow."""
    from .. import plugins, runner, tracking
    from ..config import ConfigError, dump_config, resolve_config
    from ..evaluation.crossdataset import print_eval_metrics

    values = {"data.source": dataset, "data.dir": data_dir, "tracking.experiment": experiment,
              "tracking.run_name": run_name, "tracking.uri": tracking_uri, "seed": seed, "device": device,
              "quiet": quiet, "evaluation.datasets": list(eval_datasets) or None,
              "evaluation.datasets_split": eval_split, "evaluation.allow_overlap": allow_overlap,
              "evaluation.label_maps": list(label_maps) or None}
    try:
        if resume_run_id:
            from ..lifetime import resume_config

            stored, previous = resume_config(resume_run_id, tracking_uri, re_evaluate)
            if stored is None:
                click.echo(f"run {resume_run_id} already FINISHED; nothing to do, nothing changed "
                           "(--re-evaluate evaluates it again). Its metrics:", err=True)
                _print_metrics(previous.data.metrics, previous.data.params.get("eval_split", "test"))
                return
            plugin = plugin or stored.get("plugin")
            if stored.get("plugin") != plugin:
                fail(f"run {resume_run_id} used plugin {stored.get('plugin')!r}, not {plugin!r}")
        if not plugin:
            names = ", ".join(sorted(plugins.classifiers()))
            fail(f"--plugin is required; installed: {names}", 2)
        reg = plugins.get_classifier(plugin)
        plugin_cfg = reg.options.get("config")
        if resume_run_id:
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "resumed.yaml"
                stored.pop("plugin", None)
                path.write_text(dump_config(stored))
                config = resolve_config(plugin, path, overrides, values, plugin_config=plugin_cfg)
        else:
            config = resolve_config(plugin, config_file, overrides, values, plugin_config=plugin_cfg)
    except (ConfigError, plugins.UnknownComponentError, LookupError) as exc:
        fail(str(exc).strip("'\""), 2)
    for name, messages in plugins.hook_errors().items():  # what a broken plugin did not register is missing
        for message in messages:
            click.echo(f"warning: plugin {name!r}: {message} (see `derma plugins`)", err=True)
    if print_config:
        click.echo(dump_config(config), nl=False)
        return
    try:  # the store is created or migrated once, under a lock, before the run starts
        tracking.configure(config["tracking"].get("uri"))
    except tracking.StoreError as exc:
        fail(str(exc))
    from ..progress import quiet_library_bars

    quiet_library_bars(bool(config.get("quiet")))  # a log gets derma's progress lines, not their redraws
    try:
        result = runner.run(config, resume_run_id=resume_run_id)
    except runner.RunError as exc:
        where = f" (MLflow run {exc.run_id} marked FAILED; partial results kept in {exc.work_dir})" if exc.run_id else ""
        fail(f"{plugin} failed: {exc}{where}")
    except (plugins.UnknownComponentError, ConfigError, RuntimeError, ValueError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    split = config["evaluation"]["split"]
    click.echo(f"{plugin} on {result.experiment} ({split} split):")
    _print_metrics(result.metrics, split)
    print_eval_metrics(result.metrics, click.echo)
    _print_where(result.run_id, tracking.resolve_tracking_uri(config["tracking"].get("uri")))


def _print_where(run_id: str, uri: str) -> None:
    """The end of ``derma run``: the run's name and id, where its artifacts are, how to see it."""
    from .. import tracking

    run = tracking.get_run(run_id, uri)
    experiment = tracking.get_experiment(run.info.experiment_id, uri)
    click.echo(f"run {run.info.run_name}")
    click.echo(f"MLflow run id: {run_id}  (experiment {experiment.name!r}, id {experiment.experiment_id}; "
               f"store {uri})")
    click.echo(f"artifacts: {tracking.local_path(run.info.artifact_uri)}")
    serve = tracking.ui_command(uri)
    run_url = tracking.ui_url(uri, experiment.experiment_id, run_id)
    runs_url = tracking.ui_url(uri, experiment.experiment_id, view=tracking.has_runs_view(experiment))
    click.echo(f"see it: `{serve}`, then {run_url}" if serve else f"see it: {run_url}")
    click.echo(f"all runs of {experiment.name!r} side by side: {runs_url}")


@click.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Include the core's built-in plugins.")
@click.pass_context
def plugins_command(ctx, as_json, show_all):
    """List installed plugins: name, package, version, hooks and load errors."""
    if ctx.invoked_subcommand is not None:
        return
    from .. import plugins

    registered = {name: reg.plugin for name, reg in plugins.classifiers().items()}
    hook_errors, clashes = plugins.hook_errors(), plugins.name_clashes()
    clashing = {p for _, owners in clashes.values() for p in owners}
    infos = [i for i in plugins.plugin_infos()
             if show_all or not i.builtin or i.error or i.name in hook_errors or i.name in clashing]
    if as_json:
        payload = [dict(i.as_dict(), classifiers=sorted(n for n, p in registered.items() if p == i.name),
                        hook_errors=hook_errors.get(i.name, []),
                        name_clashes=[m for m, owners in clashes.values() if i.name in owners]) for i in infos]
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo("classifiers: " + ", ".join(f"{n} ({p})" for n, p in sorted(registered.items())))
    for info in infos:
        status = f"FAILED TO LOAD: {info.error}" if info.error else ", ".join(info.hooks)
        status += "".join(f"; HOOK FAILED: {m}" for m in hook_errors.get(info.name, []))
        version = f" {info.version}" if info.version else ""
        package = f" [{info.package}{version}]" if info.package else ""
        click.echo(f"{info.name}{package}: {status}")
    for message, _ in clashes.values():
        click.echo(f"NAME CLASH: {message}")


@plugins_command.command("new")
@click.argument("name")
@click.option("--dir", "parent", type=click.Path(file_okay=False), default=None,
              help="Where to create the package (default: ./plugins if it exists, else the current folder).")
def plugins_new_command(name, parent):
    """Scaffold a working plugin package for a new classifier NAME."""
    from pathlib import Path

    from ..scaffold import create_plugin

    if parent is None:
        parent = "plugins" if Path("plugins").is_dir() else "."
    try:
        root = create_plugin(name, Path(parent))
    except (ValueError, FileExistsError) as exc:
        fail(str(exc), 2)
    click.echo(f"created {root}\nnext:\n  pip install -e {root}\n  derma plugins\n"
               f"  derma run --plugin {name}\n  pytest {root / 'tests'}")


@click.command("ui")
@click.option("--tracking-uri", help="Store to browse (default: the same as derma run).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server worker processes.")
def ui_command(tracking_uri, host, port, workers):
    """Start the MLflow UI on derma's store (bound to 127.0.0.1 unless --host says otherwise)."""
    from .. import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    base = f"http://{host}:{port}"
    click.echo(f"MLflow UI on {base} for {uri} (Ctrl-C stops it)")
    try:
        experiments = tracking.list_experiments(uri)
    except tracking.StoreError as exc:
        fail(str(exc))
    if experiments:
        click.echo("each experiment's runs (these links open MLflow's model-training layout, not its GenAI page):")
    for exp in experiments:
        url = tracking.ui_url(uri, exp.experiment_id, view=tracking.has_runs_view(exp), base=base)
        click.echo(f"  {exp.name}: {url}")
    sys.exit(tracking.serve_ui(tracking_uri, host, port, workers))
