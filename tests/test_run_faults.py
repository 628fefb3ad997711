"""Signals end runs cleanly: SIGTERM (a scheduler's or ``docker stop``'s) and Ctrl-C (SIGINT) end
the MLflow run as KILLED with the reason, keep what the backend wrote, say how to resume, and exit
143 / 130. The console entry point is driven in a subprocess, as a user's shell would, with a
plugin installed through an entry point (a dist-info folder on PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest

from derma_core.testing import sigint_default

PLUGIN = textwrap.dedent('''
    import time
    from derma_core import hookimpl
    from derma_core.interfaces import Predictions
    from derma_core.testing import make_tiny_dataset


    class Sleeper:
        name = "sleeper"

        def __init__(self, config):
            pass

        def fit(self, train, val, ctx):
            (ctx.work_dir / "checkpoint.txt").write_text("epoch 1")
            (ctx.work_dir / "ready").write_text("1")
            time.sleep(120)

        def predict(self, split, ctx):
            return Predictions(split.ids, ["nv"] * len(split), label_set=split.label_set)


    @hookimpl
    def register_classifiers(register):
        register("sleeper", Sleeper)


    @hookimpl
    def register_datasets(register):
        register("tiny_signals", lambda config: make_tiny_dataset(name="tiny_signals"))
''')


@pytest.fixture
def sleeper_env(tmp_path, mlflow_store):
    site = tmp_path / "site"
    (site / "sleeper_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "sleeper_plugin.py").write_text(PLUGIN)
    (site / "sleeper_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sleeper-plugin\nVersion: 0.1\n")
    (site / "sleeper_plugin-0.1.dist-info" / "entry_points.txt").write_text("[derma]\nsleeper = sleeper_plugin\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    return env, mlflow_store


def _start(env, store, cwd):
    cmd = [sys.executable, "-m", "derma_core.cli", "run", "--plugin", "sleeper", "--dataset", "tiny_signals",
           "--tracking-uri", store, "--quiet", "-o", "output.work_dir=work"]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ready = list((Path(cwd) / "work").glob("*/ready"))
        if ready:
            return proc, ready[0].parent
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
    proc.kill()
    pytest.fail(f"the sleeper run never started: {err[-2000:]}")


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                               (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_signal_ends_the_run_killed_and_says_how_to_resume(sleeper_env, tmp_path, sig, code, reason):
    env, store = sleeper_env
    proc, work_dir = _start(env, store, tmp_path)
    run_id = work_dir.name
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(reason), err[-3000:]
    assert f"derma run --resume {run_id}" in lines[-1] and "KILLED" in lines[-1]
    assert "Traceback" not in err and "Aborted!" not in err
    run = mlflow.MlflowClient(store).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["derma.error"] == reason
    assert (work_dir / "checkpoint.txt").read_text() == "epoch 1"  # what the backend wrote is kept


# ---------------------------------------------------------------- the MLflow store

def _run_cmd(store: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "derma_core.cli", "run", "--plugin", "prior", "--dataset", "tiny_signals",
            "--tracking-uri", store, "--quiet", "-o", "evaluation.bootstrap=10", *extra]


def test_two_runs_started_together_on_a_new_store_both_finish(sleeper_env, tmp_path):
    """The store does not exist yet: it is created and migrated once, under a lock, before either
    run starts (before, one of the two died on an alembic migration error that blamed the plugin)."""
    env, _ = sleeper_env
    store = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    procs = [subprocess.Popen(_run_cmd(store), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    runs = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name("tiny_signals").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


def _read_only(folder: Path, argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``folder`` mounted read-only in a private mount namespace (root bypasses
    file modes, so a read-only mount is the honest way to make a folder unwritable for root)."""
    import shlex

    script = (f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))} && "
              f"mount -o remount,bind,ro {shlex.quote(str(folder))} && exec {shlex.join(argv)}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c",
                               f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && "
                               f"! touch {probe}/x 2>/dev/null"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.mark.parametrize("existing", [False, True], ids=["new-store-in-read-only-folder", "read-only-database"])
def test_read_only_store_is_one_line_at_once(sleeper_env, tmp_path, existing):
    if not _can_mount_read_only(tmp_path):
        pytest.skip("cannot mount a folder read-only here (needs unshare -m and bind mounts)")
    env, _ = sleeper_env
    folder = tmp_path / "store"
    folder.mkdir()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    if existing:
        mlflow.MlflowClient(store).search_experiments()  # a real, migrated store
    started = time.time()
    done = _read_only(folder, _run_cmd(store), env, tmp_path)
    took = time.time() - started
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: MLflow store") and "read-only" in lines[0] and str(folder) in lines[0]
    assert took < 60, f"took {took:.0f} s"
