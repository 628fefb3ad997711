"""`derma ui` serves the MLflow UI for derma's store on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_on_localhost(mlflow_store, tmp_path):
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
