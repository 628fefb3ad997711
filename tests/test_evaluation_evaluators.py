"""The built-in evaluators as the runner sees them: registration, the one EvalInput contract,
outputs, figures, logging; every evaluator on 2, 3, 7 and 114 classes."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from derma_core import plugins, runner
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation.evaluators import EVALUATORS
from derma_core.interfaces import EvalInput, EvalReference, Predictions, Split
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset, tiny_descriptor

CONFIG = {"seed": 42, "evaluation": {"bootstrap": 200, "confidence": 0.95}}
LABELS = HAM.codes
K = len(LABELS)


def _split(n=60, label_set=HAM):
    codes = label_set.codes
    labels = [codes[i % len(codes)] for i in range(n)]
    frame = pd.DataFrame({"id": [f"img{i}" for i in range(n)], "label": labels,
                          "group_id": [f"les{i % 21}" for i in range(n)],  # 3 images per lesion
                          "image_path": [f"img{i}.jpg" for i in range(n)]})
    return Split("test", frame, Path("."), label_set=label_set)


def _predictions(split, invalid_every=0, probabilities=True, raw_text=False):
    label_set = split.label_set
    labels = list(split.labels)
    common = "nv" if "nv" in label_set else label_set.codes[-1]
    for i in range(0, len(labels), 4):
        labels[i] = common  # some mistakes
    if invalid_every:
        for i in range(1, len(labels), invalid_every):
            labels[i] = None
    probs = None
    if probabilities:
        k = len(label_set)
        probs = np.full((len(split), k), 0.3 / (k - 1))
        probs[np.arange(len(split)), split.y] = 0.7
    text = [f"answer {label}" for label in labels] if raw_text else None
    return Predictions(ids=split.ids, labels=labels, probabilities=probs, raw_text=text, label_set=label_set)


def _run(name, split, preds, config=CONFIG, reference=None, dataset=None):
    builtin = EVALUATORS[name]
    inputs = EvalInput(split, preds, config, dataset=dataset or tiny_descriptor(split.label_set),
                       reference=reference if builtin.needs_reference else None)
    return builtin.evaluator(inputs)


def test_builtin_evaluators_are_registered_through_the_hook():
    regs = plugins.evaluators()
    for name, builtin in EVALUATORS.items():
        assert regs[name].plugin == "derma_core.evaluation"
        assert regs[name].obj is builtin.evaluator
        assert bool(regs[name].options.get("needs_reference", False)) == builtin.needs_reference
    assert {n for n, b in EVALUATORS.items() if b.needs_reference} == {"calibration", "conformal"}


def test_classification_evaluator_outputs():
    split = _split()
    result = _run("classification", split, _predictions(split))
    m = result.metrics
    assert m["accuracy"] == pytest.approx(1 - 13 / 60)  # rows 0,4,...,56 become nv; 2 of those 15 were nv
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "malignancy_sensitivity", "malignancy_specificity",
                 "malignancy_balanced_accuracy"):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]
    assert {"weighted_f1", "f1_mel", "precision_nv", "recall_df", "support_vasc"} <= set(m)
    # malignant (akiec, bcc, mel) images in rows 0, 4, 8, ... are called nv: 6 of the 26 malignant images
    malignant = np.isin(split.labels, ["akiec", "bcc", "mel"])
    missed = malignant & (np.arange(60) % 4 == 0)
    assert m["malignancy_sensitivity"] == pytest.approx(1 - missed.sum() / malignant.sum())
    assert m["malignancy_specificity"] == 1.0  # a benign image called nv stays benign
    assert not any(k.startswith("test_") for k in m)  # the runner adds the split prefix
    assert set(result.tables) == {"per_class", "confusion_matrix"}
    assert "invalid" not in result.tables["confusion_matrix"].columns
    assert set(result.figures) == {"confusion_matrix", "confusion_matrix_normalized", "per_class"}
    assert all(isinstance(f, Figure) for f in result.figures.values())
    off = _run("classification", split, _predictions(split), {"seed": 1, "evaluation": {"bootstrap": 0}})
    assert not any(k.endswith(("_ci_low", "_ci_high")) for k in off.metrics)


def test_invalid_answers_in_every_evaluator():
    split = _split()
    preds = _predictions(split, invalid_every=5, raw_text=True)
    n_invalid = sum(label is None for label in preds.labels)
    cls = _run("classification", split, preds)
    assert cls.tables["confusion_matrix"]["invalid"].sum() == n_invalid
    title = cls.figures["confusion_matrix"].axes[0].get_title()
    assert "valid answers only" in title and f"{n_invalid} invalid not shown" in title
    shown = sum(int(t.get_text()) for t in cls.figures["confusion_matrix"].axes[0].texts)
    assert shown == len(split) - n_invalid
    validity = _run("validity", split, preds)
    assert validity.metrics["invalid_rate"] == pytest.approx(n_invalid / len(split))
    dist = validity.tables["answer_distribution"].set_index("answer")
    assert dist.at["invalid", "count"] == n_invalid and dist["count"].sum() == len(split)


def test_optional_evaluators_stay_silent_when_not_applicable():
    split = _split()
    plain = _predictions(split, probabilities=False)
    for name in ("probabilistic", "selective", "calibration", "conformal"):
        assert _run(name, split, plain).metrics == {}, name
    assert _run("validity", split, plain).metrics == {}
    assert _run("subgroups", split, plain).metrics == {}  # HAM10000's columns are not in this frame
    # free text without any invalid answer still reports a 0 invalid rate
    text = _predictions(split, raw_text=True)
    assert _run("validity", split, text).metrics["invalid_rate"] == 0
    probs = _run("probabilistic", split, _predictions(split))
    assert {"macro_auroc", "brier", "ece", "mel_sensitivity_at_spec80", "mel_sensitivity_at_spec90",
            "macro_average_precision", "auroc_mel", "malignancy_auroc", "malignancy_sensitivity_at_spec80",
            "malignancy_sensitivity_at_spec90"} <= set(probs.metrics)
    assert set(probs.figures) == {"reliability_diagram", "roc_curves"}
    assert set(probs.tables) == {"probability_per_class", "reliability"}


def test_predictions_in_another_order_are_aligned():
    split = _split()
    preds = _predictions(split, invalid_every=7)
    order = np.random.default_rng(0).permutation(len(split))
    shuffled = Predictions(ids=[preds.ids[i] for i in order], labels=[preds.labels[i] for i in order],
                           probabilities=preds.probabilities[order], label_set=HAM)
    for name in ("classification", "probabilistic"):
        a = _run(name, split, preds).metrics
        b = _run(name, split, shuffled).metrics
        assert a == pytest.approx(b)


def _draw_all(result):
    for fig in result.figures.values():
        fig.savefig(io.BytesIO(), format="png", dpi=50)


TWO = LabelSet(codes=("benign", "malignant"), groupings={"malignancy": {"benign": "benign", "malignant": "malignant"}},
               positive={"malignancy": "malignant"})
THREE = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"),
                 groupings={"malignancy": {"ack": "malignant", "bcc": "malignant", "nev": "benign"}},
                 positive={"malignancy": "malignant"}, focus="bcc")


@pytest.mark.parametrize("label_set", [TWO, THREE], ids=["2 classes, no focus", "3 classes, focus bcc"])
def test_every_evaluator_on_small_label_sets(label_set):
    ds = make_tiny_dataset(n_train=30, n_val=60, n_test=60, label_set=label_set)
    test, val = ds["test"], ds["val"]
    for split in (test, val):
        split.frame["sex"] = np.where(np.arange(len(split)) // 2 % 2, "male", "female")
    desc = ds.descriptor
    preds, ref_preds = _predictions(test, invalid_every=9, raw_text=True), _predictions(val)
    reference = EvalReference(val, ref_preds)
    config = {**CONFIG, "evaluation": {"bootstrap": 50, "subgroups": {"columns": ["sex"], "min_count": 5}}}
    results = {name: _run(name, test, preds, config, reference, desc) for name in EVALUATORS}
    for name, result in results.items():
        assert result.metrics, name
        _draw_all(result)
    m = {k: v for r in results.values() for k, v in r.metrics.items()}
    codes = label_set.codes
    assert {f"f1_{c}" for c in codes} <= set(m) and {f"auroc_{c}" for c in codes} <= set(m)
    assert {"malignancy_sensitivity", "malignancy_specificity", "malignancy_auroc",
            "malignancy_sensitivity_at_spec90", "malignancy_sensitivity_ci_low"} <= set(m)
    focus = [k for k in m if k.endswith("_sensitivity_at_spec80") and not k.startswith("malignancy")]
    assert focus == ([f"{label_set.focus}_sensitivity_at_spec80"] if label_set.focus else [])
    assert results["classification"].tables["per_class"]["label"].tolist() == list(codes)
    assert results["validity"].tables["answer_distribution"]["answer"].tolist() == [*codes, "invalid"]
    assert set(results["conformal"].tables["conformal_per_class"]["label"]) == set(codes)
    assert "subgroup_sex_female_malignancy_sensitivity" in m and "calibrated_ece" in m
    cm = results["classification"].figures["confusion_matrix"].axes[0]
    assert [t.get_text() for t in cm.get_xticklabels()] == list(codes)


def test_every_evaluator_on_114_classes_is_fast_and_readable():
    import time

    k = 114
    wide = LabelSet(codes=tuple(f"d{i:03d}" for i in range(k)),
                    groupings={"malignancy": {f"d{i:03d}": "malignant" if i % 5 == 0 else "benign" for i in range(k)}},
                    positive={"malignancy": "malignant"}, focus="d005")
    ds = make_tiny_dataset(n_train=k, n_val=2 * k, n_test=3 * k, label_set=wide)
    test, val = ds["test"], ds["val"]
    reference = EvalReference(val, _predictions(val))
    preds = _predictions(test, invalid_every=11, raw_text=True)
    start = time.perf_counter()
    results = {name: _run(name, test, preds, CONFIG, reference, ds.descriptor) for name in EVALUATORS}
    assert time.perf_counter() - start < 20
    m = results["classification"].metrics
    assert f"f1_{wide.codes[-1]}" in m and "malignancy_sensitivity_ci_high" in m
    assert "d005_sensitivity_at_spec80" in results["probabilistic"].metrics
    cm = results["classification"].figures["confusion_matrix"]
    ax = cm.axes[0]
    assert len(ax.texts) == 0  # no cell annotations for 114 classes
    assert len(ax.get_xticklabels()) == k and ax.get_xticklabels()[0].get_fontsize() < 8
    assert cm.get_size_inches()[1] > 20  # the figure grows with the classes
    roc = results["probabilistic"].figures["roc_curves"].axes[0]
    assert len(roc.get_legend().get_texts()) == 2  # the focus class and the grouping, not 114 entries
    bars = results["classification"].figures["per_class"]
    assert len(bars.axes[0].get_yticklabels()) == k
    start = time.perf_counter()
    for name in ("confusion_matrix", "per_class"):
        results["classification"].figures[name].savefig(io.BytesIO(), format="png", dpi=60)
    assert time.perf_counter() - start < 20


def test_reference_of_other_classes_is_refused():
    split, other = _split(), _split(label_set=THREE)
    with pytest.raises(ValueError, match="calibration split 'test' was made for the classes ack, bcc, nev"):
        _run("calibration", split, _predictions(split), reference=EvalReference(other, _predictions(other)))


def test_runner_evaluate_merges_all_evaluators():
    ds = make_tiny_dataset()
    test = ds["test"]
    metrics, results = runner.evaluate(test, _predictions(test, invalid_every=9, raw_text=True), CONFIG, ds)
    names = [name for name, _ in results]
    assert {"classification", "probabilistic", "validity"} <= set(names)
    assert {"macro_f1", "macro_auroc", "invalid_rate", "macro_f1_ci_high", "malignancy_sensitivity"} <= set(metrics)


def test_run_logs_metrics_tables_and_figures(mlflow_store, tiny_source):
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "tiny", "--tracking-uri", mlflow_store,
                                      "--quiet", "-o", "evaluation.bootstrap=100"])
    assert result.exit_code == 0, result.output
    assert "test_macro_f1" in result.output and "[" in result.output  # printed with its interval
    client = mlflow.MlflowClient(mlflow_store)
    run = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])[0]
    m = run.data.metrics
    assert m["test_balanced_accuracy"] == pytest.approx(1 / K)  # the prior answers nv everywhere
    assert m["test_malignancy_sensitivity"] == 0 and m["test_malignancy_specificity"] == 1
    assert m["test_macro_f1_ci_low"] <= m["test_macro_f1"] <= m["test_macro_f1_ci_high"]
    assert "test_macro_auroc" in m and "test_ece" in m and "test_invalid_rate" not in m
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/test_confusion_matrix.png", "figures/test_confusion_matrix_normalized.png",
            "figures/test_per_class.png", "figures/test_reliability_diagram.png", "figures/test_roc_curves.png"} <= figures
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert {"tables/test_per_class.csv", "tables/test_confusion_matrix.csv"} <= tables


def test_prior_uses_the_training_label_set():
    from derma_core.prior import PriorClassifier
    from derma_core.testing import fit_predict, make_context

    ds = make_tiny_dataset(label_set=THREE)
    preds = fit_predict(PriorClassifier({}), ds)
    assert preds.label_set == THREE and preds.probabilities.shape == (len(ds["test"]), 3)
    assert set(preds.labels) == {"ack"}  # the commonest training class of the tiny set
    clf = PriorClassifier({})
    clf.fit(ds["train"], ds["val"], make_context(dataset=ds))
    with pytest.raises(ValueError, match="class priors fitted on the train split was made for the classes ack"):
        clf.predict(make_tiny_dataset()["test"], None)
