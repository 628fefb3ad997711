"""Several `derma tune` workers on one study: a real PostgreSQL cluster and a real `mlflow server`.

The test starts its own PostgreSQL cluster on 127.0.0.1 in a temporary folder (initdb and pg_ctl
from Debian's postgresql package; `.ci/postgres.sh` installs it) and an `mlflow server` backed by
it, then runs worker processes against them. PostgreSQL refuses to run as root, so when the
tests run as root the cluster runs as the `postgres` system user (or `nobody`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
PLUGIN_FILE = HERE / "test_tune_plugin.py"
REPO = HERE.parent

pytestmark = pytest.mark.slow

SPACE = {
    "params": {
        "class_weighting.mode": {"choices": ["none", "capped", "uncapped"]},
        "class_weighting.cap": {"float": [1.5, 10.0], "log": True, "when": {"class_weighting.mode": "capped"}},
        "train.lr": {"float": [1e-4, 1e-2], "log": True},
    },
    "pruner": "none",
}
N = 3                 # trials per worker
GRACE = 6             # seconds without a heartbeat before a trial counts as dead


def _pg_bin() -> Path | None:
    for name in ("initdb",):
        found = shutil.which(name)
        if found and shutil.which("pg_ctl"):
            return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(folder, "initdb"), os.X_OK) and os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_user() -> pwd.struct_passwd | None:
    """Who runs the cluster: this user, or a system user when we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _as(user: pwd.struct_passwd) -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@pytest.fixture(scope="module")
def postgres():
    """A throw-away cluster on 127.0.0.1: yields (port, folder)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (run .ci/postgres.sh, which apt-get installs "
                    "Debian's postgresql package)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary, the `postgres` extra)")
    user = _pg_user()
    if user is None:
        pytest.skip("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")
    folder = Path(tempfile.mkdtemp(prefix="derma-pg-"))
    os.chmod(folder, 0o755)
    data, sock = folder / "data", folder / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
    port = _free_port()
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "derma", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=folder, env=env, **_as(user))
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "-t", "120",
                        "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                              "-c synchronous_commit=off -c max_connections=200",
                        "start"], check=True, capture_output=True, cwd=folder, env=env, **_as(user))
    except subprocess.CalledProcessError as exc:
        log = (folder / "postgres.log").read_text() if (folder / "postgres.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise AssertionError(f"could not start PostgreSQL: {exc.stderr.decode()[-2000:]}\n{log[-2000:]}") from None
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="derma", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE optuna")
        cur.execute("CREATE DATABASE mlflow")
    conn.close()
    try:
        yield port, folder
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, cwd=folder, env=env, **_as(user))
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    """`mlflow server` on 127.0.0.1, backed by the cluster, serving artifacts from a temp folder."""
    port, folder = postgres
    http_port = _free_port()
    log = open(folder / "mlflow-server.log", "wb")
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no background job runner needed
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"postgresql+psycopg2://derma@127.0.0.1:{port}/mlflow",
         "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(http_port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError("mlflow server exited: " + (folder / "mlflow-server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("mlflow server did not answer within 300 s: "
                                     + (folder / "mlflow-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        log.close()


def _worker(args: list[str], cwd: Path, log: Path, pred_log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNETOY_LOG=str(pred_log), DERMA_MLRUNS=str(cwd / "mlruns"))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(PLUGIN_FILE), "tune", *args], cwd=cwd, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"worker timed out:\n{log.read_text()[-3000:]}") from None
        if proc.returncode != 0:
            for p in procs:
                p.kill()
            raise AssertionError(f"worker failed ({proc.returncode}):\n{log.read_text()[-3000:]}")


def test_workers_share_one_study_and_one_parent_run_and_survive_a_kill(postgres, mlflow_server, tmp_path):
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from derma_core.tuning import ATTR_PARENT_RUN, ATTR_RETRY_OF, ATTR_RUN_ID, ATTR_WORKER

    pg_port, _ = postgres
    # plain postgresql:// is what people type; derma picks the installed psycopg2 driver for it
    storage = f"postgresql://derma@127.0.0.1:{pg_port}/optuna"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    pred_log = tmp_path / "predicted.txt"
    common = ["--plugin", "tunetoy", "--space", str(space), "--study-name", "shared", "--storage", storage,
              "--tracking-uri", mlflow_server, "--sampler", "random", "--heartbeat-interval", "1",
              "--grace-period", str(GRACE), "-o", "train.sleep=0.3"]

    # -- two workers start together: one creates the study and the parent run, one joins -----------
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    procs = [_worker([*common, "--trials", str(N)], tmp_path, log, pred_log) for log in logs]
    _wait(procs, logs, timeout=300)
    sql = optuna.storages.RDBStorage(f"postgresql+psycopg2://derma@127.0.0.1:{pg_port}/optuna")
    study = optuna.load_study(study_name="shared", storage=sql)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * (2 * N)
    assert sorted(t.number for t in trials) == list(range(2 * N))
    assert {t.user_attrs[ATTR_WORKER] for t in trials} == {f"{socket.gethostname()}:{p.pid}" for p in procs}
    parent_id = study.user_attrs[ATTR_PARENT_RUN]
    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(parent_id)
    exp_id = parent.info.experiment_id
    study_runs = client.search_runs([exp_id], "tags.`derma.study` = 'shared'")
    assert [r.info.run_id for r in study_runs if r.data.tags.get("derma.kind") == "tune_study"] == [parent_id]
    children = [r for r in study_runs if r.data.tags.get("derma.kind") == "tune_trial"]
    assert len(children) == 2 * N
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert {r.info.run_id for r in children} == {t.user_attrs[ATTR_RUN_ID] for t in trials}
    assert sorted(int(r.data.tags["derma.trial_number"]) for r in children) == list(range(2 * N))
    assert set(pred_log.read_text().split()) == {"val"}
    assert "derma.best_trial" in client.get_run(parent_id).data.tags

    # -- a worker killed mid-trial: its trial is failed by heartbeat and retried by another -------
    victim_log = tmp_path / "w3.log"
    victim = _worker([*common, "--trials", str(N)], tmp_path, victim_log, pred_log)
    deadline = time.monotonic() + 180
    doomed = None
    while doomed is None:
        assert victim.poll() is None, victim_log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the third worker never started a trial"
        time.sleep(0.2)
        mine = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                if t.user_attrs.get(ATTR_WORKER, "").endswith(f":{victim.pid}") and ATTR_RUN_ID in t.user_attrs]
        doomed = mine[0] if mine else None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = len(study.get_trials(states=(TrialState.COMPLETE,)))
    time.sleep(GRACE + 1.5)  # its heartbeat is now stale
    rescue_log = tmp_path / "w4.log"
    rescue = _worker([*common, "--trials", "1"], tmp_path, rescue_log, pred_log)
    _wait([rescue], [rescue_log], timeout=240)

    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[doomed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == doomed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == doomed.params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == done_before + 1  # the retry
    assert sorted(by_number) == list(range(len(trials)))
    dead = client.get_run(doomed.user_attrs[ATTR_RUN_ID])
    assert dead.info.status == "FAILED" and dead.data.tags["derma.trial_state"] == "FAIL"
    children = [r for r in client.search_runs([exp_id], "tags.`derma.study` = 'shared'")
                if r.data.tags.get("derma.kind") == "tune_trial"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert len(children) == len([t for t in trials if ATTR_RUN_ID in t.user_attrs])
    assert set(pred_log.read_text().split()) == {"val"}
