"""Subgroup evaluation: per-group metrics equal scikit-learn's on the group, intervals come from
the group-level bootstrap, worst group / gap, small and missing groups, MLflow names; which
columns and how they form groups come from the dataset's descriptor (categorical, banded,
ordinal) unless evaluation.subgroups.columns says otherwise."""

import io

import numpy as np
import pandas as pd
import pytest

from derma_core.config import resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.data.descriptor import DatasetDescriptor, SubgroupColumn
from derma_core.evaluation import subgroups
from derma_core.evaluation.bootstrap import bootstrap_ci
from derma_core.evaluation.evaluators import EVALUATORS
from derma_core.evaluation.metrics import classification_metrics, group_targets, grouped_label_metrics
from derma_core.interfaces import EvalInput, Predictions
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset, tiny_descriptor

K = len(HAM)


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(-1, K, n))
    lesions = np.array([f"L{i // 2}" for i in range(n)])  # two images per lesion
    sex = np.where(np.arange(n) // 2 % 3 == 0, "female", "male").astype(object)
    sex[:6] = "unknown"  # a small group
    return y, pred, lesions, {"sex": sex.astype(str)}


def test_group_point_values_equal_sklearn_on_the_group():
    y, pred, lesions, groups = _data()
    targets = group_targets(HAM)
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, groups, K, n_resamples=0, min_count=10, targets=targets)
    for row in table.to_dict("records"):
        m = groups["sex"] == row["group"]
        expected = classification_metrics(y[m], pred[m], K) | grouped_label_metrics(y[m], pred[m], K, targets)
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "malignancy_sensitivity", "malignancy_specificity"):
            assert row[name] == pytest.approx(expected[name]), (row["group"], name)
        assert row["images"] == m.sum() and row["units"] == len(set(lesions[m]))


def test_one_group_holding_everything_gets_exactly_the_overall_interval():
    y, pred, lesions, _ = _data()
    targets = group_targets(HAM)
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, {"all": np.array(["x"] * len(y))}, K,
                                           n_resamples=300, seed=5, targets=targets)
    overall = bootstrap_ci(y, pred, lesions, K, 300, 0.95, 5, targets)
    assert set(overall) == set(subgroups.table_metric_names(table))
    for name, (low, high) in overall.items():
        assert table.at[0, f"{name}_ci_low"] == pytest.approx(low)
        assert table.at[0, f"{name}_ci_high"] == pytest.approx(high)


def test_worst_group_gap_and_small_groups():
    n = 200
    y = np.arange(n) % K
    pred = y.copy()
    group = np.array(["a"] * 100 + ["b"] * 90 + ["tiny"] * 10)
    pred[100:190] = (y[100:190] + 1) % K  # group b is always wrong
    pred[190:] = (y[190:] + 1) % K  # the small group is wrong too, but must not be "worst"
    lesions = np.array([f"L{i}" for i in range(n)])
    table, gaps = subgroups.subgroup_analysis(y, pred, lesions, {"g": group}, K, n_resamples=200, min_count=20)
    assert table.set_index("group")["small"].to_dict() == {"a": False, "b": False, "tiny": True}
    acc = gaps.set_index("metric").loc["accuracy"]
    assert acc["worst_group"] == "b" and acc["best_group"] == "a" and acc["groups_compared"] == 2
    assert acc["gap"] == pytest.approx(1.0)
    assert acc["gap_ci_low"] == pytest.approx(1.0) and acc["gap_ci_high"] == pytest.approx(1.0)
    names = subgroups.subgroup_metrics(table, gaps)
    assert names["subgroup_g_tiny_n"] == 10  # reported, not hidden
    assert names["subgroup_g_worst_accuracy"] == 0.0 and names["subgroup_g_gap_accuracy"] == 1.0


