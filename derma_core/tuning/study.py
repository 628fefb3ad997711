"""Studies: Optuna storage, samplers and pruners, the trial objective, and the MLflow parent run."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click

from ..lifetime import pid_alive
from .space import _MISSING, SAMPLERS, SearchSpace, TuneError, _nest, apply_values

#: Study user attributes.
ATTR_SETTINGS = "derma.settings"
ATTR_PARENT_RUN = "derma.mlflow_parent_run_id"
ATTR_EXPERIMENT = "derma.mlflow_experiment"
#: Trial user attributes.
ATTR_RUN_ID = "mlflow_run_id"
ATTR_WORKER = "derma.worker"
ATTR_VALUES = "derma.config_values"
ATTR_RETRY_OF = "derma.retry_of"

#: MLflow tags.
TAG_STUDY = "derma.study"
TAG_TRIAL_NUMBER = "derma.trial_number"
TAG_TRIAL_STATE = "derma.trial_state"
TAG_RETRY_OF = "derma.retry_of"
TAG_KIND = "derma.kind"

DEFAULT_METRIC = "val_macro_f1"
DEFAULT_DIRECTION = "maximize"

#: Config keys that may differ between the workers of one study (paths and machine settings).
MACHINE_KEYS = ("data.dir", "data.path", "data.image_root", "data.cache_dir", "device", "quiet",
                "tracking.uri", "output.work_dir")

_PARENT_WAIT_S = 120.0


# -- storage, samplers, pruners -----------------------------------------------------------------
def default_storage() -> str:
    from .. import tracking

    return str(tracking.default_store_dir() / "optuna.journal")


def normalise_storage_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"


class StaleTrialHandler:
    """Heartbeat-stale (or dead local worker) trial: mark its MLflow run FAILED, queue a retry."""

    def __init__(self, max_retry: int | None) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracking_uri: str | None = None

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if run_id and self.tracking_uri:
            _end_trial_run(run_id, self.tracking_uri, "FAIL",
                           error=f"the worker running trial {trial.number} stopped (no heartbeat)")
        # the retry copies the user attributes: say which trial it repeats (the first of a chain)
        trial = copy.deepcopy(trial)
        trial.user_attrs[ATTR_RETRY_OF] = trial.user_attrs.get(ATTR_RETRY_OF, trial.number)
        trial.user_attrs.pop(ATTR_RUN_ID, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.retry(study, trial)


def make_storage(url: str | None, heartbeat_interval: int, grace_period: int, handler: StaleTrialHandler):
    """A journal file (default, one machine) or an RDB URL with heartbeats (several machines)."""
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = url or default_storage()
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    url = normalise_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                     grace_period=grace_period, heartbeat_stale_trial_callback=handler)
                return storage, url
            except ImportError as exc:
                raise TuneError(f"--storage {redact(url)}: {exc} (pip install psycopg2-binary for PostgreSQL)") from None
            except Exception as exc:
                # workers starting together on an empty database race to create Optuna's tables:
                # the losers fail on a unique constraint and find the tables there a moment later
                if attempt == 5 or "OperationalError" in type(exc).__name__ and "could not connect" in str(exc):
                    raise TuneError(f"--storage {redact(url)}: cannot open it: {str(exc).splitlines()[0]}") from None
                time.sleep(0.5 + random.random() * 1.5)
    raise AssertionError("unreachable")


def make_sampler(name: str, space: SearchSpace, seed: int | None):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # constant_liar keeps parallel workers from all trying the same promising point
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise TuneError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(name: str, options: dict[str, Any] | None):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    opts = {k: int(v) for k, v in (options or {}).items() if k != "name"}
    return optuna.pruners.MedianPruner(n_startup_trials=opts.get("n_startup_trials", 5),
                                       n_warmup_steps=opts.get("n_warmup_steps", 1),
                                       interval_steps=opts.get("interval_steps", 1))


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------
class _InterruptedTrialFilter(logging.Filter):
    """Drops Optuna's two warnings about a trial stopped by Ctrl-C or SIGTERM ("Trial N failed with
    parameters ... KeyboardInterrupt()" with its traceback, and "Trial N failed with value None"):
    derma says what happened in one line (:func:`interrupted_line`)."""

    def __init__(self) -> None:
        super().__init__()
        self.trial: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, KeyboardInterrupt):
            self.trial = record.getMessage().split(" ", 2)[1]
            return False
        return not (self.trial is not None and record.getMessage().startswith(f"Trial {self.trial} failed with value"))


@contextlib.contextmanager
def quiet_interrupted_trials():
    """While a study optimises: no Optuna traceback for a trial stopped by Ctrl-C or SIGTERM."""
    logger = logging.getLogger("optuna.study._optimize")
    quiet = _InterruptedTrialFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def interrupted_line(study, stopped: int | None, parent_run_id: str | None, resume: str) -> str:
    """What an interrupted ``derma tune`` says after the reason (``interrupted (Ctrl-C)``): the
    study, its trials, the trial it stopped and the parent run, and how to go on."""
    from optuna.trial import TrialState

    try:
        trials = study.get_trials(deepcopy=False)
    except Exception:  # the storage itself went away: say what is known
        trials = []
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    parts = [f"{done} trial{'' if done == 1 else 's'} complete" + (f", {pruned} pruned" if pruned else "")]
    if stopped is not None:
        state = next((t.state.name for t in trials if t.number == stopped), "FAIL")
        run = next((t.user_attrs.get(ATTR_RUN_ID) for t in trials if t.number == stopped), None)
        parts.append(f"trial {stopped} stopped and marked {state}" + (f" (its MLflow run {run} KILLED)" if run else ""))
    if parent_run_id:
        parts.append(f"parent MLflow run {parent_run_id} ended as KILLED")
    return f": study {study.study_name!r}: {'; '.join(parts)}; continue it with `{resume}`"


# -- MLflow bookkeeping --------------------------------------------------------------------------
def _end_trial_run(run_id: str, uri: str, state: str, error: str | None = None) -> None:
    """Tag a trial's MLflow run with its final Optuna state (and end it when a worker died)."""
    from .. import tracking

    try:
        tracker = tracking.Tracker(run_id, uri)
        tags = {TAG_TRIAL_STATE: state}
        if error:
            tags[tracking.TAG_ERROR] = error
        tracker.set_tags(tags)
        if error and tracker.status() == "RUNNING":
            tracker.set_terminated("FAILED")
    except Exception as exc:  # the study must go on when the tracking server hiccups
        click.echo(f"warning: could not tag MLflow run {run_id}: {str(exc).splitlines()[0]}", err=True)


