"""``derma tune``: Optuna searches over config keys, every trial a nested MLflow run.

A search space is a YAML file over the backend's config keys (``configs/tune/<plugin>.yaml``)::

    metric: val_macro_f1          # optional; --metric overrides
    direction: maximize           # optional; --direction overrides
    pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 1}   # optional; or `median` / `none`
    fixed:                        # optional: config values every trial uses
      train.epochs: 10
    params:
      class_weighting.mode: {choices: [none, capped, uncapped]}
      class_weighting.cap:  {float: [1.5, 10], log: true, when: {class_weighting.mode: capped}}
      train.lr:             {float: [1.0e-5, 3.0e-3], log: true, grid: [1.0e-4, 5.0e-4]}
      lora.alpha:           {choices: [1, 2, 4], multiple_of: lora.r}   # alpha = 1, 2 or 4 times r

Each entry is one of ``choices: [...]``, ``float: [low, high]`` or ``int: [low, high]`` (with
optional ``log``, ``step``). ``when: {key: value or [values]}`` samples the parameter only when
another parameter took one of those values (otherwise the key keeps its configured value);
``multiple_of: KEY`` multiplies the sampled factor by KEY's value (the Optuna parameter is then
named ``key/KEY``); ``grid: [...]`` gives the values the grid sampler uses for a range.
Every key and every value is checked against the backend's config schema before any trial runs.

How a trial runs: the base config (defaults < plugin file < ``--config`` < ``-o``, then
``fixed``) gets the sampled values, ``evaluation.split`` is forced to ``val`` (a study never
reads the test split) and :func:`derma_core.runner.run` records it as a child of the study's
parent MLflow run. The runner hands ``fit`` and the val evaluation only val's selection part:
the calibration split carved from val is never predicted, scored or seen in a trial
(``evaluation.calibration_split.source: auto`` becomes ``carve`` in trials and in the best
config, so a zero-shot backend's study leaves it unseen too). Per-epoch metrics that a backend reports through ``ctx.report_epoch`` go to
the trial, so the median pruner can stop it; a pruned trial ends PRUNED in Optuna and KILLED
(tag ``derma.trial_state=PRUNED``) in MLflow.

Nothing here assumes a label set: the objective is any metric the trial's run logs (default
``val_macro_f1``, over the dataset's own classes). A study records its dataset's class codes;
a worker joining (or resuming) it with a dataset of other classes is refused in one line.

Storage: by default one journal file, ``mlruns/optuna.journal`` (safe for several processes on
one machine). ``--storage postgresql+psycopg2://...`` (or any SQLAlchemy URL) shares a study
between machines, with heartbeats: a trial whose worker stops sending them is marked FAIL (its
MLflow run FAILED) and queued again (``--max-retry``).
"""


from __future__ import annotations

from .space import (PRUNERS, SAMPLERS, Param, SearchSpace, TuneError, apply_values, load_space, parse_space,
                    plugin_schema, validate_space)
from .study import (ATTR_EXPERIMENT, ATTR_PARENT_RUN, ATTR_RETRY_OF, ATTR_RUN_ID, ATTR_SETTINGS, ATTR_VALUES,
                    ATTR_WORKER, DEFAULT_DIRECTION, DEFAULT_METRIC, MACHINE_KEYS, TAG_RETRY_OF,
                    TAG_STUDY, TAG_TRIAL_NUMBER, TAG_TRIAL_STATE, Objective, StaleTrialHandler, best_config,
                    best_config_yaml, default_storage, fail_dead_local_trials, make_pruner, make_sampler,
                    make_storage, normalise_storage_url, open_study, summarize, trial_config)

__all__ = [
    "Param",
    "SearchSpace",
    "TuneError",
    "apply_values",
    "load_space",
    "parse_space",
    "plugin_schema",
    "validate_space",
    "ATTR_EXPERIMENT",
    "ATTR_PARENT_RUN",
    "ATTR_RETRY_OF",
    "ATTR_RUN_ID",
    "ATTR_SETTINGS",
    "ATTR_VALUES",
    "ATTR_WORKER",
    "DEFAULT_DIRECTION",
    "DEFAULT_METRIC",
    "MACHINE_KEYS",
    "PRUNERS",
    "SAMPLERS",
    "TAG_RETRY_OF",
    "TAG_STUDY",
    "TAG_TRIAL_NUMBER",
    "TAG_TRIAL_STATE",
    "Objective",
    "StaleTrialHandler",
    "best_config",
    "best_config_yaml",
    "default_storage",
    "fail_dead_local_trials",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "normalise_storage_url",
    "open_study",
    "summarize",
    "trial_config",
]
