"""One ``derma tune`` process: open or join a study (new, ``--resume``d or ``--best``), check
it against the backend's schema and the dataset, then run this process's trials under the
study's parent MLflow run. The command's options are in :mod:`derma_core.cli.tune`."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from ..cli import fail_usage
from .space import (TuneError, _check_value, apply_values, load_space, parse_space, plugin_schema,
                    validate_space)
from .study import (ATTR_EXPERIMENT, ATTR_PARENT_RUN, ATTR_RUN_ID, ATTR_SETTINGS, DEFAULT_DIRECTION,
                    DEFAULT_METRIC, TAG_KIND, TAG_STUDY, Objective, StaleTrialHandler,
                    _differences, best_config_yaml, fail_dead_local_trials, interrupted_line, make_pruner,
                    make_sampler, make_storage, open_study, quiet_interrupted_trials, redact, summarize,
                    wait_for_settings)


def _resolve_base(plugin: str, config_file, overrides, values: dict) -> dict:
    from .. import plugins
    from ..config import resolve_config

    reg = plugins.get_classifier(plugin)
    return resolve_config(plugin, config_file, overrides, values, plugin_config=reg.options.get("config"))


def _resolve_stored(settings: dict, overrides, values: dict) -> dict:
    """The stored base config of a study, with this worker's overrides (machine paths) on top."""
    from ..config import dump_config

    stored = copy.deepcopy(settings["base_config"])
    stored.pop("plugin", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(dump_config(stored))
        return _resolve_base(settings["plugin"], path, overrides, values)


def tune(plugin, space_file, config_file, overrides, n_trials, timeout, study_name, storage, sampler, pruner,
         metric, direction, resume, show_best, output, dataset, data_dir, experiment, tracking_uri, seed,
         sampler_seed, device, heartbeat_interval, grace_period, max_retry, log_models, quiet) -> None:
    """What ``derma tune`` does with its options (:mod:`derma_core.cli.tune` lists them): open or
    create the study, then ``--best`` writes the best config, else this process runs its trials."""
    import optuna

    from .. import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # tune prints one line per trial with its run id; MLflow would add two URL lines per run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if resume and show_best:
        fail_usage("--resume and --best do not go together")
    if not study_name:
        if not plugin:
            fail_usage("give --plugin (the study is then tune-PLUGIN) or --study-name")
        study_name = f"tune-{plugin}"
    values = {"data.source": dataset, "data.dir": data_dir, "tracking.experiment": experiment,
              "tracking.uri": tracking_uri, "seed": seed, "device": device}
    handler = StaleTrialHandler(max_retry)
    try:
        store, store_url = make_storage(storage, heartbeat_interval, grace_period, handler)
    except TuneError as exc:
        fail_usage(str(exc))

    # -- --best and --resume work from what the study stored ------------------------------
    if show_best or resume:
        study, settings = _stored_study(store, store_url, study_name, plugin, direction)
        if show_best:
            _write_best(study, settings, study_name, output)
            return
        space, schema, settings = _resumed_settings(study_name, settings, metric, direction, overrides, values)
    else:
        space, schema, settings = _new_settings(plugin, space_file, config_file, overrides, values, metric,
                                                direction)

    # --resume keeps the sampler and pruner the study was started with unless told otherwise
    sampler_name = sampler or settings.get("sampler") or space.sampler or "tpe"
    pruner_name = pruner or settings.get("pruner") or (space.pruner or {}).get("name", "median")
    settings.setdefault("sampler", sampler_name)
    settings.setdefault("pruner", pruner_name)
    try:
        study_sampler = make_sampler(sampler_name, space, sampler_seed)
    except TuneError as exc:
        fail_usage(str(exc))
    study_pruner = make_pruner(pruner_name, space.pruner)
    uri = tracking.resolve_tracking_uri(tracking_uri or settings["base_config"].get("tracking", {}).get("uri"))
    handler.tracking_uri = uri
    # everything that can fail goes before the study exists, so a failed start leaves no half-made study
    exp_name = None if resume else _check_before_start(settings, uri)

    study, created = open_study(store, study_name, settings["direction"], study_sampler, study_pruner, create=not resume)
    exp_name, parent_id = _join_study(study, created, study_name, settings, exp_name, resume, uri)
    session = _Session(study, study_name, settings, space, schema, created, exp_name, parent_id, uri, store_url,
                       sampler_name, pruner_name)
    parent_ctx = _parent_context(session)
    dead = fail_dead_local_trials(study, handler)
    trials = 20 if n_trials is None and timeout is None else n_trials
    _run_trials(session, parent_ctx, dead, trials, timeout, _resume_command(study_name, storage, tracking_uri),
                log_models, quiet)


def _stored_study(store, store_url: str, study_name: str, plugin: str | None, direction: str | None):
    """An existing study made by `derma tune`, and the settings it stored."""
    try:
        study, _ = open_study(store, study_name, direction or DEFAULT_DIRECTION, None, None, create=False)
    except TuneError as exc:
        fail_usage(f"{exc} (storage {redact(store_url)})")
    attrs = study.user_attrs
    if ATTR_SETTINGS not in attrs:
        fail_usage(f"study {study_name!r} was not made by `derma tune` (it has no derma settings)")
    settings = attrs[ATTR_SETTINGS]
    if plugin and plugin != settings["plugin"]:
        fail_usage(f"study {study_name!r} tunes plugin {settings['plugin']!r}, not {plugin!r}")
    return study, settings


def _write_best(study, settings: dict, study_name: str, output: str | None) -> None:
    """--best: print the best trial's config YAML and write it to ``output``."""
    try:
        text = best_config_yaml(study, settings)
    except TuneError as exc:
        fail_usage(str(exc), 1)
    path = Path(output or f"{study_name}-best.yaml")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    click.echo(text, nl=False)
    click.echo(f"# written to {path}", err=True)


def _resumed_settings(study_name: str, settings: dict, metric, direction, overrides, values: dict):
    """--resume: the stored space, the plugin's schema and the stored settings, with this
    worker's overrides (machine paths) on the stored base config."""
    from .. import plugins, runner
    from ..config import ConfigError

    plugin = settings["plugin"]
    space = parse_space(settings["space"], settings.get("space_file", "<stored space>"))
    for name, given, stored in (("--metric", metric, settings["metric"]), ("--direction", direction, settings["direction"])):
        if given and given != stored:
            fail_usage(f"{name} {given} differs from the study's {stored}")
    changed = bool(overrides or any(v is not None for v in values.values()))
    try:
        base = _resolve_stored(settings, overrides, values) if changed else settings["base_config"]
        _, schema = plugin_schema(plugin)
    except (ConfigError, plugins.UnknownComponentError) as exc:
        fail_usage(str(exc).strip("'\""))
    if changed and settings.get("classes"):  # this worker's paths must still reach the study's classes
        try:
            _same_classes(study_name, settings["classes"], _dataset_classes(runner, base))
        except TuneError as exc:
            fail_usage(str(exc), 1)
    return space, schema, dict(settings, base_config=base)


def _new_settings(plugin, space_file, config_file, overrides, values: dict, metric, direction):
    """A new study: its space (checked against the plugin's schema), the schema and the settings
    the study stores."""
    from .. import plugins
    from ..config import ConfigError, configs_dir

    if not plugin:
        fail_usage(f"--plugin is required; installed: {', '.join(sorted(plugins.classifiers()))}")
    path = Path(space_file) if space_file else configs_dir() / "tune" / f"{plugin}.yaml"
    if not path.exists():
        fail_usage(f"no search space: {path} does not exist; pass --space FILE")
    try:
        space = load_space(path)
        if space.raw.get("plugin") not in (None, plugin):
            raise TuneError(f"{path}: this space is for plugin {space.raw['plugin']!r}, not {plugin!r}")
        base = _resolve_base(plugin, config_file, overrides, values)
        defaults, schema = plugin_schema(plugin)
        for key, value in space.fixed.items():
            _check_value(schema, defaults, key, value, f"{path}: fixed.{key}")
        base = apply_values(base, space.fixed)
        validate_space(space, schema, defaults, base)
    except (TuneError, ConfigError, plugins.UnknownComponentError) as exc:
        fail_usage(str(exc).strip("'\""))
    settings = {"plugin": plugin, "metric": metric or space.metric or DEFAULT_METRIC,
                "direction": direction or space.direction or DEFAULT_DIRECTION,
                "space": space.raw, "space_file": str(path), "base_config": base}
    return space, schema, settings


def _check_before_start(settings: dict, uri: str) -> str:
    """Before a new study exists: load the dataset (its classes go into ``settings``), check its
    splits and the MLflow store; returns the MLflow experiment."""
    from .. import plugins, runner, tracking

    base = settings["base_config"]
    try:
        dataset = runner.load_dataset(base)
    except Exception as exc:
        fail_usage(f"cannot load the dataset (it names the MLflow experiment and the study's classes): "
              f"{str(exc).splitlines()[0]}", 1)
    try:  # every trial fits on train and is scored on val: a split it needs without rows stops here
        runner.check_dataset_splits(dataset, plugins.get_classifier(settings["plugin"]), "val")
    except ValueError as exc:
        fail_usage(str(exc), 1)
    exp_name = base.get("tracking", {}).get("experiment") or dataset.name
    settings["classes"] = list(dataset.label_set.codes)
    try:
        tracking.ensure_experiment(exp_name, tracking.configure(uri))
    except Exception as exc:
        fail_usage(f"cannot use the MLflow tracking store {redact(uri)}: {str(exc).splitlines()[0]}", 1)
    return exp_name


def _join_study(study, created: bool, study_name: str, settings: dict, exp_name: str | None, resume: bool,
                uri: str) -> tuple[str, str | None]:
    """Store the settings of a study this process made, or check this worker against those of
    the study it joins; returns the study's MLflow experiment and its parent run (None: not made
    yet)."""
    from .. import tracking

    if created:
        study.set_user_attr(ATTR_SETTINGS, settings)
        study.set_user_attr(ATTR_EXPERIMENT, exp_name)
        return exp_name, None
    try:
        attrs = wait_for_settings(study)
    except TuneError as exc:
        fail_usage(str(exc))
    stored = attrs[ATTR_SETTINGS]
    if not resume:
        for key in ("plugin", "metric", "direction", "space"):
            if stored[key] != settings[key]:
                fail_usage(f"study {study_name!r} already exists with a different {key}; use the same options on every "
                      "worker, `--resume` to continue it as stored, or another --study-name")
        diff = _differences(stored["base_config"], settings["base_config"])
        if diff:
            fail_usage(f"study {study_name!r} was started with a different config at {', '.join(diff[:8])}; every worker "
                  "must use the same config (only machine paths may differ), or use --resume")
        if stored.get("classes"):
            try:
                _same_classes(study_name, stored["classes"], settings["classes"])
            except TuneError as exc:
                fail_usage(str(exc))
    parent_id = attrs.get(ATTR_PARENT_RUN)  # None: its creator died before making the parent run
    if parent_id is not None:
        try:
            tracking.get_run(parent_id, uri)
        except Exception:
            fail_usage(f"the study's parent MLflow run {parent_id} is not in {redact(uri)}: every worker must use the "
                  "same tracking server (--tracking-uri or MLFLOW_TRACKING_URI)")
    return attrs[ATTR_EXPERIMENT], parent_id


@dataclass
class _Session:
    """A study this process works on: the study and its settings, its space and the plugin's
    schema, whether this process made it, where it tracks, and the sampler and pruner used."""

    study: Any
    name: str
    settings: dict
    space: Any
    schema: Any
    created: bool
    experiment: str
    parent_id: str | None  # the study's parent MLflow run; None: not made yet
    uri: str
    store_url: str
    sampler_name: str
    pruner_name: str


def _parent_context(s: _Session):
    """The study's parent MLflow run: a new one, or the one the study records, resumed."""
    from .. import tracking

    if s.parent_id is None:
        return tracking.start_run(s.experiment, run_name=s.name, uri=s.uri, tags={
            TAG_KIND: "tune_study", TAG_STUDY: s.name, tracking.TAG_PLUGIN: s.settings["plugin"],
            "derma.optuna_storage": redact(s.store_url), tracking.TAG_VERSION: _version(),
            tracking.TAG_GIT_SHA: tracking.git_sha()})
    return tracking.start_run(s.experiment, uri=s.uri, resume_run_id=s.parent_id)


def _log_study(parent, s: _Session) -> None:
    """The new parent run's parameters, search space and base config."""
    from ..config import dump_config

    parent.log_params({"study_name": s.name, "plugin": s.settings["plugin"], "metric": s.settings["metric"],
                       "direction": s.settings["direction"], "sampler": s.sampler_name, "pruner": s.pruner_name})
    parent.log_text(yaml.safe_dump(s.settings["space"], sort_keys=False), "search_space.yaml")
    parent.log_text(dump_config(s.settings["base_config"]), "base_config.yaml")


def _run_trials(s: _Session, parent_ctx, dead, trials, timeout, resume_command: str, log_models: bool,
                quiet: bool) -> None:
    """Run this process's trials under the parent run, summarise the study on it, and print the
    best trial; a trial error exits 1 after the summary."""
    from .. import plugins, runner, tracking
    from ..config import ConfigError

    study, settings = s.study, s.settings
    # Ctrl-C or SIGTERM (lifetime.Terminated) unwinds as KeyboardInterrupt: the trial's run and the parent run
    # are ended KILLED on the way out (tracking.start_run), Optuna marks the trial FAIL; derma's console entry
    # point (cli.main) prints the reason and the account attached here in one line and exits 130 (143)
    running: Objective | None = None
    parent_run: str | None = s.parent_id
    try:
        with parent_ctx as parent:
            parent_run = parent.run_id
            if s.parent_id is None:
                study.set_user_attr(ATTR_PARENT_RUN, parent.run_id)
                _log_study(parent, s)
            if not quiet:
                how = "created" if s.created else "joined"
                click.echo(f"study {s.name!r} {how} in {redact(s.store_url)}; parent MLflow run {parent.run_id} "
                           f"(experiment {s.experiment!r}); optimising {settings['metric']} ({settings['direction']})")
                if dead:
                    click.echo(f"trials {dead} of dead local workers marked FAIL and queued again")
            objective = Objective(s.space, settings, s.schema, parent_run_id=parent.run_id, experiment=s.experiment,
                                  tracking_uri=s.uri, log_models=log_models, quiet=True)
            callbacks = [] if quiet else [_echo_trial(settings["metric"])]
            running = objective
            error: BaseException | None = None
            try:
                with quiet_interrupted_trials():  # Ctrl-C: no Optuna traceback for the stopped trial
                    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(runner.RunError,),
                                   callbacks=callbacks)
            except (TuneError, plugins.UnknownComponentError, ConfigError) as exc:
                error = exc
            finally:
                try:
                    summarize(study, parent, settings)
                except Exception as exc:
                    click.echo(f"warning: could not summarise the study on the parent run: {str(exc).splitlines()[0]}", err=True)
            if error is not None:
                parent.set_tags({tracking.TAG_ERROR: str(error)})
    except KeyboardInterrupt as exc:
        exc.run_id = None  # type: ignore[attr-defined]  # not a `derma run --resume`: the study goes on
        exc.detail = interrupted_line(study, running.running if running else None, parent_run,  # type: ignore[attr-defined]
                                      resume_command)
        raise
    if error is not None:
        fail_usage(str(error).strip("'\""), 1)
    if not quiet:
        _echo_best(study, settings["metric"])


