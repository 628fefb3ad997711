"""`derma ui` serves the MLflow UI for derma's store on 127.0.0.1, and derma's experiment opens
on its runs table (curated params, headline metrics), not on MLflow 3's GenAI traces overview:
checked in headless Chromium (skipped, after the other checks, when Chromium is absent)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html import unescape
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from derma_core import tracking
from derma_core.cli import cli
from derma_core.testing import chromium, chromium_path

CHROMIUM = chromium_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(url: str, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (or a screenshot of it, 1400 x 900)."""
    return chromium(url, screenshot=screenshot, virtual_time_budget_ms=30000)


def _text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def test_ui_serves_the_store_and_opens_derma_s_experiment_on_its_runs(mlflow_store, tiny_source, tmp_path):
    ran = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny", "--tracking-uri", mlflow_store,
                                   "-o", "evaluation.bootstrap=0"])
    assert ran.exit_code == 0, ran.output
    run_id = re.search(r"MLflow run id: (\w+)", ran.output).group(1)
    run = mlflow.MlflowClient(mlflow_store).get_run(run_id)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "derma_core.cli", "ui", "--port", str(port),
                             "--tracking-uri", mlflow_store], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        body = None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    body = resp.read().decode()
                    break
            except OSError:
                time.sleep(1)
        assert body is not None, proc.stdout.read() if proc.poll() is not None else "no answer within 240 s"
        assert "OK" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5",
                                    timeout=5) as resp:
            assert resp.status == 200
        # it prints each experiment's runs link: the model-training layout with derma's runs view
        url = tracking.ui_url(mlflow_store, run.info.experiment_id, view=True, base=f"http://127.0.0.1:{port}")
        assert url.endswith(f"/#/experiments/{run.info.experiment_id}/runs?viewStateShareKey=derma&{tracking.UI_QUERY}")

        if CHROMIUM is None:
            pytest.skip("chromium not installed (CI installs Debian's chromium); the server checks above passed")
        page = _text(_chromium(url))
        # the runs table with derma's columns, not the GenAI overview
        assert "Traces 0" not in page and "Detect Issues" not in page, page[:1500]
        assert "Run Name" in page and run.info.run_name in page, page[:1500]
        for column in ("plugin", "model", "seed", "test_macro_f1", "test_accuracy", "test_balanced_accuracy"):
            assert re.search(rf"\b{column}\b", page), (column, page[:1500])
        # the experiment's plain link (no saved view) opens on the runs table too
        plain = _text(_chromium(tracking.ui_url(mlflow_store, run.info.experiment_id, base=f"http://127.0.0.1:{port}")))
        assert "Run Name" in plain and run.info.run_name in plain and "Detect Issues" not in plain, plain[:1500]
        shot = tmp_path / "experiment.png"
        _chromium(url, screenshot=shot)
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
        if os.environ.get("DERMA_UI_SCREENSHOT"):  # keep it to look at
            shutil.copy(shot, os.environ["DERMA_UI_SCREENSHOT"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out = proc.stdout.read()
    # what it prints: the address, the store, each experiment's link; no warning a user cannot act on
    assert f"MLflow UI on http://127.0.0.1:{port} for {mlflow_store}" in out
    assert f"  tiny: http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs?" in out
    assert "Warning" not in out and "deprecated" not in out, out[-3000:]


def test_ui_environment_turns_off_genai_jobs_and_filters_starlette_s_warning():
    env = tracking.ui_environment({"PYTHONWARNINGS": "error::ResourceWarning"})
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["PYTHONWARNINGS"].split(",")[0] == "error::ResourceWarning"  # the user's filters stay first
    assert "ignore:starlette.middleware.wsgi is deprecated:UserWarning" in env["PYTHONWARNINGS"]
    assert tracking.ui_environment({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})[
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"  # a user's choice wins
    # the filter matches the warning the server's processes would print
    proc = subprocess.run([sys.executable, "-c", "import starlette.middleware.wsgi"], capture_output=True, text=True,
                          env=tracking.ui_environment(), timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
