"""llava_lora under ``torchrun --nproc_per_node 2`` on the CPU (gloo), tiny-random, synthetic data.

One adapter is trained (DDP), every test image is predicted exactly once (each rank its own
shard, in its own partial file), rank 0 gathers and evaluates, and there is one MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from derma_core.config import dump_config, resolve_config

DATA = {"data.source": "synthetic", "data.size": 32, "data.synthetic_n": 168, "data.synthetic_seed": 5}


def test_torchrun_two_processes_shard_prediction_and_train_one_adapter(tmp_path, model_cache):
    import mlflow

    torch_dist = pytest.importorskip("torch.distributed")
    if not torch_dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    from derma_core.runner import load_dataset

    values = {**DATA, "data.cache_dir": str(tmp_path / "cache"), "evaluation.bootstrap": 0, "quiet": True,
              "device": "cpu", "output.work_dir": str(tmp_path / "work"), "tracking.experiment": "llava-ddp",
              "tracking.log_model": False, "answer_mode": "score", "precision": "fp32", "train.epochs": 1,
              "train.eval_at_start": False, "train.batch_size": 8, "train.grad_accum": 1, "train.num_workers": 0,
              "lora.r": 4, "lora.alpha": 8, "train.patience": 0, "inference.batch_size": 8}
    config = resolve_config("llava_lora", values=values)
    from derma_llava_med.tiny import build_tiny_random

    dataset = load_dataset(config)  # generated once here, not by two ranks at the same time
    build_tiny_random()  # likewise the tiny model, in the session's DERMA_MODEL_CACHE
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(dump_config({k: v for k, v in config.items() if k != "plugin"}))
    env = dict(os.environ, DERMA_MLRUNS=str(tmp_path / "mlruns"), OMP_NUM_THREADS="1",
               DERMA_MODEL_CACHE=str(model_cache))
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "derma_core.cli", "run", "--plugin", "llava_lora", "--config", str(config_file)]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    assert len(set(re.findall(r"MLflow run id: (\w+)", out.stdout))) == 1

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("llava-ddp").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert run.data.params["model"] == "tiny-random"  # model.name auto on the synthetic set
    assert "test_macro_f1" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")] == [1]
    work = tmp_path / "work" / run.info.run_id
    assert (work / "adapter" / "adapter_model.safetensors").exists()  # one adapter, written by rank 0

    test_ids = list(dataset["test"].ids)
    shards = []
    for rank in range(2):
        lines = (work / f"llava_partial_test.rank{rank}of2.jsonl").read_text().splitlines()
        shards.append([json.loads(line)["id"] for line in lines[1:]])
    assert not set(shards[0]) & set(shards[1])  # no rank repeats another's work
    assert sorted(shards[0] + shards[1]) == sorted(test_ids)  # every test image exactly once
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    assert not (work / "llava_partial_test.jsonl").exists()
    answers = [json.loads(line)["question_id"] for line in (work / "answers_test.jsonl").read_text().splitlines()]
    assert answers == test_ids
    local = client.download_artifacts(run.info.run_id, "test_prediction_info.json", str(tmp_path))
    info = json.loads(open(local).read())
    assert info["world_size"] == 2 and info["images_computed"] == len(test_ids)