def _figures(study) -> dict[str, Any]:
    """Optuna's history, parameter-importance and parallel-coordinate plots (matplotlib)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as vis

    out: dict[str, Any] = {}
    plots = {"optuna_history": vis.plot_optimization_history,
             "optuna_param_importances": vis.plot_param_importances,
             "optuna_parallel_coordinate": vis.plot_parallel_coordinate}
    verbosity = optuna.logging.get_verbosity()
    # "There are no complete trials." and the like: that figure is skipped, which is all that happens
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return _plot_all(study, plots, out)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _plot_all(study, plots: dict, out: dict[str, Any]) -> dict[str, Any]:
    import optuna

    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            out[name] = fig
        except Exception as exc:  # e.g. importances need two finished trials that differ
            optuna.logging.get_logger("derma").debug("skipped %s: %s", name, exc)
    return out


def trials_frame(study):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "run_id": t.user_attrs.get(ATTR_RUN_ID, ""), "duration_s": duration,
                     **{f"param_{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def summarize(study, tracker, settings: dict) -> None:
    """Put the best trial (params, value, config) and Optuna's figures on the parent run."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tags: dict[str, Any] = {f"derma.trials_{k.lower()}": v for k, v in counts.items()}
    metric = settings["metric"]
    tracker.log_metrics({"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"],
                         "trials_failed": counts["FAIL"]}, step=len(trials))
    if counts["COMPLETE"]:
        best = study.best_trial
        tags.update({"derma.best_trial": best.number, "derma.best_run_id": best.user_attrs.get(ATTR_RUN_ID),
                     f"derma.best_{metric}": best.value})
        # MLflow params are write-once; the best trial changes while a study runs, so the best
        # params live in tags (best.<param>) and in best.json.
        tags.update({f"best.{k}": v for k, v in best.params.items()})
        tracker.log_metrics({f"best_{metric}": best.value}, step=len(trials))
        tracker.log_dict({"trial": best.number, "value": best.value, "metric": metric,
                          "params": best.params, "config_values": best.user_attrs.get(ATTR_VALUES, {}),
                          "run_id": best.user_attrs.get(ATTR_RUN_ID)}, "best.json")
        tracker.log_text(best_config_yaml(study, settings), "best_config.yaml")
    tracker.set_tags(tags)
    frame = trials_frame(study)
    if len(frame):  # log_text overwrites; log_table would append to the previous worker's table
        from .. import tracking

        tracker.log_text(tracking.table_csv(frame), "trials.csv")
    for name, fig in _figures(study).items():
        tracker.log_figure(fig, f"figures/{name}.png")


