"""The bad-input and fault catalogue of docs/reliability.md, one test row per case.

Every row runs what a user would run (mostly through the CLI, in process) and checks the exit
code, that the message is one line naming the right file, row, field or plugin (all the
expected fragments on one line), that no traceback is printed, and, where something could be
lost or written half, that it was not. A new bad input found later becomes a new row here and a
new line in docs/reliability.md (the last test checks the two list the same cases).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core import hookimpl, plugins, tracking
from derma_core.cli import DermaGroup, cli

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "reliability.md"


@dataclass
class Outcome:
    """What one case did and what it must have done."""

    code: int
    output: str
    want_code: int
    fragments: tuple[str, ...]  # all on one line of the output
    extra: list[Callable[[], None]] = field(default_factory=list)


class Env:
    """Per-case helpers: temporary folders, a tiny raw folder, an MLflow store, fake plugins."""

    def __init__(self, request, tmp_path: Path, monkeypatch) -> None:
        self.request, self.tmp, self.mp = request, tmp_path, monkeypatch

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def raw(self) -> Path:
        dst = self.tmp / "raw"
        shutil.copytree(self.fixture("tiny_raw"), dst)
        return dst

    def meta(self, raw: Path) -> pd.DataFrame:
        return pd.read_csv(raw / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)

    def invoke(self, args: list[str], **kw) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            text = "".join(traceback.format_exception(result.exception))
            return 99, result.output + "\nTraceback (uncaught in CliRunner):\n" + text
        return result.exit_code, result.output

    def fake_plugins(self, *entry_points) -> None:
        self.mp.setattr(plugins, "entry_points", lambda group: list(entry_points) if group == "derma" else [])
        self.mp.setattr(DermaGroup, "_plugins_loaded", False)
        plugins.reset()
        self.request.addfinalizer(plugins.reset)


class FakeEntryPoint:
    def __init__(self, name, module):
        self.name, self.module = name, module
        self.dist = types.SimpleNamespace(name=f"derma-{name}", version="0.1")

    def load(self):
        if isinstance(self.module, Exception):
            raise self.module
        return self.module


def _module(name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, fn in functions.items():
        setattr(module, key, hookimpl(fn))
    return module


def _echo_classifiers(register):
    from derma_core.prior import PriorClassifier

    register("echo", PriorClassifier)


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory) -> Path:
    """A 168-image (the smallest) synthetic raw folder in HAM10000's layout, made once (cases copy it)."""
    from derma_core.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("tiny-raw") / "raw", n=168, seed=5, workers=1)


CASES: dict[str, Callable[[Env], Outcome]] = {}


def case(case_id: str):
    def add(fn):
        assert case_id not in CASES
        CASES[case_id] = fn
        return fn
    return add


def _prep(env: Env, raw: Path, out: Path, *more) -> tuple[int, str]:
    return env.invoke(["prep", "--raw", raw, "--out", out, "--size", 16, "--workers", 1, "-q", *more])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".lock", "prep_report.json", "manifest.json")}


# ------------------------------------------------------------------ plugins
@case("plugin_import_error")
def _(env):
    env.fake_plugins(FakeEntryPoint("heavy", ImportError("No module named 'missing_heavy_dependency'")),
                     FakeEntryPoint("good", _module("good", register_classifiers=_echo_classifiers)))
    code, out = env.invoke(["plugins"])
    assert "echo (good)" in out
    return Outcome(code, out, 0, ("heavy", "FAILED TO LOAD", "missing_heavy_dependency"))


