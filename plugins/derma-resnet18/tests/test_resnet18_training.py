"""End-to-end runs on a tiny synthetic set: beats prior, MLflow contents, determinism, resume
after SIGKILL and Ctrl-C, pruning, evaluating a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from derma_core import runner
from derma_core.config import dump_config
from derma_core.interfaces import TrialPruned

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auroc",
                 "lr", "epoch_seconds", "images_per_second")
#: Metrics that must repeat exactly for the same seed (timings excluded).
REPEATABLE = ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auroc", "lr")
TEST_KEYS = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_macro_auroc")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store (the local default layout) for the module; the cwd moves there."""
    root = tmp_path_factory.mktemp("r18-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DERMA_MLRUNS", str(root / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (root / "mlruns").mkdir()
        yield root


def _config(store: Path, cache: Path, **overrides) -> dict:
    from derma_core.config import resolve_config

    values = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 420, "data.synthetic_seed": 3,
              "data.cache_dir": str(cache), "train.epochs": 3, "evaluation.bootstrap": 0, "quiet": True,
              "device": "cpu", "output.work_dir": str(store / "work"), "tracking.experiment": "r18-test"}
    values.update(overrides)
    return resolve_config("resnet18", values=values)


def _metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def reference(store, synthetic_cache):
    """An uninterrupted 3-epoch run: the yardstick for determinism and resume."""
    config = _config(store, synthetic_cache)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = runner.run(config)
    return config, result


def _client():
    import mlflow

    from derma_core import tracking

    return mlflow.MlflowClient(tracking.resolve_tracking_uri())


def test_beats_prior_and_logs_everything(store, synthetic_cache, reference):
    import mlflow

    config, result = reference
    prior = runner.run(dict(_config(store, synthetic_cache, **{"tracking.log_model": False}), plugin="prior"))
    assert result.metrics["test_macro_f1"] >= prior.metrics["test_macro_f1"] + 0.15, (result.metrics, prior.metrics)

    client = _client()
    run = client.get_run(result.run_id)
    for key in EPOCH_METRICS:
        steps = [s for s, _ in _metric_history(client, result.run_id, key)]
        assert steps == [1, 2, 3], key
    f1 = dict(_metric_history(client, result.run_id, "val_macro_f1"))
    best = int(run.data.metrics["best_epoch"])
    assert f1[best] == max(f1.values()) and run.data.metrics["best_val_macro_f1"] == pytest.approx(f1[best])
    assert all(0 <= v <= 1 for v in f1.values())
    for key in TEST_KEYS:  # probabilities reach the evaluators: AUROC is on
        assert key in run.data.metrics
    params = run.data.params
    # the curated params carry the resolved values, never auto (the raw config keeps auto)
    assert params["epochs"] == "3" and params["optimizer"] == "adamw" and params["weights"] == "none"
    assert params["class_weighting"] == "capped" and params["precision"] in {"fp32", "bf16"}
    assert params["device"] == "cpu" and params["world_size"] == "1" and params["effective_batch_size"] == "32"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "figures")}
    assert "figures/training_curves.png" in artifacts
    assert "tables/training_history.csv" in {a.path for a in client.list_artifacts(result.run_id, "tables")}

    # the logged model (mlflow.pytorch, with a signature) predicts what the run predicted
    from derma_core.runner import load_dataset

    test = load_dataset(config)["test"]
    images = np.array(test.cache[:16])  # a writable copy of the memmap rows
    uri = f"runs:/{result.run_id}/model"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.signature.inputs is not None
    # the logged model records its output columns' classes: the dataset's label set
    dataset = load_dataset(config)
    assert info.metadata["classes"] == list(dataset.label_set.codes)
    assert info.metadata["label_set"] == dataset.label_set.to_dict()
    loaded = mlflow.pytorch.load_model(uri)
    # in the precision the run predicted in (`auto` is bf16 on CPUs with native bf16)
    bf16 = params["precision"] == "bf16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        probs = loaded(torch.from_numpy(images)).float().numpy()
    # fp32: the same numbers; bf16: the logged model's softmax runs in bf16 (8-bit mantissa, so
    # probabilities round to within 2^-8 relative) where the run's ran on fp32 logits in float64
    tol = {"rtol": 0, "atol": 5e-3} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(probs, result.predictions.probabilities[:16], **tol)
    pyfunc = mlflow.pyfunc.load_model(uri)
    with torch.no_grad():  # the pyfunc flavour runs the module as it is, in fp32
        fp32 = loaded(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(pyfunc.predict(images), fp32, rtol=1e-5, atol=1e-6)


def test_same_seed_same_metrics(store, synthetic_cache, reference):
    config, first = reference
    second = runner.run(_config(store, synthetic_cache, **{"tracking.log_model": False}))
    client = _client()
    for key in REPEATABLE:
        assert _metric_history(client, first.run_id, key) == _metric_history(client, second.run_id, key), key
    assert {k: first.metrics[k] for k in TEST_KEYS} == {k: second.metrics[k] for k in TEST_KEYS}
    np.testing.assert_array_equal(first.predictions.probabilities, second.predictions.probabilities)


def _same_final_metrics(reference_result, run_id: str) -> None:
    client = _client()
    resumed = client.get_run(run_id).data.metrics
    for key in TEST_KEYS:
        assert resumed[key] == reference_result.metrics[key], key
    for key in ("val_macro_f1", "val_loss", "train_loss"):
        # a killed epoch may be logged twice; the values per step must match the reference
        got = dict(_metric_history(client, run_id, key))
        assert got == dict(_metric_history(client, reference_result.run_id, key)), key


def test_resume_after_sigkill_matches_uninterrupted(store, synthetic_cache, reference, tmp_path):
    _, ref = reference
    config = _config(store, synthetic_cache, **{"tracking.log_model": False})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(dump_config({k: v for k, v in config.items() if k != "plugin"}))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "derma_core.cli", "run", "--plugin", "resnet18", "--config", str(config_file)]
    work = Path(config["output"]["work_dir"])
    before = set(work.glob("*/checkpoint.pt")) if work.exists() else set()
    proc = subprocess.Popen(cmd, env=env, cwd=store, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        ckpt = None
        while time.time() < deadline and proc.poll() is None:
            fresh = [p for p in work.glob("*/checkpoint.pt") if p not in before]
            if fresh:
                ckpt = fresh[0]
                break
            time.sleep(0.05)
        assert ckpt is not None, f"no checkpoint appeared: {proc.communicate()[0].decode()[-2000:]}"
        time.sleep(0.3)  # into epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=True)
    assert 1 <= saved["epoch"] < 3, "the run finished before it was killed"
    run_id = ckpt.parent.name
    out = subprocess.run([sys.executable, "-m", "derma_core.cli", "run", "--resume", run_id], env=env, cwd=store,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming after epoch {saved['epoch']}" in out.stderr
    _same_final_metrics(ref, run_id)


def test_ctrl_c_keeps_the_checkpoint_and_resume_matches(store, synthetic_cache, reference, capsys):
    _, ref = reference
    config = _config(store, synthetic_cache, **{"tracking.log_model": False})
    started: list[str] = []

    def interrupt(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(config, reporter=interrupt, on_started=started.append)
    run_id = started[0]
    ckpt = Path(config["output"]["work_dir"]) / run_id / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    err = capsys.readouterr().err
    assert "interrupted: the checkpoint of epoch 1 is kept" in err  # the CLI adds `derma run --resume RUN`
    assert _client().get_run(run_id).info.status == "KILLED"
    runner.run(config, resume_run_id=run_id)
    assert _client().get_run(run_id).info.status == "FINISHED"
    _same_final_metrics(ref, run_id)


def test_pruning_propagates(store, synthetic_cache):
    config = _config(store, synthetic_cache, **{"train.epochs": 2, "tracking.log_model": False})
    seen = []

    def prune(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        raise TrialPruned(f"pruned at {epoch}")

    with pytest.raises(TrialPruned):
        runner.run(config, reporter=prune)
    assert len(seen) == 1 and seen[0][0] == 1 and set(EPOCH_METRICS) <= set(seen[0][1])


def test_evaluating_a_checkpoint_reproduces_the_test_metrics(store, synthetic_cache, reference):
    config, ref = reference
    ckpt = ref.work_dir / "checkpoint.pt"
    evaluated = runner.run(_config(store, synthetic_cache, checkpoint=str(ckpt), **{"tracking.log_model": False}))
    for key in TEST_KEYS:
        assert evaluated.metrics[key] == pytest.approx(ref.metrics[key], abs=1e-12), key
    client = _client()
    assert client.get_metric_history(evaluated.run_id, "val_macro_f1") == []  # nothing was trained
    assert client.get_run(evaluated.run_id).data.tags["derma.evaluated_checkpoint"] == str(ckpt)