def _resume_command(study_name: str, storage: str | None, tracking_uri: str | None) -> str:
    """The command that continues an interrupted study (passwords in URLs hidden)."""
    import shlex

    parts = ["derma", "tune", "--study-name", study_name, "--resume"]
    if storage:
        parts += ["--storage", redact(storage)]
    if tracking_uri:
        parts += ["--tracking-uri", redact(tracking_uri)]
    return shlex.join(parts)


def _dataset_classes(runner, config: dict) -> list[str]:
    try:
        return list(runner.load_dataset(config).label_set.codes)
    except Exception as exc:
        raise TuneError(f"cannot load the dataset: {str(exc).splitlines()[0]}") from None


def _same_classes(study_name: str, study: list[str], worker: list[str]) -> None:
    """Every trial of a study scores the same classes: one line naming both lists otherwise (a
    machine path such as data.dir may differ between workers, the dataset behind it may not)."""
    if list(study) != list(worker):
        raise TuneError(f"study {study_name!r} tunes on the classes {', '.join(study)} but this worker's dataset has "
                        f"{', '.join(worker)}; point data.dir (--data-dir) at the study's dataset")


def _version() -> str:
    from .. import __version__

    return __version__


def _echo_trial(metric: str) -> Callable:
    def callback(study, trial) -> None:
        value = f"{metric} = {trial.value:.4f}" if trial.value is not None else ""
        last = [v for v in trial.intermediate_values.values()]
        if trial.state.name == "PRUNED" and last:
            value = f"stopped at epoch {max(trial.intermediate_values)} ({metric} = {last[-1]:.4f})"
        run = trial.user_attrs.get(ATTR_RUN_ID, "-")
        click.echo(f"trial {trial.number:>3} {trial.state.name:<8} {value}  params {json.dumps(trial.params)}  run {run}")
    return callback


def _echo_best(study, metric: str) -> None:
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        click.echo("no completed trial yet")
        return
    best = study.best_trial
    click.echo(f"best: trial {best.number}, {metric} = {best.value:.4f}, params {json.dumps(best.params)} "
               f"(run {best.user_attrs.get(ATTR_RUN_ID)}); `derma tune --study-name {study.study_name} --best` writes its config")