@case("plugin_misspelled_hook")
def _(env):
    def register_clasifiers(register):
        register("typo", object)

    env.fake_plugins(FakeEntryPoint("typo", _module("typo", register_clasifiers=register_clasifiers)),
                     FakeEntryPoint("good", _module("good", register_classifiers=_echo_classifiers)))
    code, out = env.invoke(["--help"])
    assert code == 0 and "run" in out, out

    def others_still_work():
        code, out = env.invoke(["plugins"])
        assert code == 0 and "echo (good)" in out and "typo [derma-typo 0.1]: FAILED TO LOAD" in out, out
        code, out = env.invoke(["run", "--plugin", "typo", "--print-config"])
        assert code == 2 and "typo" in out and "register_clasifiers" in out and "Traceback" not in out, out
    code, out = env.invoke(["plugins"])
    return Outcome(code, out, 0, ("typo", "unknown hook 'register_clasifiers'", "did you mean 'register_classifiers'"),
                   [others_still_work])


@case("plugin_hook_wrong_arguments")
def _(env):
    def register_classifiers(register, extra):
        register("bad", object)

    env.fake_plugins(FakeEntryPoint("badargs", _module("badargs", register_classifiers=register_classifiers)),
                     FakeEntryPoint("good", _module("good", register_classifiers=_echo_classifiers)))
    code, out = env.invoke(["plugins"])
    assert "echo (good)" in out
    return Outcome(code, out, 0, ("badargs", "FAILED TO LOAD", "extra"))


@case("plugin_hook_raises")
def _(env):
    def register_classifiers(register):
        register("half", object)
        raise RuntimeError("cannot find my weights")

    env.fake_plugins(FakeEntryPoint("raiser", _module("raiser", register_classifiers=register_classifiers)),
                     FakeEntryPoint("good", _module("good", register_classifiers=_echo_classifiers)))

    def run_names_it():
        assert "half" not in plugins.classifiers()  # nothing of a half-run hook is used
        code, out = env.invoke(["run", "--plugin", "half", "--print-config"])
        assert code == 2 and "raiser: register_classifiers failed: RuntimeError: cannot find my weights" in out, out
        code, out = env.invoke(["run", "--plugin", "echo", "--print-config"])
        assert code == 0 and "plugin: echo" in out, out
        assert "warning: plugin 'raiser': register_classifiers failed" in out, out
    code, out = env.invoke(["plugins"])
    assert "echo (good)" in out
    return Outcome(code, out, 0, ("raiser", "HOOK FAILED", "register_classifiers failed", "cannot find my weights"),
                   [run_names_it])


@case("plugin_name_clash")
def _(env):
    env.fake_plugins(FakeEntryPoint("one", _module("one", register_classifiers=_echo_classifiers)),
                     FakeEntryPoint("two", _module("two", register_classifiers=_echo_classifiers)))

    def listed():
        code, out = env.invoke(["plugins"])
        assert code == 0 and "NAME CLASH" in out and "'one'" in out and "'two'" in out, out
        assert "prior (derma_core.prior)" in out
    code, out = env.invoke(["run", "--plugin", "echo", "--print-config"])
    return Outcome(code, out, 2, ("'echo' is registered by both", "'one'", "'two'", "DERMA_DISABLE_PLUGINS"),
                   [listed])


# ------------------------------------------------------------------ config
def _config_case(override: str, *fragments: str, plugin: str = "resnet18"):
    def run(env):
        env.mp.chdir(env.tmp)
        code, out = env.invoke(["run", "--plugin", plugin, "-o", override, "--print-config"])
        assert not (env.tmp / "mlruns").exists(), "a refused config must not create a store or a run"
        return Outcome(code, out, 2, (f"-o {override}",) + fragments)
    return run


case("config_unknown_key")(_config_case("train.epochz=3", "unknown key 'train.epochz'", "epochs"))
case("config_wrong_type")(_config_case("train.lr=fast", "train.lr must be float", "'fast'"))
case("config_bad_choice")(_config_case("train.optimizer=sgd", "train.optimizer must be one of adamw, adam"))
case("config_epochs_text")(_config_case("train.epochs=abc", "train.epochs must be int or 'auto'", "'abc'"))
case("config_epochs_zero")(_config_case("train.epochs=0", "train.epochs must be >= 1", "got 0"))
case("config_epochs_negative")(_config_case("train.epochs=-1", "train.epochs must be >= 1", "got -1"))
case("config_plugin_range")(_config_case("lora.r=0", "lora.r must be >= 1", plugin="llava_lora"))
case("config_core_range")(_config_case("evaluation.confidence=1.5", "evaluation.confidence must be between"))


