"""`derma compare` end to end: runs logged into a temporary SQLite store, compared via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core import tracking
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation.evaluators import classification_evaluator, validity_evaluator
from derma_core.interfaces import EvalInput, Predictions, Split
from derma_core.labels import LabelSet
from derma_core.testing import tiny_descriptor

N = 84
THREE = LabelSet(codes=("ack", "bcc", "nev"))


def _split(ids, label_set=HAM):
    codes = label_set.codes
    frame = pd.DataFrame({"id": ids, "label": [codes[i % len(codes)] for i in range(len(ids))],
                          "group_id": [f"HAM_{i // 2:04d}" for i in range(len(ids))],
                          "image_path": [f"{i}.jpg" for i in ids]})
    return Split("test", frame, Path("."), label_set=label_set)


def _log_run(uri, experiment, name, plugin, split, labels, params, record_label_set=True):
    label_set = split.label_set
    preds = Predictions(ids=split.ids, labels=labels, raw_text=[f"answer: {l}" for l in labels], label_set=label_set)
    config = {"seed": 42, "evaluation": {"bootstrap": 200, "confidence": 0.95}}
    inputs = EvalInput(split, preds, config, dataset=tiny_descriptor(label_set))
    metrics = {}
    for evaluator in (classification_evaluator, validity_evaluator):
        metrics.update(evaluator(inputs).metrics)
    tags = {tracking.TAG_PLUGIN: plugin}
    if record_label_set:  # what derma run records; runs of older versions have neither
        tags[tracking.TAG_LABEL_SET] = ",".join(label_set.codes)
    with tracking.start_run(experiment, run_name=name, tags=tags, uri=uri) as tracker:
        tracker.log_params({"plugin": plugin, **params})
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        tracker.log_table(preds.to_frame(split), "predictions.csv")
        if record_label_set:
            tracker.log_dict(label_set.to_dict(), "label_set.json")
        return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # MLflow puts a non-default store's artifacts under ./mlruns
        mp.setenv("DERMA_MLRUNS", str(tmp / "mlruns"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        (tmp / "mlruns").mkdir()
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        split = _split([f"ISIC_{i:05d}" for i in range(N)])
        truth = split.labels
        good = list(truth)
        good[0] = "nv" if good[0] != "nv" else "mel"
        floor = ["nv"] * N
        floor[1] = None  # one invalid answer
        other = _split([f"ISIC_{i:05d}" for i in range(1, N + 1)])
        three = _split(split.ids, THREE)
        runs = {
            "good": _log_run(uri, "cmp", "good", "resnet18", split, good, {"lr": 0.0005, "seed": 42}),
            # a run of an older derma: no label_set.json, no tag; its classes are read off its table
            "floor": _log_run(uri, "cmp", "floor", "prior", split, floor, {"seed": 42}, record_label_set=False),
            "other": _log_run(uri, "elsewhere", "other", "resnet18", other, other.labels, {"lr": 0.001, "seed": 42}),
            "three": _log_run(uri, "elsewhere", "three", "resnet18", three, three.labels, {"lr": 0.001, "seed": 42}),
        }
        yield uri, runs, tmp


def _invoke(*args):
    return CliRunner().invoke(cli, ["compare", *args])


def test_compare_two_runs_table(store):
    uri, runs, _ = store
    result = _invoke(runs["good"], runs["floor"], "--tracking-uri", uri, "--bootstrap", "300")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "resnet18" in out and "prior" in out
    assert "good (" in out and "floor (" in out
    assert "lr" in out and "0.0005" in out  # the param that differs gets a column
    assert "Paired comparison on 84 images (42 groups), A = good" in out
    assert "A better" in out and "McNemar" in out
    assert "invalid_rate" in out and "malignancy_sensitivity" in out


def test_compare_json_has_pairing_and_known_counts(store):
    uri, runs, _ = store
    result = _invoke(runs["good"], runs["floor"], "--tracking-uri", uri, "--format", "json", "--bootstrap", "300")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["plugin"] for r in data["runs"]] == ["resnet18", "prior"]
    good_metrics = data["runs"][0]["metrics"]
    assert good_metrics["accuracy"] == pytest.approx(83 / 84)
    assert good_metrics["macro_f1_ci_low"] <= good_metrics["macro_f1"] <= good_metrics["macro_f1_ci_high"]
    paired = data["paired"]
    mc = paired["mcnemar"]
    # floor is right only on the 12 nv images; good misses image 0 only (an akiec)
    assert mc["both"] == 12 and mc["a_only"] == 83 - 12 and mc["b_only"] == 0
    assert mc["p_value"] < 1e-10
    assert paired["classes"] == list(HAM.codes)
    # malignant images: akiec, bcc, mel at i % 7 in (0, 1, 4): 36 of 84; floor (nv) catches none
    assert paired["differences"]["malignancy_sensitivity"]["b"] == 0
    assert paired["differences"]["malignancy_sensitivity"]["a"] == pytest.approx(35 / 36)  # image 0 called nv
    d = paired["differences"]["accuracy"]
    assert d["diff"] == pytest.approx(83 / 84 - 12 / 84) and d["ci_low"] > 0
    assert paired["differences"]["macro_f1"]["ci_low"] > 0
    assert data["paired_skipped"] is None


def test_compare_same_run_twice_is_no_difference(store):
    uri, runs, _ = store
    result = _invoke(runs["good"], runs["good"], "--tracking-uri", uri, "--format", "json", "--bootstrap", "100")
    assert result.exit_code == 0, result.output
    paired = json.loads(result.stdout)["paired"]
    assert paired["mcnemar"]["p_value"] == 1
    assert all(d["diff"] == 0 and d["ci_low"] == 0 == d["ci_high"] for d in paired["differences"].values())


def test_compare_refuses_pairing_across_test_sets(store):
    uri, runs, _ = store
    result = _invoke(runs["good"], runs["other"], "--tracking-uri", uri)
    assert result.exit_code == 0, result.output  # the side-by-side table still makes sense
    assert "no paired comparison" in result.output and "different images" in result.output
    assert "McNemar" not in result.output
    strict = _invoke(runs["good"], runs["other"], "--tracking-uri", uri, "--paired")
    assert strict.exit_code == 1 and "error: no paired comparison" in strict.output


def test_compare_refuses_pairing_across_label_sets(store):
    uri, runs, _ = store
    result = _invoke(runs["good"], runs["three"], "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    assert "no paired comparison: good" in result.output and "ack, bcc, nev (3 classes)" in result.output
    assert "classes" in result.output.splitlines()[0]  # the table says how many classes each run has
    assert "McNemar" not in result.output


def test_compare_experiment_markdown_csv_and_plot(store):
    uri, runs, tmp = store
    plot = tmp / "out" / "cmp.png"
    result = _invoke("--experiment", "cmp", "--tracking-uri", uri, "--format", "markdown", "--plot", str(plot),
                     "--bootstrap", "100")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("| run | plugin |") and lines[1].startswith("|---|")
    assert lines[2].startswith("| good (") and lines[3].startswith("| floor (")  # best macro-F1 first
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = _invoke("--experiment", "cmp", "--tracking-uri", uri, "--format", "csv", "--no-paired")
    assert csv.exit_code == 0, csv.output
    frame = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    assert list(frame["run_name"]) == ["good", "floor"]
    assert {"run_id", "plugin", "macro_f1", "macro_f1_ci_low", "accuracy", "lr"} <= set(frame.columns)
    assert frame.loc[1, "macro_f1"] == pytest.approx(2 * 12 / (2 * 12 + 71 + 0) / 7)  # nv's F1 over 7 labels


def test_compare_errors(store):
    uri, runs, _ = store
    nothing = _invoke("--tracking-uri", uri)
    assert nothing.exit_code == 2 and "give run ids or --experiment" in nothing.output
    missing = _invoke("0123456789abcdef", "--tracking-uri", uri)
    assert missing.exit_code == 1 and "run '0123456789abcdef' not found" in missing.output
    bad_metric = _invoke(runs["good"], "--tracking-uri", uri, "--metric", "f2")
    assert bad_metric.exit_code == 2 and "no run has metric test_f2; available:" in bad_metric.output
    assert "macro_f1" in bad_metric.output
    no_exp = _invoke("--experiment", "nope", "--tracking-uri", uri)
    assert no_exp.exit_code == 1 and "no MLflow experiment named 'nope'" in no_exp.output
    three = _invoke(runs["good"], runs["floor"], runs["other"], "--tracking-uri", uri, "--paired")
    assert three.exit_code == 2 and "exactly two runs" in three.output


def test_compare_is_listed_in_help():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "compare" in result.output