def test_gap_interval_is_wide_when_groups_are_alike():
    y, pred, lesions, groups = _data(n=600, seed=3)
    _, gaps = subgroups.subgroup_analysis(y, pred, lesions, groups, K, n_resamples=400, min_count=10)
    row = gaps.set_index("metric").loc["accuracy"]
    # same accuracy process in both groups: the interval of the gap must reach (nearly) zero
    assert row["gap_ci_low"] < 0.02 < row["gap_ci_high"]


def test_bands_categories_and_missing_values():
    ages = pd.Series(["", "12.0", "30", "44.9", "45.0", "74", "75.0", "85.0", "abc"])
    assert subgroups.banded(ages, [30, 45, 60, 75]).tolist() == [
        "missing", "<30", "30-44", "30-44", "45-59", "60-74", "75+", "75+", "missing"]
    frame = pd.DataFrame({"sex": ["male", "", None, "female"]})
    assert subgroups.group_labels(frame, "sex").tolist() == ["male", "missing", "missing", "female"]
    assert subgroups.group_labels(frame, "localization") is None
    assert subgroups.slug("lower extremity") == "lower_extremity" and subgroups.slug("<30") == "lt30"
    assert subgroups.slug("75+") == "75plus"


def test_ordinal_columns_keep_their_order_and_unknown_values_are_missing():
    spec = SubgroupColumn("fitzpatrick", kind="ordinal", order=("1", "2", "3", "4", "5", "6"), unknown=("-1",),
                          title="Fitzpatrick skin type")
    frame = pd.DataFrame({"fitzpatrick": [6, 2, -1, 2.0, "3", None, 10]})
    labels = subgroups.group_labels(frame, spec)
    assert labels.tolist() == ["6", "2", "missing", "2", "3", "missing", "10"]
    # the declared order, then undeclared values, then missing; not the alphabetical "10" < "2"
    assert subgroups.group_order(labels, spec) == ["2", "3", "6", "10", "missing"]


def _descriptor(*subgroup_columns):
    return DatasetDescriptor(name="d", title="d", labels=HAM, subgroups=subgroup_columns)


def test_columns_come_from_the_descriptor_unless_the_config_names_them():
    frame = pd.DataFrame({"age": ["20", "50", "80"], "sex": ["m", "f", "f"], "site": ["a", "b", "a"],
                          "skin": ["II", "I", "V"]})
    desc = _descriptor(SubgroupColumn("age", "banded", (30, 60)),
                       SubgroupColumn("skin", "ordinal", order=("I", "II", "III", "IV", "V", "VI")))
    groups = subgroups.split_groups(frame, {}, desc)
    assert list(groups) == ["age", "skin"]
    assert groups["age"].labels.tolist() == ["<30", "30-59", "60+"]
    assert groups["skin"].order == ["I", "II", "V"]
    # the config's columns: categorical unless the descriptor declares them (age stays banded)
    chosen = subgroups.split_groups(frame, {"evaluation": {"subgroups": {"columns": ["site", "age"]}}}, desc)
    assert list(chosen) == ["site", "age"] and chosen["site"].spec.kind == "categorical"
    assert chosen["age"].order == ["<30", "30-59", "60+"]
    # age_bands replaces the edges of a banded age column only
    rebanded = subgroups.split_groups(frame, {"evaluation": {"subgroups": {"age_bands": [40]}}}, desc)
    assert rebanded["age"].labels.tolist() == ["<40", "40+", "40+"]
    undeclared = {"evaluation": {"subgroups": {"columns": ["age"], "age_bands": [40]}}}
    with pytest.raises(ValueError, match="age_bands is set but d has no banded age"):
        subgroups.split_groups(frame, undeclared, _descriptor())
    assert subgroups.split_groups(frame, {}, _descriptor()) == {}  # no declared columns: no subgroups
    with pytest.raises(ValueError, match="band edges must increase"):
        subgroups.split_groups(frame, {}, _descriptor(SubgroupColumn("age", "banded", (60, 30))))