# -- studies -------------------------------------------------------------------------------------
def open_study(storage, name: str, direction: str, sampler, pruner, create: bool):
    """(study, created): exactly one of several simultaneous workers creates a study."""
    import optuna

    if create:
        try:
            return optuna.create_study(storage=storage, study_name=name, direction=direction,
                                       sampler=sampler, pruner=pruner, load_if_exists=False), True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise TuneError(f"no study named {name!r} in this storage (studies there: {', '.join(names) or 'none'})") from None
    return study, False


def wait_for_settings(study, timeout: float = _PARENT_WAIT_S) -> dict:
    """A joining worker waits until the creating worker has stored settings and parent run
    (settings alone after ``timeout``: the creator died, and the caller makes the parent run)."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = study.user_attrs
        if ATTR_SETTINGS in attrs and ATTR_PARENT_RUN in attrs:
            return attrs
        if time.monotonic() > deadline:
            if ATTR_SETTINGS in attrs:  # the creator died after storing settings: the caller makes the parent run
                return attrs
            raise TuneError(f"study {study.study_name!r} exists but has no derma settings or parent run after "
                            f"{timeout:.0f} s: it was not made by `derma tune`, or its creator died while starting; "
                            "pick another --study-name")
        time.sleep(0.5)


def _differences(a: dict, b: dict) -> list[str]:
    from ..config import flatten

    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k, _MISSING) != fb.get(k, _MISSING) and k not in MACHINE_KEYS
            and not k.startswith("tracking.")]


def trial_config(settings: dict, values: dict[str, Any], *, experiment: str, run_name: str,
                 tracking_uri: str, log_models: bool, quiet: bool) -> dict:
    """The config one trial runs with: validation split only, the study's experiment."""
    config = apply_values(settings["base_config"], values)
    config.setdefault("evaluation", {})["split"] = "val"  # the test split is never read in a study
    _carve_calibration(config)  # nor the calibration images: trials fit and score on val's selection part
    track = config.setdefault("tracking", {})
    track.update({"experiment": experiment, "run_name": run_name, "uri": tracking_uri})
    if not log_models:
        track["log_model"] = False
    config["quiet"] = bool(quiet or config.get("quiet"))
    return config


def best_config(study, settings: dict) -> dict:
    """The base config with the best trial's values, evaluated on the test split."""
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise TuneError(f"study {study.study_name!r} has no completed trial yet")
    best = study.best_trial
    config = apply_values(settings["base_config"], best.user_attrs.get(ATTR_VALUES, {}))
    config.setdefault("evaluation", {})["split"] = "test"
    _carve_calibration(config)
    return config


def _carve_calibration(config: dict) -> None:
    """A study selects on val, whatever the backend: with ``evaluation.calibration_split.source:
    auto`` its trials and its best config carve the calibration split from val even for a backend
    that does not select by itself (zero-shot), so the images the final run calibrates on are ones
    no trial saw (derma_core/data/calibration_split.py)."""
    split = config.setdefault("evaluation", {}).setdefault("calibration_split", {})
    if split.get("source", "auto") == "auto":
        split["source"] = "carve"


def best_config_yaml(study, settings: dict) -> str:
    from ..config import dump_config

    config = best_config(study, settings)
    best = study.best_trial
    header = (f"# best trial {best.number} of study {study.study_name!r}: {settings['metric']} = {best.value:.6g} "
              f"({settings['direction']}), MLflow run {best.user_attrs.get(ATTR_RUN_ID)}\n"
              f"# params: {json.dumps(best.params)}\n"
              f"# evaluate it on the test split: derma run --plugin {settings['plugin']} --config FILE\n")
    return header + dump_config(config)