@case("config_schema_typo")
def _(env):
    import yaml

    cfg = env.tmp / "configs"
    shutil.copytree(ROOT / "configs", cfg)
    data = yaml.safe_load((cfg / "resnet18.yaml").read_text())
    data["_ranges"]["train.batch_size"] = 1  # not [min, max]
    (cfg / "resnet18.yaml").write_text(yaml.safe_dump(data))
    env.mp.setenv("DERMA_CONFIG_DIR", str(cfg))
    env.mp.chdir(env.tmp)
    code, out = env.invoke(["run", "--plugin", "resnet18", "--print-config"])
    return Outcome(code, out, 2, ("resnet18.yaml", "_ranges.train.batch_size", "[min, max]"))


@case("config_auto_still_allowed")
def _(env):
    env.mp.chdir(env.tmp)
    code, out = env.invoke(["run", "--plugin", "resnet18", "-o", "train.epochs=auto", "--print-config"])
    return Outcome(code, out, 0, ("epochs: auto",))


# ------------------------------------------------------------------ raw data and prep
@case("metadata_no_image_id_column")
def _(env):
    raw = env.raw()
    env.meta(raw).drop(columns=["image_id"]).to_csv(raw / "HAM10000_metadata.csv", index=False)
    code, out = _prep(env, raw, env.tmp / "prep")
    assert not (env.tmp / "prep" / "manifest.json").exists()
    return Outcome(code, out, 1, ("HAM10000_metadata.csv header", "required column 'image_id' is missing"))


@case("metadata_empty_file")
def _(env):
    raw = env.raw()
    (raw / "HAM10000_metadata.csv").write_bytes(b"")
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 1, ("HAM10000_metadata.csv", "empty (0 bytes)", "re-download"))


@case("metadata_utf8_bom")
def _(env):
    raw = env.raw()
    path = raw / "HAM10000_metadata.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, out = _prep(env, raw, env.tmp / "prep")
    assert "\\ufeff" not in out and "\ufeff" not in out
    return Outcome(code, out, 0, ("prepared",))


@case("metadata_crlf")
def _(env):
    raw = env.raw()
    path = raw / "HAM10000_metadata.csv"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, ("prepared",))


@case("metadata_unknown_label")
def _(env):
    raw = env.raw()
    meta = env.meta(raw)
    meta.loc[3, "dx"] = "melanoma-ish"
    meta.to_csv(raw / "HAM10000_metadata.csv", index=False)
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 1, ("line 5", "unknown label 'melanoma-ish'", "use one of"))


@case("metadata_conflicting_duplicate_id")
def _(env):
    raw = env.raw()
    meta = env.meta(raw)
    row = meta.iloc[[0]].assign(dx="vasc" if meta["dx"][0] != "vasc" else "nv")
    pd.concat([meta, row]).to_csv(raw / "HAM10000_metadata.csv", index=False)
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 1, (f"image id {meta['image_id'][0]} appears 2 times with different values",))


@case("metadata_identical_duplicate_id")
def _(env):
    raw = env.raw()
    meta = env.meta(raw)
    pd.concat([meta, meta.iloc[[0]]]).to_csv(raw / "HAM10000_metadata.csv", index=False)
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, (f"image id {meta['image_id'][0]} appears 2 times", "the first is used"))


@case("image_missing")
def _(env):
    raw = env.raw()
    image_id = env.meta(raw)["image_id"][1]
    next(raw.glob(f"*/{image_id}.jpg")).unlink()
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, (f"line 3 ({image_id})", f"no image file {image_id}.jpg", "the row is skipped"))


