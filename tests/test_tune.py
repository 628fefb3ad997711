"""`derma tune` on one machine: search spaces, validation-only trials, nested MLflow runs,
pruning, --resume, --best round trip and a killed local worker.

The backend is the in-test ``tunetoy`` plugin (tests/test_tune_plugin.py), whose validation score
is a known function of its config, so every assertion is about derma's tuning, not about learning.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

HERE = Path(__file__).resolve().parent
PLUGIN_FILE = HERE / "test_tune_plugin.py"
REPO = HERE.parent


def _load_toy():
    spec = importlib.util.spec_from_file_location("derma_tunetoy_plugin", PLUGIN_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toy():
    """The toy backend registered on the plugin manager for this module, unregistered after."""
    import torch

    from derma_core import plugins

    torch.set_num_threads(1)
    module = _load_toy()
    plugins.load_plugins()
    plugins.pm.register(module, name=module.PLUGIN_NAME)
    yield module
    plugins.pm.unregister(name=module.PLUGIN_NAME)
    sys.modules.pop("derma_tunetoy_plugin", None)


@pytest.fixture(scope="module")
def work(tmp_path_factory, toy, mlflow_template_db):
    """One working folder (and local MLflow + Optuna store) shared by this module's tests."""
    import shutil

    root = tmp_path_factory.mktemp("tune")
    (root / "mlruns").mkdir()
    shutil.copy(mlflow_template_db, root / "mlruns" / "mlflow.db")  # a migrated store: creating one costs seconds
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DERMA_MLRUNS", str(root / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DERMA_CONFIG_DIR", raising=False)
        yield root


