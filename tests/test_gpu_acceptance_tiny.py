"""`benchmarks/gpu_acceptance.py --tiny`: every step of the GPU acceptance command, on the CPU
with tiny sizes, through the product's own CLI. A failing step (bf16 LoRA included) fails this
test; it is not skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ("convert", "zs-generate", "zs-score", "lora-bf16", "lora-4bit", "merge", "resnet18-amp")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_acceptance_tiny_runs_every_step(tmp_path):
    pytest.importorskip("derma_llava_med")
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_acceptance.py"), "--tiny",
                          "--work", str(tmp_path / "acc")], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=1400)
    table = out.stdout
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^(\S+)\s+(ok|FAILED)\s", table, re.MULTILINE)}
    assert set(STEPS) <= set(rows), (table, out.stderr[-4000:])
    failed = {step: status for step, status in rows.items() if status != "ok"}
    assert out.returncode == 0 and not failed, (failed, table, out.stderr[-6000:])
    # the resnet18 row sets training images/s beside pure compute
    assert re.search(r"training \d+ img/s vs pure compute \d+ img/s", table), table
    # vlm-score (when derma_vlm is installed) runs the tiny shape of the family the GPU run sizes up,
    # and names the family and parameter count
    try:
        import derma_vlm  # noqa: F401
    except ImportError:
        return
    assert rows.get("vlm-score") == "ok", table
    assert re.search(r"^vlm-score .*Gemma 3 family, tiny shape \(tiny-gemma3\), \d+\.\d+ M params", table,
                     re.MULTILINE), table