@case("image_orphan")
def _(env):
    from PIL import Image

    raw = env.raw()
    Image.new("RGB", (60, 45)).save(raw / "HAM10000_images_part_1" / "ISIC_9999999.jpg")
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, ("ISIC_9999999.jpg", "has no metadata row", "ignored"))


@case("image_truncated")
def _(env):
    raw = env.raw()
    image_id = env.meta(raw)["image_id"][2]
    path = next(raw.glob(f"*/{image_id}.jpg"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, (f"{image_id}.jpg", "cannot be decoded", "truncated", "re-download"))


@case("image_corrupt")
def _(env):
    raw = env.raw()
    image_id = env.meta(raw)["image_id"][4]
    next(raw.glob(f"*/{image_id}.jpg")).write_bytes(b"this is not a jpeg" * 10)
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, (f"{image_id}.jpg", "cannot be decoded", "replace the file"))


@case("kaggle_lowercase_copies")
def _(env):
    raw = env.raw()
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        shutil.copytree(raw / part, raw / part.lower())
    code, out = _prep(env, raw, env.tmp / "prep")
    return Outcome(code, out, 0, ("appear in two folders with the same size", "the first copy of each is used"))


@case("prep_out_read_only")
def _(env):
    from derma_core.data import prepare as prepmod

    raw, out_dir = env.raw(), env.tmp / "prep"

    @__import__("contextlib").contextmanager
    def read_only_lock(folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder / ".lock"))
        yield

    env.mp.setattr(prepmod, "folder_lock", read_only_lock)  # chmod cannot stop root, so simulate it
    code, out = _prep(env, raw, out_dir)
    assert not out_dir.exists()
    return Outcome(code, out, 1, ("prep/.lock", "cannot write there", "Permission denied", "choose a writable --out"))


@case("prep_out_read_only_up_to_date")
def _(env):
    from derma_core.data import prepare as prepmod

    raw, out_dir = env.raw(), env.tmp / "prep"
    assert _prep(env, raw, out_dir)[0] == 0
    before = _tree(out_dir)

    @__import__("contextlib").contextmanager
    def read_only_lock(folder):
        raise PermissionError(errno.EROFS, "Read-only file system", str(folder / ".lock"))
        yield

    env.mp.setattr(prepmod, "folder_lock", read_only_lock)
    code, out = _prep(env, raw, out_dir)
    assert _tree(out_dir) == before
    return Outcome(code, out, 0, ("up to date", "nothing to do"))


@case("prep_disk_full")
def _(env):
    from derma_core.data import resize as resizemod

    raw, out_dir = env.raw(), env.tmp / "prep"
    real_replace = os.replace
    calls = {"n": 0}

    def full_disk(src, dst, *a, **k):  # the disk fills up after 20 resized images
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    env.mp.setattr(resizemod.os, "replace", full_disk)
    code, out = _prep(env, raw, out_dir)
    env.mp.setattr(resizemod.os, "replace", real_replace)
    assert not (out_dir / "manifest.json").exists()

    def rerun_completes_like_a_clean_prep():
        code2, out2 = _prep(env, raw, out_dir)
        assert code2 == 0, out2
        clean = env.tmp / "clean"
        assert _prep(env, raw, clean)[0] == 0
        a, b = _tree(out_dir), _tree(clean)
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if not k.endswith("state.json"))
    return Outcome(code, out, 1, ("No space left on device", "free space", "run the same command again"),
                   [rerun_completes_like_a_clean_prep])


