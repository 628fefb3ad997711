"""`derma run` end to end into a temporary SQLite store, read back with MlflowClient."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from derma_core import hookimpl, plugins, tracking
from derma_core.cli import cli
from derma_core.interfaces import Predictions


def _only_run(uri, experiment="tiny"):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


class RowCounter:
    @hookimpl
    def register_evaluators(self, register):
        def count(inputs):
            from derma_core.interfaces import EvalResult

            return EvalResult(metrics={"rows_seen": float(len(inputs.split)),
                                       "nv_predicted": float(sum(l == "nv" for l in inputs.predictions.labels)),
                                       "classes_seen": float(len(inputs.label_set))})

        register("row_counter", count)


@pytest.fixture
def row_counter():
    plugin = RowCounter()
    plugins.pm.register(plugin, name="test-row-counter")
    yield
    plugins.pm.unregister(plugin)


def test_run_prior_end_to_end(mlflow_store, tiny_source, row_counter):
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny", "--tracking-uri", mlflow_store,
                                      "--run-name", "floor", "--quiet", "-o", "evaluation.bootstrap=50"])
    assert result.exit_code == 0, result.output
    client, run = _only_run(mlflow_store)
    assert f"MLflow run id: {run.info.run_id}" in result.output
    assert run.info.status == "FINISHED" and run.info.run_name == "floor"
    tags = run.data.tags
    assert tags["derma.plugin"] == "prior" and tags["derma.dataset"] == "tiny"
    assert tags["derma.dataset_digest"] == "digest-tiny-0" and tags["derma.synthetic"] == "true"
    assert tags["derma.version"] and "derma.git_sha" in tags
    params = run.data.params
    assert params["plugin"] == "prior" and params["seed"] == "42" and params["data_source"] == "tiny"
    metrics = run.data.metrics
    # prior predicts nv (the majority) everywhere: 15 of the 35 test rows are nv
    assert metrics["test_accuracy"] == pytest.approx(15 / 35)
    assert "test_macro_f1" in metrics and "test_macro_f1_ci_low" in metrics
    assert metrics["test_rows_seen"] == 35 and metrics["test_nv_predicted"] == 35  # plugin evaluator ran
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "predictions.csv", "dataset.json", "label_set.json"} <= artifacts
    assert metrics["test_classes_seen"] == 7 and tags["derma.label_set"] == "akiec,bcc,bkl,df,mel,nv,vasc"
    assert "HAM10000" in tags["derma.dataset_citation"] and "CC BY-NC" in tags["derma.dataset_licence"]
    config = tracking.load_run_config(run.info.run_id, uri=mlflow_store)
    assert config["plugin"] == "prior" and config["evaluation"]["bootstrap"] == 50
    preds = tracking.load_run_table(run.info.run_id, uri=mlflow_store)
    assert list(preds.columns[:4]) == ["id", "group_id", "label", "predicted"]
    assert (preds["predicted"] == "nv").all() and len(preds) == 35
    contexts = sorted(d.tags[0].value for d in run.inputs.dataset_inputs)
    assert contexts == ["test", "train", "val"]


class Exploding:
    name = "exploding"

    def __init__(self, config):
        pass

    def fit(self, train, val, ctx):
        (ctx.work_dir / "checkpoint.txt").write_text("epoch 1")

    def predict(self, split, ctx):
        raise RuntimeError("GPU fell off the bus")


class ExplodingPlugin:
    @hookimpl
    def register_classifiers(self, register):
        register("exploding", Exploding)


@pytest.fixture
def exploding():
    plugin = ExplodingPlugin()
    plugins.pm.register(plugin, name="test-exploding")
    yield
    plugins.pm.unregister(plugin)


def test_failing_plugin_marks_run_failed_and_keeps_partial_results(mlflow_store, tiny_source, exploding, tmp_path):
    result = CliRunner().invoke(cli, ["run", "--plugin", "exploding", "--dataset", "tiny", "-q"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "exploding failed: RuntimeError: GPU fell off the bus" in lines[0]
    client, run = _only_run(mlflow_store)
    assert run.info.status == "FAILED"
    assert run.data.tags["derma.error"] == "RuntimeError: GPU fell off the bus"
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    kept = tmp_path / "mlruns" / "work" / run.info.run_id / "checkpoint.txt"
    assert kept.read_text() == "epoch 1" and str(kept.parent) in lines[0]


def test_same_seed_same_metrics(mlflow_store, tiny_source):
    from derma_core import runner
    from derma_core.config import resolve_config

    config = resolve_config("prior", overrides=["data.source=tiny", "quiet=true", "evaluation.bootstrap=100"])
    a = runner.run(config).metrics
    b = runner.run(config).metrics
    assert a == b and "test_accuracy_ci_high" in a


class EpochReporter:
    """Reports a per-epoch val_accuracy of 0.9 that the final evaluation must not be hidden by."""

    name = "epoch_reporter"

    def __init__(self, config):
        pass

    def fit(self, train, val, ctx):
        for epoch in range(3):
            ctx.report_epoch(epoch, {"val_accuracy": 0.9})

    def predict(self, split, ctx):
        return Predictions(ids=split.ids, labels=["akiec"] * len(split), label_set=split.label_set)


class EpochReporterPlugin:
    @hookimpl
    def register_classifiers(self, register):
        register("epoch_reporter", EpochReporter)


def test_final_val_metrics_are_the_latest_values(mlflow_store, tiny_source):
    from derma_core import runner
    from derma_core.config import resolve_config

    plugin = EpochReporterPlugin()
    plugins.pm.register(plugin, name="test-epoch-reporter")
    try:
        config = resolve_config("epoch_reporter", overrides=["data.source=tiny", "quiet=true",
                                                            "evaluation.split=val", "evaluation.bootstrap=0"])
        result = runner.run(config)
    finally:
        plugins.pm.unregister(plugin)
    client = mlflow.MlflowClient(mlflow_store)
    run = client.get_run(result.run_id)
    expected = result.metrics["val_accuracy"]
    assert expected < 0.5  # always akiec
    assert run.data.metrics["val_accuracy"] == pytest.approx(expected)
    history = client.get_metric_history(result.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]


def test_run_on_another_label_set(mlflow_store, tiny_source, row_counter):
    """A dataset with three classes of its own: the backend, every evaluator and MLflow see its
    classes (no HAM10000 assumption), and the grouped (malignancy) metrics are reported."""
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny3", "--tracking-uri", mlflow_store,
                                      "--quiet", "-o", "evaluation.bootstrap=20"])
    assert result.exit_code == 0, result.output
    client, run = _only_run(mlflow_store, "tiny3")
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["derma.label_set"] == "ack,bcc,nev"
    assert metrics["test_classes_seen"] == 3
    assert {"test_f1_ack", "test_f1_bcc", "test_f1_nev"} <= set(metrics)
    assert not any(k.startswith("test_f1_") and k[8:] not in ("ack", "bcc", "nev") for k in metrics)
    assert not any("mel_" in k for k in metrics)  # no focus class declared: no melanoma metric
    assert any(k.startswith("test_malignancy_") for k in metrics), sorted(metrics)
    assert tracking.load_run_label_set(run.info.run_id, uri=mlflow_store).codes == ("ack", "bcc", "nev")
    preds = tracking.load_run_table(run.info.run_id, uri=mlflow_store)
    assert set(preds["label"]) == {"ack", "bcc", "nev"}
    assert [c for c in preds.columns if c.startswith("prob_")] == ["prob_ack", "prob_bcc", "prob_nev"]


class WrongClasses:
    name = "wrong_classes"

    def __init__(self, config):
        pass

    def fit(self, train, val, ctx):
        pass

    def predict(self, split, ctx):
        from derma_core.data.datasets.ham10000 import LABEL_SET

        return Predictions(split.ids, ["nv"] * len(split), label_set=LABEL_SET)


class WrongClassesPlugin:
    @hookimpl
    def register_classifiers(self, register):
        register("wrong_classes", WrongClasses)


def test_backend_predicting_other_classes_is_refused(mlflow_store, tiny_source):
    plugin = WrongClassesPlugin()
    plugins.pm.register(plugin, name="test-wrong-classes")
    try:
        result = CliRunner().invoke(cli, ["run", "--plugin", "wrong_classes", "--dataset", "tiny3",
                                          "--tracking-uri", mlflow_store, "--quiet"])
    finally:
        plugins.pm.unregister(plugin)
    assert result.exit_code != 0
    assert "predicted over the classes akiec" in result.output and "ack, bcc, nev" in result.output
