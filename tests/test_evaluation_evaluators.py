"""The built-in evaluators as the runner sees them: registration, outputs, figures, logging."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from derma_core import plugins, runner
from derma_core.cli import cli
from derma_core.evaluation.evaluators import EVALUATORS
from derma_core.interfaces import Predictions, Split
from derma_core.labels import LABELS

CONFIG = {"seed": 42, "evaluation": {"bootstrap": 200, "confidence": 0.95}}


def _split(n=60):
    labels = [LABELS[i % 7] for i in range(n)]
    frame = pd.DataFrame({"id": [f"img{i}" for i in range(n)], "label": labels,
                          "lesion_id": [f"les{i % 21}" for i in range(n)],  # 3 images per lesion
                          "image_path": [f"img{i}.jpg" for i in range(n)]})
    return Split("test", frame, Path("."))


def _predictions(split, invalid_every=0, probabilities=True, raw_text=False):
    labels = list(split.labels)
    for i in range(0, len(labels), 4):
        labels[i] = "nv"  # some mistakes
    if invalid_every:
        for i in range(1, len(labels), invalid_every):
            labels[i] = None
    probs = None
    if probabilities:
        probs = np.full((len(split), 7), 0.05)
        probs[np.arange(len(split)), split.y] = 0.7
    text = [f"answer {label}" for label in labels] if raw_text else None
    return Predictions(ids=split.ids, labels=labels, probabilities=probs, raw_text=text)


def test_builtin_evaluators_are_registered_through_the_hook():
    regs = plugins.evaluators()
    for name in ("classification", "probabilistic", "validity"):
        assert regs[name].plugin == "derma_core.evaluation"
        assert regs[name].obj is EVALUATORS[name]


def test_classification_evaluator_outputs():
    split = _split()
    result = EVALUATORS["classification"](split, _predictions(split), CONFIG)
    m = result.metrics
    assert m["accuracy"] == pytest.approx(1 - 13 / 60)  # rows 0,4,...,56 become nv; 2 of those 15 were nv
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
    assert {"weighted_f1", "f1_mel", "precision_nv", "recall_df", "support_vasc"} <= set(m)
    assert not any(k.startswith("test_") for k in m)  # the runner adds the split prefix
    assert set(result.tables) == {"per_class", "confusion_matrix"}
    assert "invalid" not in result.tables["confusion_matrix"].columns
    assert set(result.figures) == {"confusion_matrix", "confusion_matrix_normalized"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    off = EVALUATORS["classification"](split, _predictions(split), {"seed": 1, "evaluation": {"bootstrap": 0}})
    assert not any(k.endswith(("_ci_low", "_ci_high")) for k in off.metrics)


def test_invalid_answers_in_every_evaluator():
    split = _split()
    preds = _predictions(split, invalid_every=5, raw_text=True)
    n_invalid = sum(label is None for label in preds.labels)
    cls = EVALUATORS["classification"](split, preds, CONFIG)
    assert cls.tables["confusion_matrix"]["invalid"].sum() == n_invalid
    title = cls.figures["confusion_matrix"].axes[0].get_title()
    assert "valid answers only" in title and f"{n_invalid} invalid not shown" in title
    shown = sum(int(t.get_text()) for t in cls.figures["confusion_matrix"].axes[0].texts)
    assert shown == len(split) - n_invalid
    validity = EVALUATORS["validity"](split, preds, CONFIG)
    assert validity.metrics["invalid_rate"] == pytest.approx(n_invalid / len(split))
    dist = validity.tables["answer_distribution"].set_index("answer")
    assert dist.at["invalid", "count"] == n_invalid and dist["count"].sum() == len(split)


def test_optional_evaluators_stay_silent_when_not_applicable():
    split = _split()
    plain = _predictions(split, probabilities=False)
    assert EVALUATORS["probabilistic"](split, plain, CONFIG).metrics == {}
    assert EVALUATORS["validity"](split, plain, CONFIG).metrics == {}
    # free text without any invalid answer still reports a 0 invalid rate
    text = _predictions(split, raw_text=True)
    assert EVALUATORS["validity"](split, text, CONFIG).metrics["invalid_rate"] == 0
    probs = EVALUATORS["probabilistic"](split, _predictions(split), CONFIG)
    assert {"macro_auroc", "brier", "ece", "mel_sensitivity_at_spec80", "mel_sensitivity_at_spec90",
            "macro_average_precision", "auroc_mel"} <= set(probs.metrics)
    assert set(probs.figures) == {"reliability_diagram", "roc_curves"}
    assert set(probs.tables) == {"probability_per_class", "reliability"}


def test_predictions_in_another_order_are_aligned():
    split = _split()
    preds = _predictions(split, invalid_every=7)
    order = np.random.default_rng(0).permutation(len(split))
    shuffled = Predictions(ids=[preds.ids[i] for i in order], labels=[preds.labels[i] for i in order],
                           probabilities=preds.probabilities[order])
    for name in ("classification", "probabilistic"):
        a = EVALUATORS[name](split, preds, CONFIG).metrics
        b = EVALUATORS[name](split, shuffled, CONFIG).metrics
        assert a == pytest.approx(b)


def test_runner_evaluate_merges_all_evaluators():
    split = _split()
    metrics, results = runner.evaluate(split, _predictions(split, invalid_every=9, raw_text=True), CONFIG)
    names = [name for name, _ in results]
    assert {"classification", "probabilistic", "validity"} <= set(names)
    assert {"macro_f1", "macro_auroc", "invalid_rate", "macro_f1_ci_high"} <= set(metrics)


def test_run_logs_metrics_tables_and_figures(mlflow_store, tiny_source):
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny", "--tracking-uri", mlflow_store,
                                      "--quiet", "-o", "evaluation.bootstrap=100"])
    assert result.exit_code == 0, result.output
    assert "test_macro_f1" in result.output and "[" in result.output  # printed with its interval
    client = mlflow.MlflowClient(mlflow_store)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    m = run.data.metrics
    assert m["test_balanced_accuracy"] == pytest.approx(1 / 7)  # the prior answers nv everywhere
    assert m["test_macro_f1_ci_low"] <= m["test_macro_f1"] <= m["test_macro_f1_ci_high"]
    assert "test_macro_auroc" in m and "test_ece" in m and "test_invalid_rate" not in m
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/test_confusion_matrix.png", "figures/test_confusion_matrix_normalized.png",
            "figures/test_reliability_diagram.png", "figures/test_roc_curves.png"} <= figures
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert {"tables/test_per_class.csv", "tables/test_confusion_matrix.csv"} <= tables
