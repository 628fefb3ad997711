"""Subgroup evaluation: per-group metrics equal scikit-learn's on the group, intervals come from
the lesion-level bootstrap, worst group / gap, small and missing groups, MLflow names, metadata
in the split frames."""

import numpy as np
import pandas as pd
import pytest

from derma_core.config import resolve_config
from derma_core.evaluation import subgroups
from derma_core.evaluation.bootstrap import bootstrap_ci
from derma_core.evaluation.evaluators import EVALUATORS
from derma_core.evaluation.metrics import classification_metrics
from derma_core.interfaces import Predictions
from derma_core.labels import LABELS
from derma_core.testing import make_tiny_dataset


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(-1, 7, n))
    lesions = np.array([f"L{i // 2}" for i in range(n)])  # two images per lesion
    sex = np.where(np.arange(n) // 2 % 3 == 0, "female", "male").astype(object)
    sex[:6] = "unknown"  # a small group
    return y, pred, lesions, {"sex": sex.astype(str)}


def test_group_point_values_equal_sklearn_on_the_group():
    y, pred, lesions, groups = _data()
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, groups, n_resamples=0, min_count=10)
    for row in table.itertuples(index=False):
        m = groups["sex"] == row.group
        expected = classification_metrics(y[m], pred[m])
        for name in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert getattr(row, name) == pytest.approx(expected[name]), (row.group, name)
        assert row.images == m.sum() and row.lesions == len(set(lesions[m]))


def test_one_group_holding_everything_gets_exactly_the_overall_interval():
    y, pred, lesions, _ = _data()
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, {"all": np.array(["x"] * len(y))},
                                           n_resamples=300, seed=5)
    overall = bootstrap_ci(y, pred, lesions, 300, 0.95, 5)
    for name, (low, high) in overall.items():
        assert table.at[0, f"{name}_ci_low"] == pytest.approx(low)
        assert table.at[0, f"{name}_ci_high"] == pytest.approx(high)


def test_worst_group_gap_and_small_groups():
    n = 200
    y = np.arange(n) % 7
    pred = y.copy()
    group = np.array(["a"] * 100 + ["b"] * 90 + ["tiny"] * 10)
    pred[100:190] = (y[100:190] + 1) % 7  # group b is always wrong
    pred[190:] = (y[190:] + 1) % 7  # the small group is wrong too, but must not be "worst"
    lesions = np.array([f"L{i}" for i in range(n)])
    table, gaps = subgroups.subgroup_analysis(y, pred, lesions, {"g": group}, n_resamples=200, min_count=20)
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
    _, gaps = subgroups.subgroup_analysis(y, pred, lesions, groups, n_resamples=400, min_count=10)
    row = gaps.set_index("metric").loc["accuracy"]
    # same accuracy process in both groups: the interval of the gap must reach (nearly) zero
    assert row["gap_ci_low"] < 0.02 < row["gap_ci_high"]


def test_age_bands_and_missing_values():
    ages = pd.Series(["", "12.0", "30", "44.9", "45.0", "74", "75.0", "85.0", "abc"])
    assert subgroups.age_bands(ages, [30, 45, 60, 75]).tolist() == [
        "missing", "<30", "30-44", "30-44", "45-59", "60-74", "75+", "75+", "missing"]
    frame = pd.DataFrame({"sex": ["male", "", None, "female"]})
    assert subgroups.group_labels(frame, "sex", []).tolist() == ["male", "missing", "missing", "female"]
    assert subgroups.group_labels(frame, "localization", []) is None
    assert subgroups.slug("lower extremity") == "lower_extremity" and subgroups.slug("<30") == "lt30"
    assert subgroups.slug("75+") == "75plus"


def test_evaluator_names_line_up_and_skips_without_metadata():
    ds = make_tiny_dataset(n_test=84)
    test = ds["test"]
    config = resolve_config(None, overrides=["evaluation.bootstrap=50", "evaluation.subgroups.min_count=5"])
    preds = Predictions(test.ids, [LABELS[i] for i in test.y])
    assert EVALUATORS["subgroups"](test, preds, config).metrics == {}  # no metadata columns: nothing
    test.frame["sex"] = np.where(np.arange(len(test)) % 2, "male", "female")
    test.frame["age"] = ["50.0"] * len(test)
    result = EVALUATORS["subgroups"](test, preds, config)
    assert result.metrics["subgroup_sex_female_macro_f1"] == 1.0
    assert "subgroup_sex_female_macro_f1_ci_low" in result.metrics and "subgroup_age_45_59_n" in result.metrics
    assert "subgroups" in result.tables and "subgroups" in result.figures
    result.figures["subgroups"].savefig(__import__("io").BytesIO(), format="png")  # the figure draws


def test_prepared_synthetic_splits_carry_the_metadata_columns(tmp_path):
    from derma_core.data.prepare import PrepParams, load_prepared, prepare
    from derma_core.data.synthetic import generate

    raw = generate(tmp_path / "raw", n=168, seed=2, workers=1)
    prepare(raw, tmp_path / "p", PrepParams(size=16, split="grouped"), workers=1, progress=False, log=lambda m: None)
    ds = load_prepared(tmp_path / "p")
    for split in ("train", "val", "test"):
        assert {"sex", "age", "localization", "dx_type"} <= set(ds[split].frame.columns)
    groups = subgroups.split_groups(ds["test"].frame, resolve_config(None))
    assert set(groups) == {"sex", "localization", "dx_type", "age"}