class Objective:
    """One trial: sample, build the config, ``runner.run`` it as a nested run, return the metric."""

    def __init__(self, space: SearchSpace, settings: dict, schema, *, parent_run_id: str, experiment: str,
                 tracking_uri: str, log_models: bool, quiet: bool) -> None:
        self.space, self.settings, self.schema = space, settings, schema
        self.parent_run_id, self.experiment, self.tracking_uri = parent_run_id, experiment, tracking_uri
        self.log_models, self.quiet = log_models, quiet
        self.metric = settings["metric"]
        #: The number of the trial this process is running (None between trials).
        self.running: int | None = None

    def __call__(self, trial) -> float:
        self.running = trial.number
        try:
            value = self._trial(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: `derma tune` reports this trial as the one stopped
            raise
        except BaseException:
            self.running = None
            raise
        self.running = None
        return value

    def _trial(self, trial) -> float:
        import optuna

        from .. import runner, tracking
        from ..config import ConfigError
        from ..interfaces import TrialPruned

        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{os.getpid()}")
        values = self.space.sample(trial)
        for key, value in values.items():
            try:
                self.schema.validate(_nest(key, value), f"trial {trial.number}: {key}")
            except ConfigError as exc:
                raise TuneError(str(exc)) from None
        trial.set_user_attr(ATTR_VALUES, values)
        config = trial_config(self.settings, values, experiment=self.experiment,
                              run_name=f"{trial.study.study_name}-trial-{trial.number}",
                              tracking_uri=self.tracking_uri, log_models=self.log_models, quiet=self.quiet)
        tags = {TAG_KIND: "tune_trial", TAG_STUDY: trial.study.study_name, TAG_TRIAL_NUMBER: trial.number,
                TAG_TRIAL_STATE: "RUNNING"}
        retry_of = trial.user_attrs.get(ATTR_RETRY_OF)
        if retry_of is not None:
            tags[TAG_RETRY_OF] = retry_of
        run_id: str | None = None

        def started(rid: str) -> None:
            nonlocal run_id
            run_id = rid
            trial.set_user_attr(ATTR_RUN_ID, rid)
            tracking.Tracker(rid, self.tracking_uri).log_params({f"optuna.{k}": v for k, v in trial.params.items()})

        def reporter(epoch: int, metrics: dict) -> None:
            value = metrics.get(self.metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return
            trial.report(float(value), step=int(epoch))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric} = {float(value):.4f}")

        try:
            result = runner.run(config, reporter=reporter, parent_run_id=self.parent_run_id,
                                extra_tags=tags, on_started=started)
        except (optuna.TrialPruned, TrialPruned) as exc:
            if run_id:
                _end_trial_run(run_id, self.tracking_uri, "PRUNED")
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException:
            if run_id:
                _end_trial_run(run_id, self.tracking_uri, "FAIL")
            raise
        value = result.metrics.get(self.metric)
        if value is None or math.isnan(float(value)):
            _end_trial_run(result.run_id, self.tracking_uri, "FAIL")
            available = ", ".join(sorted(k for k in result.metrics if not k.endswith(("_ci_low", "_ci_high"))))
            raise TuneError(f"--metric {self.metric!r} is not among the trial's metrics ({available or 'none'})")
        _end_trial_run(result.run_id, self.tracking_uri, "COMPLETE")
        return float(value)


def fail_dead_local_trials(study, handler: StaleTrialHandler) -> list[int]:
    """Journal storage has no heartbeats: fail RUNNING trials whose worker process on this host is gone."""
    from optuna.storages.journal import JournalStorage
    from optuna.trial import TrialState

    storage = study._storage  # Optuna's own fail_stale_trials works on the storage the same way
    if not isinstance(storage, JournalStorage):
        return []
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(ATTR_WORKER, ""))
        whost, _, pid = worker.rpartition(":")
        if whost != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                handler(study, storage.get_trial(trial._trial_id))
        except Exception:  # another worker got there first
            continue
    return failed

