"""`derma study`: study files expanded into named cells (errors one line, naming the place), cell
identities, one parent run with a child per cell, failures recorded while the study goes on,
reruns that run only what is missing, Ctrl-C, the report with the spread across seeds, and two
``--shard`` processes on one SQLite store running every cell exactly once.

The backends are the built-in ``prior`` and an in-test ``toy`` whose predictions depend on its
seed and ``toy.skill`` and which fails or stops (Ctrl-C) in the cell named by an environment
variable; the data are a tiny in-memory dataset. The toy is installed through an entry point
(a dist-info folder on PYTHONPATH), so subprocesses load it as a user's install would.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

TOY = textwrap.dedent('''
    import os
    from pathlib import Path

    import numpy as np

    from derma_core import hookimpl
    from derma_core.interfaces import Predictions
    from derma_core.testing import make_tiny_dataset

    SCHEMA = Path(__file__).with_name("study_toy.yaml")


    class Toy:
        name = "toy"

        def __init__(self, config):
            self.config = config

        def fit(self, train, val, ctx):
            cell = ctx.config["tracking"]["run_name"]
            if os.environ.get("STUDY_TOY_FAIL") == cell:
                raise ValueError(f"toy told to fail in {cell}")
            if os.environ.get("STUDY_TOY_INTERRUPT") == cell:
                raise KeyboardInterrupt()

        def predict(self, split, ctx):
            skill = float(self.config["toy"]["skill"])
            rng = np.random.default_rng(1000 * int(ctx.seed) + int(100 * skill))
            probs = (1 - skill) * rng.dirichlet(np.ones(len(split.label_set)), size=len(split))
            probs[np.arange(len(split)), split.y] += skill
            return Predictions(split.ids, [split.label_set.codes[j] for j in probs.argmax(1)], probs,
                               label_set=split.label_set)


    @hookimpl
    def register_classifiers(register):
        register("toy", Toy, config=SCHEMA)


    @hookimpl
    def register_datasets(register):
        register("tiny_study", lambda config: make_tiny_dataset(name="tiny_study", learnable=True))


    def metrics_only(inputs):
        """The classification evaluator's metrics and intervals, without its figures and tables
        (drawing and logging them is most of a tiny run's time)."""
        import matplotlib.pyplot as plt

        from derma_core.evaluation.evaluators import classification_evaluator
        from derma_core.interfaces import EvalResult

        result = classification_evaluator(inputs)
        for figure in result.figures.values():
            plt.close(figure)
        return EvalResult(metrics=result.metrics)


    @hookimpl
    def register_evaluators(register):
        register("toy_metrics", metrics_only)
''')

TOY_SCHEMA = "toy:\n  skill: 0.5\n_ranges:\n  toy.skill: [0, 1]\n"

#: Every cell: evaluated fast (metrics and intervals only, a small bootstrap), no model logged.
FAST = {"data.source": "tiny_study", "evaluation.evaluators": ["toy_metrics"],
        "evaluation.bootstrap": 50, "tracking.log_model": False}


def study_file(folder: Path, name: str = "tiny", **extra) -> Path:
    data = {"study": name,
            "base": dict(FAST),
            "axes": {"backend": ["prior", "toy"], "seed": [1, 2]},
            "baseline": "prior",
            "report": {"bootstrap": 50}}
    data.update(extra)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study-site")
    (root / "study_toy_plugin-0.1.dist-info").mkdir()
    (root / "study_toy_plugin.py").write_text(TOY)
    (root / "study_toy.yaml").write_text(TOY_SCHEMA)
    (root / "study_toy_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: study-toy-plugin\nVersion: 0.1\n")
    (root / "study_toy_plugin-0.1.dist-info" / "entry_points.txt").write_text("[derma]\nstudytoy = study_toy_plugin\n")
    return root


@pytest.fixture(scope="module")
def toy(site):
    """The toy plugin registered on this process's plugin manager for the module."""
    from derma_core import plugins

    spec = importlib.util.spec_from_file_location("study_toy_plugin", site / "study_toy_plugin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    plugins.load_plugins()
    plugins.pm.register(module, name="study-toy-test")
    yield module
    plugins.pm.unregister(name="study-toy-test")
    sys.modules.pop("study_toy_plugin", None)


def derma(*args: str, env: dict | None = None):
    from derma_core.cli import cli

    with pytest.MonkeyPatch.context() as mp:
        for key in ("STUDY_TOY_FAIL", "STUDY_TOY_INTERRUPT"):
            mp.delenv(key, raising=False)
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def runs_of(uri: str, study: str) -> list:
    from derma_core import tracking

    return tracking.find_runs(f"tags.\"derma.study\" = '{study}'", uri)


# -- the file ----------------------------------------------------------------------------------
def test_axes_expand_into_named_cells_with_keys_only_where_a_backend_has_them(tmp_path, toy):
    from derma_core.study import load_study

    path = study_file(tmp_path, axes={"backend": ["prior", {"plugin": "toy", "name": "good", "overrides": {"toy.skill": 0.9}},
                                                  "toy"],
                                      "dataset": ["tiny_study", {"source": "tiny_study", "name": "again"}],
                                      "seed": [1, 2], "toy.skill": [0.2, 0.4]},
                      cells=[{"name": "extra", "plugin": "toy", "overrides": {"toy.skill": 1.0}, "dataset": "again"}])
    study = load_study(path)
    names = [c.name for c in study.cells]
    # prior has no toy.skill: one cell per dataset and seed, not one per skill
    assert names[:4] == ["prior-tiny_study-seed1", "prior-tiny_study-seed2", "prior-again-seed1", "prior-again-seed2"]
    assert "good-tiny_study-skill=0.2-seed1" in names and "toy-again-skill=0.4-seed2" in names
    assert names[-1] == "extra" and len(names) == 4 + 2 * 2 * 2 * 2 + 1
    assert study.baseline == "prior-tiny_study-seed1" and study.experiment == "tiny"
    cell = study.cell("good-again-skill=0.4-seed2")
    config = cell.user_config()
    # the axis value wins over the backend's override; the dataset and seed come from their axes
    assert config["toy"]["skill"] == 0.4 and config["seed"] == 2 and config["data"]["source"] == "tiny_study"
    assert cell.group == "good-again-skill=0.4" and cell.dataset == "again"
    assert study.cell("extra").user_config()["toy"]["skill"] == 1.0 and study.cell("extra").seed == 1


@pytest.mark.parametrize("change, fragments", [
    ({"base": {"train.epochs": 2}}, ["base.train.epochs", "no backend of this study has the config key"]),
    ({"axes": {"backend": ["prior", {"plugin": "toy", "overrides": {"toy.skill": 3}}]}},
     ["axes.backend[1].overrides", "toy.skill must be between 0 and 1"]),
    ({"axes": {"backend": ["nosuch"]}}, ["axes.backend[0]", "nosuch"]),
    ({"axes": {"backend": ["prior", "prior"]}}, ["two cells are named 'prior'", "name:"]),
    ({"axes": {"backend": ["prior"], "dataset": [{"source": "tiny_study", "dir": "${NO_SUCH_DERMA_VAR}/x"}]}},
     ["axes.dataset[0].dir", "NO_SUCH_DERMA_VAR is not set", "--data-dir"]),
    ({"baseline": "nothing"}, ["baseline 'nothing' is neither a cell nor a backend"]),
    ({"axes": {"backend": ["prior"], "seed": ["one"]}}, ["axes.seed", "whole number"]),
    ({"repeat": 3}, ["unknown key 'repeat'", "allowed: study"]),
])
def test_a_bad_study_file_is_one_line_naming_the_place(tmp_path, toy, mlflow_store, change, fragments):
    path = study_file(tmp_path, **change)
    result = derma("study", str(path), "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("name, n_cells, baseline", [("smoke", 6, "prior"),
                                                     ("vqa-vlm-derma", 13, "resnet18-mode=capped-dropout=0.2"),
                                                     ("generalisation", 7, "resnet18-seed0")])
def test_the_shipped_studies_expand_as_documented(name, n_cells, baseline, monkeypatch):
    from derma_core import plugins
    from derma_core.study import load_study, resolve_cell

    monkeypatch.setenv("DERMA_DATA", "/data")
    study = load_study(name)  # a shipped study by name
    needed = {c.plugin for c in study.cells}
    missing = needed - set(plugins.classifiers())
    if missing:
        pytest.skip(f"backend plugins not installed: {', '.join(sorted(missing))}")
    assert len(study.cells) == n_cells and study.baseline == baseline
    configs = {c.name: resolve_cell(study, c, uri="sqlite:///unused.db", device=None, quiet=True) for c in study.cells}
    if name == "smoke":
        assert {c["data"]["source"] for c in configs.values()} == {"synthetic"}
        assert configs["resnet18-seed1"]["train"]["epochs"] == 2 and configs["vlm_score"]["answer_mode"] == "score"
    if name == "vqa-vlm-derma":
        zero = configs["llava_zeroshot-prompt=p4"]  # the study's inference settings (configs/presets/llava_seed.yaml)
        assert (zero["precision"], zero["parser"], zero["inference"]["batch_size"]) == ("fp16", "seed", 1)
        assert configs["resnet18-mode=uncapped-dropout=0.0"]["class_weighting"]["mode"] == "uncapped"
        assert {c["data"]["dir"] for c in configs.values()} == {"/data/ham10000-seed"}
    if name == "generalisation":
        evals = configs["clip_zeroshot"]["evaluation"]["datasets"]
        assert len(evals) == 7 and evals["pad_ufes_20"] == "/data/pad_ufes_20"


def test_bad_command_line_values_are_refused(tmp_path, toy, mlflow_store):
    path = study_file(tmp_path)
    for args, fragment in ((["--shard", "2/2"], "0 <= i < n"), (["--data-dir", "nope=/x"], "no dataset named 'nope'"),
                           (["--only", "zzz*"], "matches no cell")):
        result = derma("study", str(path), "--dry-run", *args)
        assert result.exit_code == 2 and fragment in result.stderr, result.output
    result = derma("study", "no-such-study", "--dry-run")
    assert result.exit_code == 2 and "shipped studies, usable by name: generalisation, smoke" in result.stderr


def test_identity_is_config_code_and_data_but_not_machine_settings():
    from derma_core.study import cell_identity

    config = {"plugin": "toy", "seed": 1, "device": "cpu", "quiet": True, "toy": {"skill": 0.5},
              "data": {"source": "x", "dir": "/here", "cache_dir": None},
              "tracking": {"uri": "sqlite:///a.db", "experiment": "e", "run_name": "r"}, "output": {"work_dir": "w"}}
    base = cell_identity(config, "derma 1; git abc; toy 0.1", "d1")
    moved = dict(config, device="cuda", quiet=False, data={"source": "x", "dir": "/there", "cache_dir": "/c"},
                 tracking={"uri": "postgresql://h/db"}, output={"work_dir": "elsewhere"})
    assert cell_identity(moved, "derma 1; git abc; toy 0.1", "d1") == base
    assert cell_identity(dict(config, seed=2), "derma 1; git abc; toy 0.1", "d1") != base
    assert cell_identity(dict(config, toy={"skill": 0.6}), "derma 1; git abc; toy 0.1", "d1") != base
    assert cell_identity(config, "derma 1; git def; toy 0.1", "d1") != base
    assert cell_identity(config, "derma 1; git abc; toy 0.1", "d2") != base


def test_dataset_folders_expand_and_eval_datasets_count_by_their_digests(tmp_path, toy, monkeypatch):
    from derma_core.study import cell_identity, load_study, planning

    monkeypatch.setenv("STUDY_DATA", str(tmp_path / "data"))
    path = study_file(tmp_path, axes={"backend": ["prior"], "dataset": [
        {"name": "home", "source": "tiny_study", "dir": "${STUDY_DATA}/home",
         "eval": {"other": "${STUDY_DATA}/other", "third": "/nowhere"}}]})
    study = load_study(path, data_dirs={"third": str(tmp_path / "moved")})
    config = study.cells[0].user_config()
    assert config["data"]["dir"] == str(tmp_path / "data" / "home")
    assert config["evaluation"]["datasets"] == {"other": str(tmp_path / "data" / "other"), "third": str(tmp_path / "moved")}

    # an evaluation dataset counts by its digest, not its folder
    digests = {str(tmp_path / "data" / "other"): "d-other", str(tmp_path / "moved"): "d-third"}
    monkeypatch.setattr(planning, "_prepared_digest", lambda folder: digests[folder])
    monkeypatch.setattr(planning.DigestCache, "_home", staticmethod(lambda config: "d-home"))
    full = {"plugin": "prior", "seed": 1, "data": {"source": "tiny_study"}, "evaluation": config["evaluation"]}
    digest, error = planning.DigestCache().get(full)
    assert error is None and digest == "d-home eval:other=d-other,third=d-third"
    moved = dict(full, evaluation=dict(full["evaluation"], datasets={"other": "/elsewhere/o", "third": "/elsewhere/t"}))
    assert cell_identity(moved, "code", digest) == cell_identity(full, "code", digest)
    assert cell_identity(full, "code", "d-home eval:other=d-new,third=d-third") != cell_identity(full, "code", digest)
    monkeypatch.setattr(planning, "_prepared_digest", lambda folder: (_ for _ in ()).throw(FileNotFoundError(f"{folder}: no manifest.json")))
    digest, error = planning.DigestCache().get(full)
    assert digest is None and error.startswith("cannot load evaluation dataset other=") and "no manifest.json" in error


def test_code_version_leaves_out_dirty(monkeypatch, toy):
    from derma_core import tracking
    from derma_core.study import planning

    monkeypatch.setattr(planning, "_GIT", [])
    monkeypatch.setattr(tracking, "git_sha", lambda: "0123abc-dirty")
    assert "git 0123abc;" in planning.code_version("toy")
    monkeypatch.setattr(planning, "_GIT", [])


# -- running ---------------------------------------------------------------------------------------
def test_a_study_runs_each_cell_once_records_failures_reruns_what_is_missing_and_reports(tmp_path, toy, mlflow_store):
    from derma_core import tracking

    path = study_file(tmp_path)
    result = derma("study", str(path), "--dry-run")
    assert result.exit_code == 0 and "4 cells, 0 done, 4 would run" in result.output, result.output

    # one cell fails: the study records it and goes on; the command says so with exit 1
    result = derma("study", str(path), env={"STUDY_TOY_FAIL": "toy-seed1"})
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert [line.split()[:3] for line in lines] == [["[1/4]", "prior-seed1", "FINISHED"], ["[2/4]", "prior-seed2", "FINISHED"],
                                                    ["[3/4]", "toy-seed1", "FAILED"], ["[4/4]", "toy-seed2", "FINISHED"]]
    assert "ValueError: toy told to fail in toy-seed1" in lines[2]
    assert all("test_macro_f1" in line and " s  " in line for i, line in enumerate(lines) if i != 2)
    assert "ran 4 cell(s)" in result.output and "3 finished, 1 failed" in result.output

    runs = runs_of(mlflow_store, "tiny")
    parents = [r for r in runs if r.data.tags.get("derma.kind") == "study"]
    cells = [r for r in runs if r.data.tags.get("derma.kind") == "study_cell"]
    assert len(parents) == 1 and len(cells) == 4
    assert {tracking.parent_run_id(r) for r in cells} == {parents[0].info.run_id}
    bad = next(r for r in cells if r.data.tags["derma.study_cell"] == "toy-seed1")
    assert bad.info.status == "FAILED" and bad.data.tags["derma.error"].startswith("ValueError: toy told to fail")
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["derma.cells_done"] == "3"

    report = Path("reports/tiny.html").read_text(encoding="utf-8")
    assert "Across seeds" in report and "Study cells" in report and "Paired tests against the baseline" in report
    markdown = Path("reports/tiny.md").read_text(encoding="utf-8")
    seeds = markdown.split("## Across seeds", 1)[1].split("\n## ", 1)[0]
    # prior has both seeds finished: its mean and SD across seeds beside each seed's interval; toy has one: no row
    assert "| prior |" in seeds and "2 of 2" in seeds and "±" in seeds and "seed 2: " in seeds and "[" in seeds
    assert "| toy |" not in seeds
    assert "toy-seed1" in markdown.split("## Study cells", 1)[1]

    # rerun: only the failed cell runs
    result = derma("study", str(path))
    assert result.exit_code == 0, result.output
    assert "4 cells, 3 done, 1 to run" in result.output
    assert [line.split()[1] for line in result.output.splitlines() if line.startswith("[")] == ["toy-seed1"]
    assert "| toy |" in Path("reports/tiny.md").read_text(encoding="utf-8").split("## Across seeds", 1)[1]

    # and again: nothing runs, and it says so
    before = len(runs_of(mlflow_store, "tiny"))
    result = derma("study", str(path))
    assert result.exit_code == 0 and "nothing to run" in result.output and "4 of 4 cells done" in result.output
    assert len(runs_of(mlflow_store, "tiny")) == before
    result = derma("study", str(path), "--dry-run")
    assert result.output.count(" done (run ") == 4, result.output
    result = derma("study", str(path), "--report-only", "--report-out", "again/tiny.html")
    assert result.exit_code == 0 and "report: again/tiny.html" in result.output
    assert "Across seeds" in Path("again/tiny.md").read_text(encoding="utf-8")
    assert len(runs_of(mlflow_store, "tiny")) == before

    # --rerun forces the chosen cells; the new run is the cell's result from then on
    result = derma("study", str(path), "--rerun", "--only", "prior-seed1", "-q", "--no-report")
    assert result.exit_code == 0 and "ran 1 cell(s)" in result.output and "[1/1]" not in result.output
    cells = [r for r in runs_of(mlflow_store, "tiny") if r.data.tags.get("derma.kind") == "study_cell"]
    assert len(cells) == before - 1 + 1
    parents = [r for r in runs_of(mlflow_store, "tiny") if r.data.tags.get("derma.kind") == "study"]
    assert len(parents) == 1 and {tracking.parent_run_id(r) for r in cells} == {parents[0].info.run_id}


def test_ctrl_c_or_a_killed_process_leaves_only_the_missing_cells_to_run(tmp_path, toy, mlflow_store):
    path = study_file(tmp_path, name="stopped")
    result = derma("study", str(path), "--no-report", env={"STUDY_TOY_INTERRUPT": "toy-seed1"})
    assert result.exit_code == 130, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "interrupted (Ctrl-C): study stopped stopped in cell toy-seed1 (3/4)" in result.stderr
    assert "2 cell(s) finished" in result.stderr and "again to run only the missing cells" in result.stderr
    killed = [r for r in runs_of(mlflow_store, "stopped") if r.info.status == "KILLED"]
    assert sorted(r.data.tags.get("derma.kind") for r in killed) == ["study", "study_cell"]  # the cell and the parent

    result = derma("study", str(path), "--no-report")
    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines() if line.startswith("[")] == ["toy-seed1", "toy-seed2"]
    finished = [r for r in runs_of(mlflow_store, "stopped")
                if r.info.status == "FINISHED" and r.data.tags.get("derma.kind") == "study_cell"]
    assert len(finished) == 4 and len({r.data.tags["derma.cell_id"] for r in finished}) == 4

    # what SIGKILL leaves behind: a cell's run still RUNNING, its process gone
    import mlflow

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = next(r for r in finished if r.data.tags["derma.study_cell"] == "toy-seed2")
    client = mlflow.MlflowClient(mlflow_store)
    client.update_run(run.info.run_id, status="RUNNING")
    client.set_tag(run.info.run_id, "derma.pid", str(dead.pid))
    result = derma("study", str(path), "--dry-run")
    assert result.output.count(" done (run ") == 3, result.output
    assert f"will run (its run {run.info.run_id[:8]} was left RUNNING by a process that is gone" in result.output
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # a dry run changes nothing
    result = derma("study", str(path), "--no-report")
    assert result.exit_code == 0 and [line.split()[1] for line in result.output.splitlines()
                                      if line.startswith("[")] == ["toy-seed2"], result.output
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["derma.error"].startswith(f"killed: process {dead.pid}")


def test_a_cell_whose_data_cannot_load_is_recorded_failed_and_the_study_goes_on(tmp_path, toy, mlflow_store):
    path = study_file(tmp_path, name="nodata", baseline=None, axes={"backend": ["prior"], "dataset": [
        {"source": "dermamnist", "name": "nodata"}, "tiny_study"]})
    result = derma("study", str(path), "--no-report")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert lines[0].split()[1:3] == ["prior-nodata", "FAILED"] and "cannot load dataset 'dermamnist'" in lines[0]
    assert lines[1].split()[1:3] == ["prior-tiny_study", "FINISHED"]
    failed = next(r for r in runs_of(mlflow_store, "nodata") if r.data.tags.get("derma.study_cell") == "prior-nodata")
    assert failed.info.status == "FAILED" and "cannot load dataset 'dermamnist'" in failed.data.tags["derma.error"]
    assert failed.data.tags["mlflow.parentRunId"] == next(
        r.info.run_id for r in runs_of(mlflow_store, "nodata") if r.data.tags.get("derma.kind") == "study")


def test_a_real_backend_cell_resnet18_one_epoch(tmp_path, toy, mlflow_store):
    pytest.importorskip("derma_resnet18")
    path = study_file(tmp_path, name="cnn", baseline=None, axes={"backend": [
        {"plugin": "resnet18", "overrides": {"train.epochs": 1, "model.weights": "none", "precision": "fp32",
                                             "train.batch_size": 64}}]})
    result = derma("study", str(path), "--device", "cpu", "--no-report")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("[1/1]"))
    assert "resnet18" in line and "FINISHED" in line and "test_macro_f1" in line


def test_two_shards_on_one_store_run_every_cell_exactly_once(tmp_path, site, toy, mlflow_store):
    from derma_core import tracking

    path = study_file(tmp_path, name="sharded")
    # only the toy among the installed plugins: the workers start faster
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1", DERMA_LOAD_PLUGINS="studytoy")
    cmd = [sys.executable, "-m", "derma_core.cli", "study", str(path), "--tracking-uri", mlflow_store, "--no-report"]
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/2"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
    assert all("(shard" in out and "2 cells)" in out for out, _ in outs)
    runs = runs_of(mlflow_store, "sharded")
    cells = [r for r in runs if r.data.tags.get("derma.kind") == "study_cell"]
    parents = [r for r in runs if r.data.tags.get("derma.kind") == "study"]
    assert sorted(r.data.tags["derma.study_cell"] for r in cells) == ["prior-seed1", "prior-seed2", "toy-seed1",
                                                                       "toy-seed2"]
    assert all(r.info.status == "FINISHED" for r in cells)
    assert len(parents) == 1 and {tracking.parent_run_id(r) for r in cells} == {parents[0].info.run_id}
    # shard i ran the cells at positions i, i + 2
    for i, (out, _) in enumerate(outs):
        ran = [line.split()[1] for line in out.splitlines() if line.startswith("[")]
        assert ran == [["prior-seed1", "toy-seed1"], ["prior-seed2", "toy-seed2"]][i], out
