"""Ctrl-C (and SIGTERM) in ``derma tune``: one line (the study, the trials done, how to resume), no
Optuna traceback, exit 130 (143); the study and its MLflow runs are left consistent (the
interrupted trial FAIL in Optuna, its run KILLED and tagged FAIL, the parent run KILLED), so
``--resume`` continues it (tests/test_tune.py covers --resume). The console entry point
(``derma_core.cli.main``) is driven in a subprocess with the in-test ``tunetoy`` backend
(tests/test_tune_plugin.py) registered."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from derma_core.testing import sigint_default

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DRIVER = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import torch
torch.set_num_threads(1)
import test_tune_plugin
test_tune_plugin.register()
from derma_core import hookimpl, plugins


class EmptyVal:
    @hookimpl
    def register_datasets(self, register):
        def empty_val(config):
            dataset = test_tune_plugin.toy_dataset(config)
            dataset.splits["val"] = dataset.splits["val"].subset([])
            return dataset
        register("tunetoy_empty_val", empty_val)


plugins.pm.register(EmptyVal(), name="tunetoy-empty-val")
from derma_core.cli import main
sys.argv[0] = "derma"
main()
"""


@pytest.fixture
def work(tmp_path, mlflow_template_db, monkeypatch):
    (tmp_path / "mlruns").mkdir()
    shutil.copy(mlflow_template_db, tmp_path / "mlruns" / "mlflow.db")
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(
        {"params": {"train.lr": {"float": [1e-3, 1e-2], "log": True}}, "pruner": "none"}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
               DERMA_MLRUNS=str(tmp_path / "mlruns"))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DERMA_CONFIG_DIR", None)
    return tmp_path, env


def _study(work: Path, name: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(work / "mlruns" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _tune(work: Path, env: dict, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(work / "driver.py"), "tune", "-p", "tunetoy", "--space", str(work / "space.yaml"),
           "--study-name", "stopped", *args]
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)


def _interrupt_mid_trial(work: Path, env: dict, sig: int) -> tuple[subprocess.Popen, str, str, int]:
    """Start a study whose second trial sleeps, and signal the worker while it does."""
    from optuna.trial import TrialState

    proc = _tune(work, env, "--trials", "5", "-o", "train.sleep=1", "-o", "train.epochs=20")
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.3)
            try:
                study = _study(work, "stopped")
            except (KeyError, FileNotFoundError):
                continue
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values]
            if running:
                break
        victim = running[0].number
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, out, err, victim


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                               (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_in_tune_is_one_line_and_leaves_the_study_consistent(work, sig, code, reason):
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_PARENT_RUN, ATTR_RUN_ID

    folder, env = work
    proc, out, err, victim = _interrupt_mid_trial(folder, env, sig)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Aborted!" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "failed with" not in err, err[-3000:]  # Optuna's warning about the interrupted trial
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{reason}: study 'stopped'"), lines[0]
    assert f"trial {victim} stopped and marked FAIL" in lines[0]
    assert "derma tune --study-name stopped --resume" in lines[0]
    study = _study(folder, "stopped")
    trials = study.get_trials()
    assert trials[victim].state == TrialState.FAIL
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    assert f"{done} trial{'s' if done != 1 else ''} complete" in lines[0]
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(trials[victim].user_attrs[ATTR_RUN_ID])
    assert run.info.status == "KILLED" and run.data.tags["derma.trial_state"] == "FAIL"
    assert run.data.tags["derma.error"] == reason
    parent = client.get_run(study.user_attrs[ATTR_PARENT_RUN])
    assert parent.info.status == "KILLED" and parent.data.tags["derma.error"] == reason
    assert f"parent MLflow run {parent.info.run_id}" in lines[0]


def test_a_degenerate_dataset_is_refused_before_the_study_exists(work, monkeypatch):
    """Every trial fits on train and scores on val: a dataset without val rows stops `derma tune`
    before a study or an MLflow run is made."""
    folder, env = work
    proc = _tune(folder, env, "--trials", "1", "-o", "data.source=tunetoy_empty_val")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot fill the val split" in lines[0] and "tunetoy needs train and val" in lines[0], err
    assert not (folder / "mlruns" / "optuna.journal").exists() or "stopped" not in (
        folder / "mlruns" / "optuna.journal").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
