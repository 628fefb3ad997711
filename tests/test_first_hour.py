"""What a person sees in their first hour: every command says what they need next.

``derma run`` ends with the run's name, id, where its artifacts are and how to see it; a
SQLite store elsewhere keeps its artifacts beside it; ``derma runs`` has a header, the dataset,
the headline metric and ``--json``; derma's experiments are model-training experiments with a
runs view of the curated params and headline metrics; progress in a log is whole lines.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import mlflow
from click.testing import CliRunner

from derma_core import hookimpl, plugins, tracking
from derma_core.cli import cli
from derma_core.interfaces import Predictions
from derma_core.progress import LINE_STEP, LineProgress, progress
from derma_core.runner import CURATED_PARAMS

RUN_ID = re.compile(r"MLflow run id: (\w+)")


def _run(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny", "-o", "evaluation.bootstrap=20",
                                      *args])
    assert result.exit_code == 0, result.output
    return RUN_ID.search(result.output).group(1), result.output


def test_run_ends_with_its_name_id_artifacts_and_links(mlflow_store, tiny_source, tmp_path):
    run_id, out = _run("--tracking-uri", mlflow_store)
    run = mlflow.MlflowClient(mlflow_store).get_run(run_id)
    exp_id = run.info.experiment_id
    metric = run.data.metrics["test_macro_f1"]
    low, high = run.data.metrics["test_macro_f1_ci_low"], run.data.metrics["test_macro_f1_ci_high"]
    assert "test_macro_f1" in out and f"{metric:.4f}  [{low:.3f}, {high:.3f}]" in out
    assert f"run {run.info.run_name}\n" in out
    assert f"artifacts: {tmp_path / 'mlruns' / 'artifacts' / run_id / 'artifacts'}\n" in out
    # the default store: plain `derma ui`; the run's page and the experiment's runs view, model-training layout
    assert f"`derma ui`, then http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}?{tracking.UI_QUERY}" in out
    assert f"#/experiments/{exp_id}/runs?viewStateShareKey={tracking.VIEW_ID}&{tracking.UI_QUERY}" in out


def test_a_sqlite_store_elsewhere_keeps_the_artifacts_beside_it(mlflow_store, tiny_source, tmp_path,
                                                                 mlflow_template_db):
    elsewhere = tmp_path / "team" / "store"
    elsewhere.mkdir(parents=True)
    shutil.copy(mlflow_template_db, elsewhere / "derma.db")
    uri = f"sqlite:///{elsewhere / 'derma.db'}"
    run_id, out = _run("--tracking-uri", uri)
    run = mlflow.MlflowClient(uri).get_run(run_id)
    where = elsewhere / "artifacts" / run_id / "artifacts"
    assert run.info.artifact_uri == where.as_uri()
    assert (where / "predictions.csv").is_file()
    assert not (tmp_path / "mlruns" / "artifacts" / run_id).exists()  # not in the current folder's mlruns
    assert f"artifacts: {where}\n" in out
    assert f"store {uri})" in out and f"`derma ui --tracking-uri {uri}`, then" in out


def test_experiments_are_model_training_experiments_with_derma_s_runs_view(mlflow_store, tiny_source):
    client = mlflow.MlflowClient(mlflow_store)
    old = client.create_experiment("tiny")  # an experiment made before derma tagged its experiments
    chosen = client.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    _run("--tracking-uri", mlflow_store)
    _run("--tracking-uri", mlflow_store, "--experiment", "chosen")
    _run("--tracking-uri", mlflow_store, "--experiment", "fresh")
    fresh = client.get_experiment_by_name("fresh").experiment_id
    for exp_id in (old, fresh):
        tags = client.get_experiment(exp_id).tags
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        view = json.loads(tags[f"mlflow.sharedViewState.{tracking.VIEW_ID}"])
        assert view["name"] == tracking.VIEW_NAME and isinstance(view["createdAt"], int)
        columns = json.loads(view["state"])["selectedColumns"]
        assert columns[0] == "params.`plugin`" and "metrics.`test_macro_f1`" in columns
        assert not [c for c in columns if "arch_kwargs" in c or "aug_" in c]
    assert client.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"  # kept
    # the view is written once: a second run leaves it (and its creation time) alone
    before = client.get_experiment(fresh).tags[f"mlflow.sharedViewState.{tracking.VIEW_ID}"]
    _run("--tracking-uri", mlflow_store, "--experiment", "fresh")
    assert client.get_experiment(fresh).tags[f"mlflow.sharedViewState.{tracking.VIEW_ID}"] == before


def test_the_runs_view_shows_curated_params():
    assert set(tracking.VIEW_PARAMS) <= set(CURATED_PARAMS), set(tracking.VIEW_PARAMS) - set(CURATED_PARAMS)


def test_derma_runs_has_a_header_the_dataset_the_metric_and_json(mlflow_store, tiny_source):
    first, _ = _run("--tracking-uri", mlflow_store)
    second, _ = _run("--tracking-uri", mlflow_store, "-o", "evaluation.split=val")
    metrics = {r: mlflow.MlflowClient(mlflow_store).get_run(r).data.metrics for r in (first, second)}
    result = CliRunner().invoke(cli, ["runs", "--tracking-uri", mlflow_store])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATUS", "PLUGIN", "DATASET", "MACRO-F1", "STARTED", "NAME"]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert list(rows) == [second, first]  # newest first
    assert re.search(rf"^{first}  FINISHED  prior +tiny +{metrics[first]['test_macro_f1']:.3f} ", rows[first])
    assert f"{metrics[second]['val_macro_f1']:.3f} (val)" in rows[second]  # evaluated on val: says so
    result = CliRunner().invoke(cli, ["runs", "--tracking-uri", mlflow_store, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["run_id"] for r in data] == [second, first]
    row = data[1]
    assert row["dataset"] == "tiny" and row["plugin"] == "prior" and row["experiment"] == "tiny"
    assert row["headline_metric"] == "test_macro_f1" and row["headline_value"] == metrics[first]["test_macro_f1"]
    assert row["metrics"]["test_macro_f1"]["ci_low"] == metrics[first]["test_macro_f1_ci_low"]
    assert row["status"] == "FINISHED" and row["process"] is None and row["start_time"]
    empty = CliRunner().invoke(cli, ["runs", "--tracking-uri", mlflow_store, "--json", "--status", "KILLED"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []


# -- progress off a terminal ---------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_tqdm_on_a_terminal_and_lines_elsewhere():
    from tqdm import tqdm

    on_tty = progress(range(3), desc="x", file=_Terminal())
    assert isinstance(on_tty, tqdm) and not isinstance(on_tty, LineProgress)
    on_tty.close()
    log = io.StringIO()
    bar = progress(total=1000, desc="epoch 1/3", file=log, line_interval=0, mininterval=0)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.set_postfix(loss=0.25)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and all(line == line.rstrip() for line in lines)
    # a line every LINE_STEP percent at most, the last at 100 %
    assert 2 <= len(lines) <= 100 // LINE_STEP + 1, lines
    assert lines[-1].startswith("epoch 1/3: 100% 1000/1000")
    # a short loop (well under the interval) is one line, at its end; an unknown length has no percentage
    log = io.StringIO()
    for _ in progress(range(500), desc="predict", file=log):
        pass
    for _ in progress(iter(range(7)), desc="scan", file=log):
        pass
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0], log.getvalue().splitlines()[1]]
    first, second = log.getvalue().splitlines()
    assert first.startswith("predict: 100% 500/500 [") and second.startswith("scan: 7 [")
    # a loop left early says where it stopped
    log = io.StringIO()
    with progress(range(50), desc="early", file=log) as bar:
        for i in bar:
            if i == 19:
                break
    assert log.getvalue().startswith("early:  38% 19/50") or log.getvalue().startswith("early:  40% 20/50")
    quiet = io.StringIO()
    for _ in progress(range(10), desc="q", file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


class Chatty:
    """A classifier that loops through ctx.progress as a training loop does."""

    name = "chatty"

    def __init__(self, config):
        self.config = config

    def fit(self, train, val, ctx):
        for epoch in (1, 2, 3):
            for _ in ctx.progress(range(2000), total=2000, desc=f"epoch {epoch}/3"):
                pass

    def predict(self, split, ctx):
        for _ in ctx.progress(split.ids, desc="predict"):
            pass
        return Predictions(ids=split.ids, labels=[split.label_set.codes[0]] * len(split), label_set=split.label_set)


class ChattyPlugin:
    @hookimpl
    def register_classifiers(self, register):
        register("chatty", Chatty)


def test_a_redirected_run_logs_a_line_per_epoch(mlflow_store, tiny_source):
    plugin = ChattyPlugin()
    plugins.pm.register(plugin, name="test-chatty")
    try:  # CliRunner's output is not a terminal, as `derma run ... > log.txt 2>&1`
        result = CliRunner().invoke(cli, ["run", "--plugin", "chatty", "--dataset", "tiny", "--tracking-uri",
                                          mlflow_store, "-o", "evaluation.bootstrap=0"])
    finally:
        plugins.pm.unregister(plugin)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\r" not in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], out
    assert all(" 100% 2000/2000 " in line for line in epochs)


def test_hugging_face_bars_are_off_in_a_log_and_left_alone_on_a_terminal(monkeypatch):
    from derma_core.progress import quiet_library_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    quiet_library_bars(False, stream=_Terminal())
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    quiet_library_bars(False, stream=io.StringIO())
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # a user's own choice stays
    quiet_library_bars(False, stream=io.StringIO())
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
