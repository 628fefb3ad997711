"""DDP smoke test: ``torchrun --nproc_per_node 2`` on the CPU (gloo) gives one MLflow run with
sane metrics, and checkpoints only from rank 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from derma_core.config import dump_config, resolve_config


def test_torchrun_two_cpu_processes(tmp_path, synthetic_cache):
    import mlflow

    torch_dist = pytest.importorskip("torch.distributed")
    if not torch_dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    values = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 420, "data.synthetic_seed": 3,
              "data.cache_dir": str(synthetic_cache), "train.epochs": 2, "evaluation.bootstrap": 0,
              "quiet": True, "device": "cpu", "output.work_dir": str(tmp_path / "work"),
              "tracking.experiment": "r18-ddp", "tracking.log_model": False}
    config = resolve_config("resnet18", values=values)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(dump_config({k: v for k, v in config.items() if k != "plugin"}))
    env = dict(os.environ, DERMA_MLRUNS=str(tmp_path / "mlruns"), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "derma_core.cli", "run", "--plugin", "resnet18", "--config", str(config_file)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    printed = set(re.findall(r"MLflow run id: (\w+)", out.stdout))
    assert len(printed) == 1  # both ranks name the one run rank 0 created

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("r18-ddp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert printed == {run.info.run_id}
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_macro_f1"))
    assert [s for s, _ in history] == [1, 2] and all(0 <= v <= 1 for _, v in history)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "images_per_second"))
    metrics = run.data.metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["test_macro_auroc"] <= 1
    # checkpoints: one folder (the broadcast run id), written by rank 0
    folders = [p for p in (tmp_path / "work").iterdir() if p.is_dir()]
    assert [p.name for p in folders] == [run.info.run_id]
    assert (folders[0] / "checkpoint.pt").exists()