def derma(*args: str):
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def write_space(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_study(work: Path, name: str):
    import optuna

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(work / "mlruns" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def client(work: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")


TOY_SPACE = {
    "params": {
        "class_weighting.mode": {"choices": ["none", "capped", "uncapped"]},
        "class_weighting.cap": {"float": [1.5, 10.0], "log": True, "when": {"class_weighting.mode": "capped"}},
        "model.dropout": {"choices": [0.0, 0.2]},
        "train.lr": {"float": [1e-4, 1e-2], "log": True},
    },
    "pruner": "none",
}


# -- search spaces --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "llava_lora"])
def test_shipped_spaces_sample_conditionally_and_validate(name, toy):
    """The shipped spaces: cap only when capped, alpha a multiple of r, every value schema-valid."""
    import optuna

    from derma_core.config import build_schema, configs_dir
    from derma_core.tuning import load_space, validate_space

    space = load_space(REPO / "configs" / "tune" / f"{name}.yaml")
    defaults, schema = build_schema([configs_dir() / "default.yaml", toy.schema_path()])
    validate_space(space, schema, defaults, defaults)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        values = space.sample(trial)
        study.tell(trial, 0.0)
        for key, value in values.items():
            schema.validate({key.split(".")[0]: {key.split(".")[1]: value}}, "sampled")
        if name == "resnet18":
            assert ("class_weighting.cap" in values) == (values["class_weighting.mode"] == "capped")
            if "class_weighting.cap" in values:
                assert 1.5 <= values["class_weighting.cap"] <= 10
            seen.add(values["class_weighting.mode"])
        else:
            factor = trial.params["lora.alpha/lora.r"]
            assert values["lora.alpha"] == factor * values["lora.r"]
            assert values["lora.r"] in (8, 16, 32, 64, 128)
            seen.add(factor)
    assert len(seen) == 3
    real = configs_dir() / f"{name}.yaml"
    if real.exists():  # the real backend's schema, when its config has landed
        defaults, schema = build_schema([configs_dir() / "default.yaml", real])
        validate_space(space, schema, defaults, defaults)


@pytest.mark.parametrize("params, message", [
    ({"train.lr": {"float": [1e-2, 1e-4]}}, "low 0.01 must be below high"),
    ({"train.lr": {"float": [0.0, 1e-2], "log": True}}, "log range needs low > 0"),
    ({"train.lr": {"choices": [1e-3], "float": [1e-4, 1e-2]}}, "exactly one of"),
    ({"class_weighting.cap": {"float": [1.5, 10.0], "when": {"class_weighting.mode": "capped"}}},
     "when names 'class_weighting.mode', which is not a searched parameter"),
    ({"lora.alpha": {"choices": [1, 2], "multiple_of": "lora.r"}}, "multiple_of names 'lora.r'"),
    ({"lora.alpha": {"choices": [1, 2], "multiple_of": "lora.r"},
      "lora.r": {"choices": [8, 16], "when": {"lora.alpha": 2}}}, "form a cycle"),
    ({"train.lr": {"float": [1e-4, 1e-2], "grid": [0.5]}}, "outside"),
    ({"train.lr": {"float": [1e-4, 1e-2], "steps": 3}}, "unknown field"),
])
def test_space_structure_errors_name_the_parameter(params, message):
    from derma_core.tuning import TuneError, parse_space

    with pytest.raises(TuneError, match=message) as info:
        parse_space({"params": params}, "space.yaml")
    assert "space.yaml: params." in str(info.value)


def test_dependencies_are_sampled_first_whatever_the_file_order():
    import optuna

    from derma_core.tuning import parse_space

    space = parse_space({"params": {
        "lora.alpha": {"choices": [2], "multiple_of": "lora.r"},
        "class_weighting.cap": {"float": [1.5, 10.0], "when": {"class_weighting.mode": "capped"}},
        "class_weighting.mode": {"choices": ["capped"]},
        "lora.r": {"choices": [8]},
    }})
    assert [p.key for p in space.params] == ["lora.r", "lora.alpha", "class_weighting.mode", "class_weighting.cap"]
    values = space.sample(optuna.create_study().ask())
    assert values["lora.alpha"] == 16 and "class_weighting.cap" in values


@pytest.mark.parametrize("params, fragment", [
    ({"class_weighting.capp": {"float": [1.5, 10.0]}}, "class_weighting.capp"),
    ({"train.nonsense": {"choices": [1, 2]}}, "train.nonsense"),
    ({"class_weighting.mode": {"choices": ["none", "squared"]}}, "class_weighting.mode must be one of"),
    ({"train.epochs": {"float": [1.0, 5.0]}}, "train.epochs must be int"),
    ({"train": {"choices": [1, 2]}}, "'train' is a config section"),
])
def test_bad_key_or_value_is_refused_before_any_trial(work, toy, params, fragment):
    toy.FITTED.clear()
    space = write_space(work, "bad", {"params": params})
    result = derma("tune", "--plugin", "tunetoy", "--space", str(space), "--study-name", "refused", "--trials", "2")
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "bad.yaml: params." in result.output
    assert toy.FITTED == []  # no trial started
    import optuna

    journal = work / "mlruns" / "optuna.journal"
    if journal.exists():
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert "refused" not in optuna.get_all_study_names(JournalStorage(JournalFileBackend(str(journal))))


def test_join_with_another_space_is_refused(work, toy):
    space = write_space(work, "first", {"params": {"train.lr": {"float": [1e-4, 1e-2], "log": True}}, "pruner": "none"})
    other = write_space(work, "second", {"params": {"train.lr": {"float": [1e-5, 1e-2], "log": True}}, "pruner": "none"})
    assert derma("tune", "-p", "tunetoy", "--space", str(space), "--study-name", "joined", "--trials", "0", "-q").exit_code == 0
    result = derma("tune", "-p", "tunetoy", "--space", str(other), "--study-name", "joined", "--trials", "1")
    assert result.exit_code == 2 and "different space" in result.output
    result = derma("tune", "-p", "tunetoy", "--space", str(space), "--study-name", "joined", "--trials", "1",
                   "-o", "train.epochs=5")
    assert result.exit_code == 2 and "train.epochs" in result.output
    result = derma("tune", "--study-name", "never-made", "--resume", "--trials", "1")
    assert result.exit_code == 2 and "no study named 'never-made'" in result.output


def test_a_worker_whose_dataset_has_other_classes_is_refused(work, toy):
    """data.dir is a machine path (it may differ between workers); the classes behind it may not."""
    four, two = work / "four-classes", work / "two-classes"
    for folder, codes in ((four, toy.LABEL_SET.codes), (two, ("benign", "malignant"))):
        folder.mkdir()
        (folder / "classes.txt").write_text("\n".join(codes))
    space = write_space(work, "classes", {"params": {"train.lr": {"float": [1e-4, 1e-2], "log": True}},
                                          "pruner": "none"})
    args = ["tune", "-p", "tunetoy", "--space", str(space), "--study-name", "classes", "--trials", "0", "-q"]
    assert derma(*args, "--data-dir", str(four)).exit_code == 0
    toy.FITTED.clear()
    join = [*args, "--data-dir", str(two)]
    resume = ["tune", "--study-name", "classes", "--resume", "--trials", "1", "-q", "--data-dir", str(two)]
    for command in (join, resume):
        result = derma(*command)
        assert result.exit_code != 0, result.output
        line = [l for l in result.output.splitlines() if l.startswith("error:")]
        assert len(line) == 1, result.output
        assert ", ".join(toy.LABEL_SET.codes) in line[0] and "benign, malignant" in line[0]
    assert toy.FITTED == []  # no trial started
    assert derma(*args, "--data-dir", str(four)).exit_code == 0  # the same classes join


# -- a local study end to end -----------------------------------------------------------------
@pytest.fixture(scope="module")
def local_study(work, toy):
    toy.PREDICTED.clear()
    space = write_space(work, "toy", TOY_SPACE)
    result = derma("tune", "--plugin", "tunetoy", "--space", str(space), "--study-name", "local",
                   "--trials", "5", "--sampler", "random", "--sampler-seed", "3")
    assert result.exit_code == 0, result.output
    return load_study(work, "local"), list(toy.PREDICTED), result.output


def test_every_trial_is_a_nested_validation_only_run(work, local_study):
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_PARENT_RUN, ATTR_RUN_ID

    study, predicted, output = local_study
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert predicted == ["val"] * 5  # predict() never saw the test split
    parent_id = study.user_attrs[ATTR_PARENT_RUN]
    mlf = client(work)
    parent = mlf.get_run(parent_id)
    assert parent.data.tags["derma.kind"] == "tune_study" and parent.info.status == "FINISHED"
    capped = 0
    for t in trials:
        run = mlf.get_run(t.user_attrs[ATTR_RUN_ID])
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent_id
        assert run.info.experiment_id == parent.info.experiment_id
        assert tags["derma.trial_number"] == str(t.number) and tags["derma.trial_state"] == "COMPLETE"
        assert run.data.params["eval_split"] == "val"
        assert not [m for m in run.data.metrics if m.startswith("test_")]
        history = {m.step: m.value for m in mlf.get_metric_history(run.info.run_id, "val_macro_f1")}
        assert sorted(history) == [1, 2, 3, 4]  # epochs 1..3 (reported to the trial) and the final value
        assert history[4] == pytest.approx(t.value)  # the final evaluation comes after the last epoch
        assert run.data.metrics["val_macro_f1"] == pytest.approx(t.value)  # so MLflow shows it as the run's value
        assert [history[e] for e in (1, 2, 3)] == pytest.approx([t.intermediate_values[e] for e in (1, 2, 3)])
        assert float(run.data.params["lr"]) == pytest.approx(t.params["train.lr"])
        # conditional parameter: cap sampled (and logged) only for capped weights
        assert ("class_weighting.cap" in t.params) == (t.params["class_weighting.mode"] == "capped")
        capped += "class_weighting.cap" in t.params
        arts = {a.path for a in mlf.list_artifacts(run.info.run_id)}
        assert "predictions_val.csv" in arts and "predictions.csv" not in arts
    children = mlf.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 5
    best = study.best_trial
    assert parent.data.tags["derma.best_trial"] == str(best.number)
    assert parent.data.tags["derma.best_run_id"] == best.user_attrs[ATTR_RUN_ID]
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(best.value)
    for key, value in best.params.items():
        assert parent.data.tags[f"best.{key}"] == str(value)
    figures = {a.path for a in mlf.list_artifacts(parent_id, "figures")}
    assert figures == {"figures/optuna_history.png", "figures/optuna_param_importances.png",
                       "figures/optuna_parallel_coordinate.png"}
    assert f"best: trial {best.number}" in output


def test_best_config_round_trips_through_derma_run(work, toy, local_study):
    study, _, _ = local_study
    best = study.best_trial
    out = work / "best.yaml"
    result = derma("tune", "--study-name", "local", "--best", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text() in result.output
    config = yaml.safe_load(out.read_text())
    assert config["evaluation"]["split"] == "test"
    assert config["train"]["lr"] == pytest.approx(best.params["train.lr"])
    assert config["class_weighting"]["mode"] == best.params["class_weighting.mode"]
    toy.PREDICTED.clear()
    result = derma("run", "--plugin", "tunetoy", "--config", str(out), "--run-name", "best-rerun")
    assert result.exit_code == 0, result.output
    assert toy.PREDICTED == ["test"]
    mlf = client(work)
    run = mlf.search_runs([mlf.get_experiment_by_name("tunetoy-data").experiment_id],
                          "attributes.run_name = 'best-rerun'")[0]
    assert float(run.data.params["lr"]) == pytest.approx(best.params["train.lr"])
    assert run.data.params["class_weighting"] == best.params["class_weighting.mode"]
    # the toy's quality only depends on the config, so the test split scores what validation did
    assert run.data.metrics["test_macro_f1"] > 0


def test_resume_continues_the_study_and_pruning_ends_trials_pruned(work, toy):
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_PARENT_RUN, ATTR_RUN_ID

    space = write_space(work, "prune", {
        "params": {"train.lr": {"choices": [3e-3, 1e-3, 1e-5, 1e-7]}},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}})
    result = derma("tune", "-p", "tunetoy", "--space", str(space), "--study-name", "pruning", "--trials", "0")
    assert result.exit_code == 0, result.output
    study = load_study(work, "pruning")
    for lr in (3e-3, 1e-3, 1e-5, 1e-7):  # two good trials, then one the median pruner stops, then one that gives up
        study.enqueue_trial({"train.lr": lr})
    toy.FITTED.clear()
    result = derma("tune", "--study-name", "pruning", "--resume", "--trials", "4")
    assert result.exit_code == 0, result.output
    trials = load_study(work, "pruning").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert toy.FITTED == [3, 3, 1, 1]  # the pruned trials stopped after their first epoch
    assert list(trials[2].intermediate_values) == [1]
    mlf = client(work)
    parent_id = study.user_attrs[ATTR_PARENT_RUN]
    for t in trials:
        run = mlf.get_run(t.user_attrs[ATTR_RUN_ID])
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        pruned = t.state == TrialState.PRUNED
        assert run.info.status == ("KILLED" if pruned else "FINISHED")
        assert run.data.tags["derma.trial_state"] == ("PRUNED" if pruned else "COMPLETE")
        assert "derma.error" not in run.data.tags
    assert mlf.get_run(parent_id).data.tags["derma.trials_pruned"] == "2"
    assert "PRUNED" in result.output and "stopped at epoch 1" in result.output


def test_killed_local_worker_trial_is_failed_and_retried(work, toy):
    """Journal storage has no heartbeats: the next worker on the host fails and requeues it."""
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_RETRY_OF, ATTR_RUN_ID, ATTR_WORKER

    space = write_space(work, "slow", {"params": {"train.lr": {"float": [1e-3, 1e-2], "log": True}}, "pruner": "none"})
    args = ["tune", "-p", "tunetoy", "--space", str(space), "--study-name", "killed", "-o", "train.sleep=3", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    worker = subprocess.Popen([sys.executable, str(PLUGIN_FILE), *args, "--trials", "3"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert worker.poll() is None, worker.stdout.read().decode()
            assert time.monotonic() < deadline, "the worker never started a trial"
            time.sleep(0.3)
            try:
                study = load_study(work, "killed")
            except KeyError:
                continue
            # kill while the toy sleeps after epoch 1, not while the worker appends to the journal
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values]
            victim = running[0] if running else None
        assert victim.user_attrs[ATTR_WORKER].endswith(f":{worker.pid}")
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    result = derma("tune", "--study-name", "killed", "--resume", "--trials", "1", "-o", "train.sleep=0")
    # train.sleep differs, but --resume takes the stored config with this worker's overrides on top
    assert result.exit_code == 0, result.output
    assert f"trials [{victim.number}] of dead local workers" in result.output
    trials = load_study(work, "killed").get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead_run = client(work).get_run(victim.user_attrs[ATTR_RUN_ID])
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["derma.trial_state"] == "FAIL"
    assert retries[0].user_attrs[ATTR_RUN_ID] != victim.user_attrs[ATTR_RUN_ID]


def test_grid_sampler_covers_the_grid_once_and_a_failing_trial_does_not_stop_the_study(work, toy):
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_RUN_ID

    space = write_space(work, "grid", {"params": {"train.lr": {"choices": [0.9, 3e-3]},
                                                  "model.dropout": {"choices": [0.0, 0.2]}}, "pruner": "none"})
    result = derma("tune", "-p", "tunetoy", "--space", str(space), "--study-name", "grid", "--sampler", "grid",
                   "--trials", "10")
    assert result.exit_code == 0, result.output
    trials = load_study(work, "grid").get_trials()
    assert len(trials) == 4  # the grid is exhausted before --trials
    assert sorted((t.params["train.lr"], t.params["model.dropout"]) for t in trials) == \
        [(3e-3, 0.0), (3e-3, 0.2), (0.9, 0.0), (0.9, 0.2)]
    for t in trials:
        diverged = t.params["train.lr"] == 0.9
        assert t.state == (TrialState.FAIL if diverged else TrialState.COMPLETE)
        run = client(work).get_run(t.user_attrs[ATTR_RUN_ID])
        assert run.info.status == ("FAILED" if diverged else "FINISHED")
        assert run.data.tags["derma.trial_state"] == ("FAIL" if diverged else "COMPLETE")
        if diverged:
            assert "diverged" in run.data.tags["derma.error"]


def test_grid_needs_values_for_a_range_and_a_missing_metric_stops_the_study(work, toy):
    from optuna.trial import TrialState

    from derma_core.tuning import TuneError, parse_space

    with pytest.raises(TuneError, match="params.train.lr: the grid sampler needs `grid: \\[values\\]`"):
        parse_space({"params": {"train.lr": {"float": [1e-4, 1e-2], "log": True}}}, "g.yaml").grid()
    space = write_space(work, "metric", {"params": {"train.lr": {"choices": [3e-3]}}, "pruner": "none"})
    result = derma("tune", "-p", "tunetoy", "--space", str(space), "--study-name", "nometric", "--trials", "3",
                   "--metric", "val_auroc")
    assert result.exit_code == 1
    assert "--metric 'val_auroc' is not among the trial's metrics (val_accuracy, val_macro_f1)" in result.output
    assert [t.state for t in load_study(work, "nometric").get_trials()] == [TrialState.FAIL]