def test_evaluator_names_line_up_and_skips_without_metadata():
    ds = make_tiny_dataset(n_test=84)
    test = ds["test"]
    config = resolve_config(None, overrides=["evaluation.bootstrap=50", "evaluation.subgroups.min_count=5"])
    preds = Predictions(test.ids, [HAM.codes[i] for i in test.y], label_set=HAM)
    result = EVALUATORS["subgroups"].evaluator(EvalInput(test, preds, config, dataset=ds.descriptor))
    assert result.metrics == {}  # no metadata columns: nothing
    test.frame["sex"] = np.where(np.arange(len(test)) % 2, "male", "female")
    test.frame["age"] = ["50.0"] * len(test)
    result = EVALUATORS["subgroups"].evaluator(EvalInput(test, preds, config, dataset=ds.descriptor))
    assert result.metrics["subgroup_sex_female_macro_f1"] == 1.0
    assert result.metrics["subgroup_sex_female_malignancy_sensitivity"] == 1.0
    assert "subgroup_sex_female_macro_f1_ci_low" in result.metrics and "subgroup_age_45_59_n" in result.metrics
    assert "subgroup_sex_gap_malignancy_sensitivity" in result.metrics
    assert "subgroups" in result.tables and "subgroups" in result.figures
    result.figures["subgroups"].savefig(io.BytesIO(), format="png")  # the figure draws


def test_many_classes_and_many_groups_stay_small_and_fast():
    """114 classes x 40 groups: one resample's sums are (3 * 114 + 1) * 40 = 13,720 numbers (a
    confusion table per group would be 524,400); blocks are chunked below MAX_PRODUCT."""
    import time

    k = 114
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.5, y, rng.integers(-1, k, n))
    groups = {"site": np.array([f"s{i % 40}" for i in range(n)])}
    start = time.perf_counter()
    table, gaps = subgroups.subgroup_analysis(y, pred, np.arange(n).astype(str), groups, k, n_resamples=200)
    assert time.perf_counter() - start < 20
    assert len(table) == 40 and table["accuracy_ci_low"].notna().all()


def test_prepared_synthetic_splits_carry_the_metadata_columns(tmp_path):
    from derma_core.data.prepare import PrepParams, load_prepared, prepare
    from derma_core.data.synthetic import generate

    raw = generate(tmp_path / "raw", n=168, seed=2, workers=1)
    prepare(raw, tmp_path / "p", PrepParams(size=16, split="grouped"), workers=1, progress=False, log=lambda m: None)
    ds = load_prepared(tmp_path / "p")
    for split in ("train", "val", "test"):
        assert {"sex", "age", "localization", "dx_type"} <= set(ds[split].frame.columns)
    groups = subgroups.split_groups(ds["test"].frame, resolve_config(None), ds.descriptor)
    assert set(groups) == {"sex", "localization", "dx_type", "age"}
    assert groups["age"].spec.kind == "banded"


def test_three_classes_subgroups(tmp_path):
    three = LabelSet(codes=("a", "b", "c"), groupings={"kind": {"a": "bad", "b": "bad", "c": "ok"}},
                     positive={"kind": "bad"})
    ds = make_tiny_dataset(n_test=60, label_set=three)
    test = ds["test"]
    test.frame["site"] = np.where(np.arange(len(test)) % 3 == 0, "head", "trunk")
    preds = Predictions(test.ids, [three.codes[i] for i in test.y], label_set=three)
    config = {"seed": 1, "evaluation": {"bootstrap": 30, "subgroups": {"columns": ["site"], "min_count": 5}}}
    result = EVALUATORS["subgroups"].evaluator(EvalInput(test, preds, config, dataset=tiny_descriptor(three)))
    assert result.metrics["subgroup_site_head_kind_sensitivity"] == 1.0
    assert result.metrics["subgroup_site_trunk_accuracy"] == 1.0