@case("prep_sigkill_leaves_no_workers")
def _(env):
    script = (
        "import os, sys, time\n"
        "from derma_core.data.resize import worker_pool\n"
        "from multiprocessing import forkserver\n"
        "pool = worker_pool(2)\n"
        "for _ in range(4): pool.submit(time.sleep, 60)\n"
        "time.sleep(1)\n"
        "pids = list(pool._processes) + [forkserver._forkserver._forkserver_pid]\n"
        "print(' '.join(map(str, sorted(pids))), flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        from derma_core.lifetime import pid_alive

        deadline = time.time() + 10
        while time.time() < deadline and any(pid_alive(p) for p in workers):
            time.sleep(0.1)
        left = [p for p in workers if pid_alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(workers) == 3, workers  # two workers and the forkserver
    return Outcome(0, f"workers left alive after SIGKILL: {left}" if left else "no worker left", 0,
                   ("no worker left",))


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


@case("ui_server_dies_with_derma")
def _(env):
    """``derma ui``'s server process is started so that it gets SIGTERM when derma dies (the MLflow
    server forwards SIGTERM to its workers). The server is stood in for by a process that would
    sleep for a minute: starting the real one costs half a minute on a busy CI machine."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    uri = env.fixture("mlflow_store")
    fake = env.tmp / "fake-python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    script = (f"import sys; sys.executable = {str(fake)!r}\n"
              "from derma_core import tracking\n"
              f"tracking.serve_ui({uri!r}, '127.0.0.1', 5999)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline, server = time.time() + 60, []
        while time.time() < deadline and proc.poll() is None and not server:
            server = _children(proc.pid)
            time.sleep(0.2)
        assert server, f"derma ui started no server process: {proc.stderr.read() if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        from derma_core.lifetime import pid_alive

        deadline = time.time() + 10
        while time.time() < deadline and any(pid_alive(p) for p in server):
            time.sleep(0.1)
        left = [p for p in server if pid_alive(p)]
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return Outcome(0, f"server processes left after SIGKILL: {left}" if left else "server ended with derma", 0,
                   ("server ended with derma",))


# ------------------------------------------------------------------ runs, resume, MLflow
def _prior_run(env, *more) -> str:
    env.fixture("tiny_source")
    code, out = env.invoke(["run", "--plugin", "prior", "--dataset", "tiny", "-o", "evaluation.bootstrap=0", *more])
    assert code == 0, out
    return re.search(r"MLflow run id: (\w+)", out).group(1)


def _history(uri, run_id, key="test_accuracy"):
    return len(mlflow.MlflowClient(uri).get_metric_history(run_id, key))


@case("resume_finished_run")
def _(env):
    uri = env.fixture("mlflow_store")
    run_id = _prior_run(env)
    code, out = env.invoke(["run", "--resume", run_id])
    assert _history(uri, run_id) == 1, "nothing may be logged again"

    def re_evaluate_when_asked():
        code2, out2 = env.invoke(["run", "--resume", run_id, "--re-evaluate"])
        assert code2 == 0 and _history(uri, run_id) == 2, out2
    return Outcome(code, out, 0, (f"run {run_id} already FINISHED", "nothing changed", "--re-evaluate"),
                   [re_evaluate_when_asked])


@case("resume_from_another_folder")
def _(env):
    uri = env.fixture("mlflow_store")
    (env.tmp / "prepared").mkdir()
    run_id = _prior_run(env, "-o", "data.dir=prepared")
    tracking.end_run(run_id, "KILLED", "simulated interruption", uri)
    elsewhere = env.tmp / "elsewhere"
    elsewhere.mkdir()
    env.mp.chdir(elsewhere)
    code, out = env.invoke(["run", "--resume", run_id, "--tracking-uri", uri])
    stored = (env.tmp / "mlruns" / "work" / run_id / "config.yaml").read_text()
    assert f"dir: {env.tmp / 'prepared'}" in stored, stored  # data through what the run recorded
    assert not (elsewhere / "mlruns").exists(), "nothing may be looked up or written under the new folder"
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and tracking.TAG_ERROR not in run.data.tags
    assert run.data.tags["derma.resumed_after"] == "simulated interruption"
    return Outcome(code, out, 0, (f"MLflow run id: {run_id}",))


@case("resume_unknown_run")
def _(env):
    uri = env.fixture("mlflow_store")
    code, out = env.invoke(["run", "--resume", "0123456789abcdef0123456789abcdef", "--tracking-uri", uri])
    return Outcome(code, out, 2, ("no run '0123456789abcdef0123456789abcdef'", "--tracking-uri"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running_run(uri, pid: int) -> str:
    import socket

    tracking.configure(uri)
    exp = tracking.ensure_experiment("tiny", uri)
    run = mlflow.MlflowClient(uri).create_run(exp, tags={tracking.TAG_PID: str(pid), tracking.TAG_HOST: socket.gethostname(),
                                                         tracking.TAG_PLUGIN: "prior"})
    return run.info.run_id


@case("run_left_running_by_dead_process")
def _(env):
    uri = env.fixture("mlflow_store")
    stale = _running_run(uri, _dead_pid())
    alive = _running_run(uri, os.getpid())
    code, out = env.invoke(["runs", "--tracking-uri", uri])
    assert f"{alive}  RUNNING" in out and "process gone" not in out.split(alive)[1].splitlines()[0]

    def end_stale_kills_only_it():
        code2, out2 = env.invoke(["runs", "--end-stale", "--tracking-uri", uri])
        assert code2 == 0 and f"{stale}: ended as KILLED" in out2, out2
        client = mlflow.MlflowClient(uri)
        run = client.get_run(stale)
        assert run.info.status == "KILLED" and "process" in run.data.tags[tracking.TAG_ERROR]
        assert client.get_run(alive).info.status == "RUNNING"
    return Outcome(code, out, 0, (stale, "RUNNING", "process gone"), [end_stale_kills_only_it])


@case("resume_still_running")
def _(env):
    uri = env.fixture("mlflow_store")
    run_id = _running_run(uri, os.getpid())
    code, out = env.invoke(["run", "--resume", run_id, "--tracking-uri", uri])
    return Outcome(code, out, 2, (f"run {run_id} is still running", f"pid {os.getpid()}"))


@case("run_records_its_process")
def _(env):
    uri = env.fixture("mlflow_store")
    run_id = _prior_run(env)
    tags = mlflow.MlflowClient(uri).get_run(run_id).data.tags
    ok = tags.get(tracking.TAG_PID) == str(os.getpid()) and tags.get(tracking.TAG_HOST) and tags.get(tracking.TAG_CWD)
    return Outcome(0, "tags recorded" if ok else f"tags missing: {tags}", 0, ("tags recorded",))


# ------------------------------------------------------------------ answer files and tables
ADVERSARIAL = ["melanoma\r", "It is nv,\r\nbenign", 'quote " and "" twice', "tab\tseparated", "ünïcödé ☃ 🙂 — bkl",
               "", "   ", "line\nbreak mel", "nan", "NA", "7", "=1+1", "\r\n\r\n"]


def _answer_files(tmp: Path, texts, name="a.jsonl") -> tuple[Path, Path]:
    labels = ["mel", "nv", "bkl", "bcc", "akiec", "vasc", "df"]
    q = tmp / "q.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "image": f"img{i}.jpg", "text": "Which?",
                                     "answer": labels[i % 7]}) + "\n" for i in range(len(texts))))
    a = tmp / name
    a.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return q, a


@case("answers_empty_file")
def _(env):
    uri = env.fixture("mlflow_store")
    q, a = _answer_files(env.tmp, ["mel", "nv"])
    a.write_text("")
    code, out = env.invoke(["eval-answers", "-q", q, "-a", a, "--tracking-uri", uri])
    assert mlflow.MlflowClient(uri).get_experiment_by_name("answer-files") is None, "no run may be logged"
    return Outcome(code, out, 1, (str(a), "no usable answer line", "empty"))


@case("answers_conflicting_duplicate_id")
def _(env):
    uri = env.fixture("mlflow_store")
    q, a = _answer_files(env.tmp, ["mel", "nv", "bkl"])
    a.write_text(a.read_text() + json.dumps({"question_id": 1, "text": "melanoma"}) + "\n")
    code, out = env.invoke(["eval-answers", "-q", q, "-a", a, "--tracking-uri", uri])
    assert mlflow.MlflowClient(uri).get_experiment_by_name("answer-files") is None
    return Outcome(code, out, 1, (f"{a} line 4", "question_id '1' again", "different text", "than line 2"))


@case("answers_identical_duplicate_id")
def _(env):
    uri = env.fixture("mlflow_store")
    q, a = _answer_files(env.tmp, ["mel", "nv", "bkl"])
    a.write_text(a.read_text() + json.dumps({"question_id": 1, "text": "nv"}) + "\n")
    code, out = env.invoke(["eval-answers", "-q", q, "-a", a, "--tracking-uri", uri, "-o", "evaluation.bootstrap=0"])
    return Outcome(code, out, 0, (f"{a} line 4", "duplicate question_id '1', identical to line 2", "first kept"))


@case("answer_text_with_carriage_returns")
def _(env):
    uri = env.fixture("mlflow_store")
    q, a = _answer_files(env.tmp, ADVERSARIAL)
    _, b = _answer_files(env.tmp, list(reversed(ADVERSARIAL)), name="b.jsonl")
    ids = []
    for path in (a, b):
        code, out = env.invoke(["eval-answers", "-q", q, "-a", path, "--tracking-uri", uri, "-o", "evaluation.bootstrap=0"])
        assert code == 0, out
        ids.append(re.search(r"MLflow run id: (\w+)", out).group(1))
    table = tracking.load_run_table(ids[0], uri=uri)
    assert len(table) == len(ADVERSARIAL) and table["raw_text"].tolist() == ADVERSARIAL
    assert table["id"].tolist() == [str(i) for i in range(len(ADVERSARIAL))]
    code, out = env.invoke(["compare", *ids, "--tracking-uri", uri, "--format", "json", "--bootstrap", "50"])
    paired = json.loads(out[out.index("{"):])["paired"]
    n = (paired or {}).get("n_images")
    return Outcome(code, f"paired over n={n} rows", 0, (f"n={len(ADVERSARIAL)} rows",))


@case("tables_round_trip")
def _(env):
    import numpy as np

    frame = pd.DataFrame({"id": [str(i) for i in range(len(ADVERSARIAL))], "label": "nv", "predicted": "",
                          "prob_nv": np.linspace(0, 1, len(ADVERSARIAL)), "raw_text": ADVERSARIAL,
                          "n": range(len(ADVERSARIAL))})
    path = env.tmp / "t.csv"
    path.write_text(tracking.table_csv(frame), encoding="utf-8")
    back = tracking.read_table_csv(path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["raw_text"].tolist() == ADVERSARIAL
    return Outcome(0, "same frame", 0, ("same frame",))


# ------------------------------------------------------------------ the table
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_catalogue_case(case_id, request, tmp_path, monkeypatch):
    outcome = CASES[case_id](Env(request, tmp_path, monkeypatch))
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.code == outcome.want_code, outcome.output
    lines = [line for line in outcome.output.splitlines() if all(f in line for f in outcome.fragments)]
    assert lines, f"no one line holds all of {outcome.fragments}:\n{outcome.output}"
    for check in outcome.extra:
        check()


def test_catalogue_lists_every_case():
    """docs/reliability.md and this file list the same cases; cases tested elsewhere name a test that exists."""
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|.*\| (\S+) \|\s*$", CATALOGUE.read_text(), flags=re.M)
    assert rows, "no catalogue rows found"
    here = {cid for cid, where in rows if where == "this"}
    assert here == set(CASES), (sorted(here - set(CASES)), sorted(set(CASES) - here))
    for cid, where in rows:
        if where != "this":
            path, _, name = where.partition("::")
            assert f"def {name}(" in (ROOT / path).read_text(), f"{cid}: {where} not found"
