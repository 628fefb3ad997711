"""Subgroup evaluation against values worked out by hand and a slow reference resampler.

The hand-made split (:func:`hand_case`, three classes ``a b c`` and the grouping ``kind`` with
``a``, ``b`` in its positive group ``bad``) has these groups in its ``site`` column (one lesion
per image except head, whose three lesions have two images each):

====== ============ ============= ==========================================================
group  true         predicted     by hand
====== ============ ============= ==========================================================
head   a a b b c c  a b b b c -   accuracy 4/6; recall a 1/2, b 2/2, c 1/2 -> balanced 2/3;
                                  F1 a 2/3, b 4/5, c 2/3 -> macro 32/45; kind: sensitivity
                                  4/4, specificity 1/2 (the invalid answer ``-`` is no
                                  rejection)
trunk  b b b c      b a c a       accuracy 1/4; recall b 1/3, c 0 -> balanced 1/6; F1 a 0
                                  (predicted, never true), b 1/2, c 0 -> macro 1/6; kind:
                                  sensitivity 2/3, specificity 0/1
arm    a a a        a b b         one class: accuracy = balanced 1/3, macro-F1 not given
leg    a b          b a           2 images: small at min_count 3
(none) c a          c c           the missing group, accuracy 1/2
====== ============ ============= ==========================================================

The intervals are checked against :func:`reference_samples`, which redraws the resamples from
the documented stream (``rng.integers(0, G, size=(block, G))`` per block of ``bootstrap.BLOCK``,
lesions in sorted id order), weights every image of a group by how often its lesion was drawn,
and computes each group's metrics from the definitions.

Equivalent mutants (no observable change):
- banded: ``np.minimum(idx, len(labels) - 1)`` -> without the ``- 1`` or without the minimum:
  ``searchsorted`` over ``len(bands)`` edges returns at most ``len(bands) == len(labels) - 1``
  (NaN sorts last, onto that index, and is then overwritten with ``missing``).
- banded: ``.replace("", np.nan)`` dropped or changed: ``pd.to_numeric(..., errors="coerce")``
  already turns ``""`` into NaN.
- _level: ``np.isfinite(number) and number.is_integer()`` -> ``number.is_integer()`` alone:
  ``inf.is_integer()`` and ``nan.is_integer()`` are False, so the finiteness check never decides.
- slug: ``.strip("_")`` -> ``.strip("XX_XX")``: the text is lower-cased and every character
  outside ``a-z0-9`` already replaced by ``_``, so an upper-case ``X`` is never there to strip.
- subgroup_analysis: ``resampled_metrics(...) if n_resamples > 0 else {m: np.empty((0, g))}`` ->
  ``if (n_resamples > 0) or True``: with no resamples (0 or fewer) ``resampled_metrics`` returns
  the same empty (0, g) arrays, and nothing reads them (the intervals are NaN by ``n_resamples > 0``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derma_core.data.descriptor import DatasetDescriptor, SubgroupColumn
from derma_core.evaluation import bootstrap, subgroups
from derma_core.evaluation.metrics import group_targets
from derma_core.labels import INVALID, LabelSet

THREE = LabelSet(codes=("a", "b", "c"), groupings={"kind": {"a": "bad", "b": "bad", "c": "ok"}},
                 positive={"kind": "bad"})
K = 3
TARGETS = group_targets(THREE)
X = INVALID


def hand_case():
    y = [0, 0, 1, 1, 2, 2] + [1, 1, 1, 2] + [0, 0, 0] + [0, 1] + [2, 0]
    pred = [0, 1, 1, 1, 2, X] + [1, 0, 2, 0] + [0, 1, 1] + [1, 0] + [2, 2]
    lesions = ["H1", "H1", "H2", "H2", "H3", "H3", "T1", "T2", "T3", "T4", "A1", "A2", "A3", "G1", "G2", "M1", "M2"]
    site = ["head"] * 6 + ["trunk"] * 4 + ["arm"] * 3 + ["leg"] * 2 + [""] * 2
    sex = ["f"] * 13 + ["m"] * 2 + ["f"] * 2
    frame = pd.DataFrame({"site": site, "sex": sex})
    return np.array(y), np.array(pred), np.array(lesions), frame


def hand_groups(frame):
    return {c: subgroups.SubgroupValues(SubgroupColumn(c), labels := subgroups.group_labels(frame, c),
                                        subgroups.group_order(labels, SubgroupColumn(c)))
            for c in ("site", "sex")}


def analysis(n_resamples=0, min_count=3, **kw):
    y, pred, lesions, frame = hand_case()
    return subgroups.subgroup_analysis(y, pred, lesions, hand_groups(frame), K, n_resamples=n_resamples,
                                       min_count=min_count, targets=TARGETS, codes=THREE.codes, **kw)


# -- the slow reference ------------------------------------------------------------------------------
def reference_draws(n_units, n_resamples, seed):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_resamples:
        out.extend(rng.integers(0, n_units, size=(min(bootstrap.BLOCK, n_resamples - len(out)), n_units)))
    return out


def reference_metrics(y, p, w, k, mask):
    """One group's metrics with image weights ``w``, from the definitions (plain loops)."""
    nan = float("nan")
    total = sum(w)
    if total == 0:
        return dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "kind_sensitivity"), nan)
    recalls, f1s = [], []
    for c in range(k):
        tp = sum(wi for yi, pi, wi in zip(y, p, w) if yi == c and pi == c)
        true = sum(wi for yi, wi in zip(y, w) if yi == c)
        said = sum(wi for pi, wi in zip(p, w) if pi == c)
        if true > 0:
            recalls.append(tp / true)
        if true + said > 0:
            f1s.append(2 * tp / (true + said))  # 2TP / (2TP + FP + FN)
    pos = sum(wi for yi, wi in zip(y, w) if mask[yi])
    hit = sum(wi for yi, pi, wi in zip(y, p, w) if mask[yi] and pi != INVALID and mask[pi])
    return {"accuracy": sum(wi for yi, pi, wi in zip(y, p, w) if yi == pi) / total,
            "balanced_accuracy": float(np.mean(recalls)), "macro_f1": float(np.mean(f1s)),
            "kind_sensitivity": hit / pos if pos > 0 else nan}


def reference_samples(y, pred, lesions, labels, order, n_resamples, seed):
    """group -> metric -> its value on each resample."""
    units = sorted(set(lesions.tolist()))
    index = {u: i for i, u in enumerate(units)}
    out = {g: {m: [] for m in ("accuracy", "balanced_accuracy", "macro_f1", "kind_sensitivity")} for g in order}
    for draw in reference_draws(len(units), n_resamples, seed):
        times = np.bincount(draw, minlength=len(units))
        for g in order:
            rows = [i for i in range(len(y)) if labels[i] == g]
            w = [times[index[lesions[i]]] for i in rows]
            values = reference_metrics([y[i] for i in rows], [pred[i] for i in rows], w, K, TARGETS[0].mask)
            for m, v in values.items():
                out[g][m].append(v)
    return out


def reference_interval(values, confidence):
    kept = sorted(v for v in values if v == v)
    if not kept:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.percentile(kept, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


# -- groups table by hand -------------------------------------------------------------------------------
def test_group_rows_by_hand():
    table, _ = analysis()
    assert table[["column", "group"]].values.tolist() == [
        ["site", "arm"], ["site", "head"], ["site", "leg"], ["site", "trunk"], ["site", "missing"],
        ["sex", "f"], ["sex", "m"]]
    t = table.set_index(["column", "group"])
    head, trunk, arm = t.loc[("site", "head")], t.loc[("site", "trunk")], t.loc[("site", "arm")]
    assert head["images"] == 6 and head["units"] == 3 and trunk["units"] == 4 and t.loc[("sex", "f")]["units"] == 12
    assert head["accuracy"] == pytest.approx(4 / 6)
    assert head["balanced_accuracy"] == pytest.approx(2 / 3)
    assert head["macro_f1"] == pytest.approx(32 / 45)
    assert (head["kind_sensitivity"], head["kind_specificity"]) == (pytest.approx(1.0), pytest.approx(0.5))
    assert head["kind_balanced_accuracy"] == pytest.approx(0.75)
    assert head["classes_present"] == 3 and not head["single_class"]
    assert head["present_recall"] == "a 0.500 (1/2); b 1.000 (2/2); c 0.500 (1/2)"
    assert trunk["accuracy"] == pytest.approx(1 / 4)
    assert trunk["balanced_accuracy"] == pytest.approx(1 / 6)  # b and c only: not (1/3 + 0 + 0) / 3
    assert trunk["macro_f1"] == pytest.approx(1 / 6)  # a is predicted, never true: F1 0 counts
    assert trunk["kind_sensitivity"] == pytest.approx(2 / 3) and trunk["kind_specificity"] == 0.0
    assert trunk["present_recall"] == "b 0.333 (1/3); c 0.000 (0/1)" and trunk["classes_present"] == 2
    assert arm["single_class"] and arm["classes_present"] == 1
    assert arm["accuracy"] == pytest.approx(1 / 3) and arm["balanced_accuracy"] == pytest.approx(1 / 3)
    assert np.isnan(arm["macro_f1"]) and np.isnan(arm["kind_specificity"])  # no negatives there
    assert arm["kind_sensitivity"] == 1.0 and arm["kind_balanced_accuracy"] == 1.0  # the one defined half
    assert arm["present_recall"] == "a 0.333 (1/3)"
    assert t.loc[("site", "leg")]["present_recall"] == "a 0.000 (0/1); b 0.000 (0/1)"
    missing = t.loc[("site", "missing")]
    assert missing["accuracy"] == 0.5 and missing["images"] == 2
    assert missing["present_recall"] == "a 0.000 (0/1); c 1.000 (1/1)"
    assert t.loc[("sex", "f")]["accuracy"] == pytest.approx(7 / 15)  # head 4 + trunk 1 + arm 1 + missing 1
    # no resamples: no intervals
    assert table[[c for c in table.columns if c.endswith(("_ci_low", "_ci_high"))]].isna().all().all()
    assert subgroups.table_metric_names(table) == ["accuracy", "balanced_accuracy", "macro_f1", "kind_sensitivity",
                                                   "kind_specificity", "kind_balanced_accuracy"]


def test_present_recall_without_codes_uses_class_indices():
    y, pred, lesions, frame = hand_case()
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, {"site": frame["site"].to_numpy()}, K, n_resamples=0)
    assert table.set_index("group").at["head", "present_recall"] == "0 0.500 (1/2); 1 1.000 (2/2); 2 0.500 (1/2)"
    # codes that do not reach a class: its index
    table, _ = subgroups.subgroup_analysis(y, pred, lesions, {"site": frame["site"].to_numpy()}, K, n_resamples=0,
                                           codes=("a",))
    assert table.set_index("group").at["head", "present_recall"] == "a 0.500 (1/2); 1 1.000 (2/2); 2 0.500 (1/2)"
    # a plain array: "" is a group of its own (only group_labels knows about missing values), sorted first
    assert table["group"].tolist() == ["", "arm", "head", "leg", "trunk"]


def test_small_flag_at_the_threshold():
    table, gaps = analysis(min_count=3)
    small = table.set_index(["column", "group"])["small"]
    assert not small[("site", "arm")] and small[("site", "leg")]  # 3 images: not below 3; 2 images: below
    assert (table["min_count"] == 3).all()
    assert gaps.set_index(["column", "metric"]).at[("site", "accuracy"), "groups_compared"] == 3
    table, gaps = analysis(min_count=4)
    small = table.set_index(["column", "group"])["small"]
    assert small[("site", "arm")] and not small[("site", "trunk")]  # 3 < 4; 4 is not below 4
    assert gaps.set_index(["column", "metric"]).at[("site", "accuracy"), "groups_compared"] == 2


def test_default_min_count_is_30():
    y = np.array([0, 1] * 30)[:59]
    group = np.array(["a"] * 29 + ["b"] * 30)
    table, _ = subgroups.subgroup_analysis(y, y, np.arange(59), {"g": group}, 2, n_resamples=0)
    assert table.set_index("group")["small"].to_dict() == {"a": True, "b": False}
    assert (table["min_count"] == 30).all() and subgroups.DEFAULT_MIN_COUNT == 30


# -- worst group and gap ------------------------------------------------------------------------------
def test_worst_group_and_gap_by_hand():
    _, gaps = analysis(min_count=3)
    # per column: the gap metrics, then each grouping's sensitivity
    assert gaps[["column", "metric"]].values.tolist() == [
        [c, m] for c in ("site", "sex") for m in ("macro_f1", "balanced_accuracy", "accuracy", "kind_sensitivity")]
    g = gaps.set_index(["column", "metric"])
    # compared: arm (1/3), head (2/3), trunk (1/4); not leg (small: accuracy 0) nor missing
    acc = g.loc[("site", "accuracy")]
    assert (acc["worst_group"], acc["best_group"], acc["groups_compared"]) == ("trunk", "head", 3)
    assert acc["worst"] == pytest.approx(1 / 4) and acc["best"] == pytest.approx(2 / 3)
    assert acc["gap"] == pytest.approx(2 / 3 - 1 / 4)
    bal = g.loc[("site", "balanced_accuracy")]
    assert (bal["worst_group"], bal["best_group"], bal["groups_compared"]) == ("trunk", "head", 3)
    assert bal["gap"] == pytest.approx(2 / 3 - 1 / 6)
    # macro-F1: the single-class arm is left out (not its NaN, not a value)
    f1 = g.loc[("site", "macro_f1")]
    assert (f1["worst_group"], f1["best_group"], f1["groups_compared"]) == ("trunk", "head", 2)
    assert f1["gap"] == pytest.approx(32 / 45 - 1 / 6)
    sens = g.loc[("site", "kind_sensitivity")]
    assert sens["worst_group"] == "trunk" and sens["best_group"] in ("arm", "head")
    assert sens["gap"] == pytest.approx(1 / 3) and sens["groups_compared"] == 3
    # sex: m is small, the missing site rows are "f" here: one group compared, no gap
    one = g.loc[("sex", "accuracy")]
    assert one["groups_compared"] == 1 and one["worst_group"] == "f" and one["worst"] == pytest.approx(7 / 15)
    assert pd.isna(one["best_group"]) and np.isnan(one["best"]) and np.isnan(one["gap"])
    assert np.isnan(one["gap_ci_low"]) and np.isnan(one["gap_ci_high"])
    # no resamples: a gap but no interval
    assert np.isnan(acc["gap_ci_low"]) and np.isnan(acc["gap_ci_high"])


def test_gap_columns_exist_when_nothing_is_compared():
    _, gaps = analysis(min_count=100)  # every group small
    assert (gaps["groups_compared"] == 0).all()
    for col in ("worst_group", "worst", "best_group", "best", "gap", "gap_ci_low", "gap_ci_high"):
        assert gaps[col].isna().all(), col
    assert subgroups.subgroup_metrics(*analysis(min_count=100)).get("subgroup_site_gap_accuracy") is None


def test_missing_is_never_the_worst_group():
    y = np.array([0, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 0, 0, 1, 0])  # a: 2/2, b: 1/2, missing: 0/2
    labels = subgroups.group_labels(pd.DataFrame({"g": ["a", "a", "b", "b", None, " "]}), "g")
    assert labels.tolist() == ["a", "a", "b", "b", "missing", "missing"]
    _, gaps = subgroups.subgroup_analysis(y, pred, np.arange(6), {"g": labels}, 2, n_resamples=0, min_count=1)
    acc = gaps.set_index("metric").loc["accuracy"]
    assert (acc["worst_group"], acc["best_group"], acc["groups_compared"]) == ("b", "a", 2)


def test_errors_and_empty_input():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^3 group ids for 4 images$"):
        subgroups.subgroup_analysis(y, y, ["a", "b", "c"], {"g": np.array(["x"] * 4)}, 2)
    with pytest.raises(ValueError, match=r"^subgroup column 'g' has 3 values for 4 images$"):
        subgroups.subgroup_analysis(y, y, np.arange(4), {"g": np.array(["x"] * 3)}, 2)
    table, gaps = subgroups.subgroup_analysis(y, y, np.arange(4), {}, 2)
    assert table.empty and gaps.empty
    assert subgroups.subgroup_metrics(table, gaps) == {}


# -- intervals against the slow reference ----------------------------------------------------------------
@pytest.mark.parametrize("seed,confidence,n_resamples", [(7, 0.9, 300), (3, 0.8, 40), (11, 0.95, 1)])
def test_group_and_gap_intervals_equal_the_reference_resampler(seed, confidence, n_resamples):
    y, pred, lesions, frame = hand_case()
    groups = hand_groups(frame)
    table, gaps = subgroups.subgroup_analysis(y, pred, lesions, groups, K, n_resamples=n_resamples,
                                              confidence=confidence, seed=seed, min_count=3, targets=TARGETS)
    site = groups["site"]
    ref = reference_samples(y, pred, lesions, site.labels, site.order, n_resamples, seed)
    t = table.set_index(["column", "group"])
    for g in site.order:
        for m in ("accuracy", "balanced_accuracy", "kind_sensitivity") + (("macro_f1",) if g != "arm" else ()):
            low, high = reference_interval(ref[g][m], confidence)
            assert t.at[("site", g), f"{m}_ci_low"] == pytest.approx(low, abs=1e-12, nan_ok=True), (g, m)
            assert t.at[("site", g), f"{m}_ci_high"] == pytest.approx(high, abs=1e-12, nan_ok=True), (g, m)
    assert np.isnan(t.at[("site", "arm"), "macro_f1_ci_low"]) and np.isnan(t.at[("site", "arm"), "macro_f1_ci_high"])
    # the gap: best minus worst on the same resample (head - trunk)
    g = gaps.set_index(["column", "metric"])
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        diff = [a - b for a, b in zip(ref["head"][m], ref["trunk"][m])]
        low, high = reference_interval(diff, confidence)
        assert g.at[("site", m), "gap_ci_low"] == pytest.approx(low, abs=1e-12, nan_ok=True), m
        assert g.at[("site", m), "gap_ci_high"] == pytest.approx(high, abs=1e-12, nan_ok=True), m


def test_defaults_are_1000_resamples_95_percent_seed_42():
    y, pred, lesions, frame = hand_case()
    labels = subgroups.group_labels(frame, "site")
    table, gaps = subgroups.subgroup_analysis(y, pred, lesions, {"site": labels}, K, min_count=3)
    ref = reference_samples(y, pred, lesions, labels, ["head", "trunk"], 1000, 42)
    t = table.set_index("group")
    for g in ("head", "trunk"):
        low, high = reference_interval(ref[g]["accuracy"], 0.95)
        assert (t.at[g, "accuracy_ci_low"], t.at[g, "accuracy_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    low, high = reference_interval([a - b for a, b in zip(ref["head"]["accuracy"], ref["trunk"]["accuracy"])], 0.95)
    acc = gaps.set_index("metric").loc["accuracy"]
    assert (acc["gap_ci_low"], acc["gap_ci_high"]) == (pytest.approx(low), pytest.approx(high))


# -- MLflow names ---------------------------------------------------------------------------------------
def test_subgroup_metric_names_and_values():
    table, gaps = analysis(n_resamples=30, seed=1)
    names = subgroups.subgroup_metrics(table, gaps)
    t = table.set_index(["column", "group"])
    g = gaps.set_index(["column", "metric"])
    assert names["subgroup_site_head_n"] == 6.0 and names["subgroup_site_missing_n"] == 2.0
    for suffix in ("", "_ci_low", "_ci_high"):
        assert names[f"subgroup_site_trunk_accuracy{suffix}"] == t.at[("site", "trunk"), f"accuracy{suffix}"]
        head = t.at[("site", "head"), f"kind_specificity{suffix}"]
        assert names[f"subgroup_site_head_kind_specificity{suffix}"] == head
    assert names["subgroup_site_worst_accuracy"] == pytest.approx(1 / 4)
    assert names["subgroup_site_gap_macro_f1"] == pytest.approx(32 / 45 - 1 / 6)
    assert names["subgroup_site_gap_accuracy_ci_low"] == g.at[("site", "accuracy"), "gap_ci_low"]
    assert names["subgroup_site_gap_accuracy_ci_high"] == g.at[("site", "accuracy"), "gap_ci_high"]
    assert names["subgroup_sex_worst_kind_sensitivity"] == g.at[("sex", "kind_sensitivity"), "worst"]
    # NaN is not logged: the single-class arm's macro-F1, the one-group column's gap
    assert not any(k.startswith("subgroup_site_arm_macro_f1") for k in names)
    assert "subgroup_sex_gap_accuracy" not in names and "subgroup_site_arm_kind_specificity" not in names
    assert all(np.isfinite(v) for v in names.values())


def test_subgroup_metric_names_complete_for_a_small_case():
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0, 1, 0])
    group = np.array(["x y"] * 4 + ["<30"] * 4)
    table, gaps = subgroups.subgroup_analysis(y, pred, np.arange(8), {"Age Band": group}, 2, n_resamples=20,
                                              min_count=1)
    names = subgroups.subgroup_metrics(table, gaps)
    expected = set()
    for grp in ("lt30", "x_y"):
        expected.add(f"subgroup_age_band_{grp}_n")
        expected |= {f"subgroup_age_band_{grp}_{m}{s}" for m in ("accuracy", "balanced_accuracy", "macro_f1")
                     for s in ("", "_ci_low", "_ci_high")}
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        expected |= {f"subgroup_age_band_worst_{m}", f"subgroup_age_band_gap_{m}",
                     f"subgroup_age_band_gap_{m}_ci_low", f"subgroup_age_band_gap_{m}_ci_high"}
    assert set(names) == expected
    assert names["subgroup_age_band_x_y_accuracy"] == 0.75 and names["subgroup_age_band_lt30_accuracy"] == 0.75


def test_slug():
    assert subgroups.slug(" Lower  Extremity ") == "lower_extremity"
    assert subgroups.slug("<30") == "lt30" and subgroups.slug("75+") == "75plus" and subgroups.slug("30-44") == "30_44"
    assert subgroups.slug("--a/b--") == "a_b"
    assert subgroups.slug("") == "missing" and subgroups.slug("__") == "missing" and subgroups.slug(" ") == "missing"
    assert subgroups.slug(3) == "3"


# -- how values form groups -------------------------------------------------------------------------------
def test_band_labels():
    assert subgroups.band_labels([]) == ["all"]
    assert subgroups.band_labels([40]) == ["<40", "40+"]
    assert subgroups.band_labels((30.0, 45.0, 60.0, 75.0)) == ["<30", "30-44", "45-59", "60-74", "75+"]
    assert subgroups.band_labels([2.5, 5, 7.5]) == ["<2.5", "2.5-4", "5-7.5", "7.5+"]  # whole upper edges minus 1


def test_banded_edges_go_to_the_upper_band():
    values = pd.Series([29.999, 30, 59.5, 60, -4, 1000, np.nan, "60", " 7 ", "x", ""])
    assert subgroups.banded(values, [30, 60]).tolist() == [
        "<30", "30-59", "30-59", "60+", "<30", "60+", "missing", "60+", "<30", "missing", "missing"]
    assert subgroups.banded(pd.Series([1.0, np.nan]), []).tolist() == ["all", "missing"]
    assert subgroups.banded([5, 50], [10, 20]).tolist() == ["<10", "20+"]  # a plain list too
    assert subgroups.banded(pd.Series([5]), [10]).dtype.kind == "U"


def test_level():
    assert subgroups._level(" 3.0 ") == "3" and subgroups._level(3) == "3" and subgroups._level(-1.0) == "-1"
    assert subgroups._level("3.5") == "3.5" and subgroups._level("III") == "III" and subgroups._level(" x ") == "x"
    assert subgroups._level("inf") == "inf" and subgroups._level(float("nan")) == "nan"


def test_categorical_group_labels_and_missing_values():
    frame = pd.DataFrame({"c": [" male ", "3.0", "nan", None, "", "  ", "unknown", "1.0", "female"]})
    plain = subgroups.group_labels(frame, "c")
    assert plain.tolist() == ["male", "3.0", "missing", "missing", "missing", "missing", "unknown", "1.0", "female"]
    assert plain.dtype.kind == "U"
    # unknown values of a categorical column are matched as written ("1.0" is not "1")
    spec = SubgroupColumn("c", unknown=("unknown", "1"))
    assert subgroups.group_labels(frame, spec).tolist()[6:] == ["missing", "1.0", "female"]
    spec = SubgroupColumn("c", unknown=("1.0",))
    assert subgroups.group_labels(frame, spec).tolist()[6:] == ["unknown", "missing", "female"]
    assert subgroups.group_order(plain, SubgroupColumn("c")) == ["1.0", "3.0", "female", "male", "unknown", "missing"]
    # a column with nothing in it is no column
    assert subgroups.group_labels(pd.DataFrame({"c": ["", None, "nan"]}), "c") is None
    assert subgroups.group_labels(pd.DataFrame({"c": ["", "x"]}), "c").tolist() == ["missing", "x"]


def test_ordinal_group_labels_and_order():
    spec = SubgroupColumn("fitz", "ordinal", order=("3.0", "1", "2"), unknown=("-1.0",))
    frame = pd.DataFrame({"fitz": [1.0, "2", -1, 3, "7", None, "III", 2.0]})
    labels = subgroups.group_labels(frame, spec)
    assert labels.tolist() == ["1", "2", "missing", "3", "7", "missing", "III", "2"]
    assert labels.dtype.kind == "U"
    # declared levels in their order (3 first), then undeclared ones sorted, missing last
    assert subgroups.group_order(labels, spec) == ["3", "1", "2", "7", "III", "missing"]
    assert subgroups.group_order(np.array(["2", "1"]), spec) == ["1", "2"]  # only levels present
    banded = SubgroupColumn("age", "banded", (30, 60))
    assert subgroups.group_order(np.array(["60+", "missing", "<30"]), banded) == ["<30", "60+", "missing"]
    assert subgroups.group_labels(pd.DataFrame({"fitz": [-1, "-1"]}), spec) is None


def test_ordinal_groups_keep_their_order_in_the_tables():
    spec = SubgroupColumn("fitz", "ordinal", order=("10", "9"))
    labels = np.array(["9", "10", "9", "10"])
    values = subgroups.SubgroupValues(spec, labels, subgroups.group_order(labels, spec))
    assert values.order == ["10", "9"] and values.title == "fitz"
    assert subgroups.SubgroupValues(SubgroupColumn("fitz", title="Skin type"), labels, []).title == "Skin type"
    y = np.array([0, 1, 1, 0])
    table, _ = subgroups.subgroup_analysis(y, y, np.arange(4), {"fitz": values}, 2, n_resamples=0, min_count=1)
    assert table["group"].tolist() == ["10", "9"]
    cov = subgroups.coverage_by_group(np.ones(4), np.ones(4), {"fitz": values}, 1)
    assert cov["group"].tolist() == ["10", "9"]


def test_coverage_by_group_by_hand():
    covered = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    size = np.array([1, 2, 3, 4, 6])
    cov = subgroups.coverage_by_group(covered, size, {"g": np.array(["b", "b", "a", "missing", "missing"])}, 2)
    assert cov.to_dict("records") == [
        {"column": "g", "group": "a", "images": 1, "small": True, "coverage": 1.0, "mean_set_size": 3.0},
        {"column": "g", "group": "b", "images": 2, "small": False, "coverage": 0.5, "mean_set_size": 1.5},
        {"column": "g", "group": "missing", "images": 2, "small": False, "coverage": 0.5, "mean_set_size": 5.0}]


# -- settings ---------------------------------------------------------------------------------------------
def _descriptor(*columns):
    return DatasetDescriptor(name="d", title="d", labels=THREE, subgroups=columns)


def test_subgroup_settings():
    age = SubgroupColumn("age", "banded", (30, 60), title="Age")
    fitz = SubgroupColumn("fitz", "ordinal", order=("1", "2"), unknown=("-1",))
    desc = _descriptor(age, fitz)
    assert subgroups.subgroup_settings({}, desc) == ([age, fitz], 30)
    assert subgroups.subgroup_settings({}, None) == ([], 30)
    config = {"evaluation": {"subgroups": {"columns": ["fitz", "site", 5], "min_count": "7"}}}
    assert subgroups.subgroup_settings(config, desc) == ([fitz, SubgroupColumn("site"), SubgroupColumn("5")], 7)
    assert subgroups.subgroup_settings({"evaluation": {"subgroups": {"columns": []}}}, desc) == ([], 30)
    # age_bands replaces only the edges of the banded age column, keeping the rest of its declaration
    specs, _ = subgroups.subgroup_settings({"evaluation": {"subgroups": {"age_bands": [20, "50"]}}}, desc)
    assert specs == [SubgroupColumn("age", "banded", (20.0, 50.0), title="Age"), fitz]
    other = SubgroupColumn("bmi", "banded", (18.5, 25))
    specs, _ = subgroups.subgroup_settings({"evaluation": {"subgroups": {"age_bands": [20]}}}, _descriptor(age, other))
    assert specs[1] is other and specs[0].bands == (20.0,)


@pytest.mark.parametrize("columns", ["sex", {"sex": 1}, 5])
def test_subgroup_settings_refuse_columns_that_are_not_a_list(columns):
    with pytest.raises(ValueError, match=r"^evaluation.subgroups.columns must be a list of metadata columns or null, "
                                         r"got " + repr(columns).replace("{", r"\{").replace("}", r"\}") + "$"):
        subgroups.subgroup_settings({"evaluation": {"subgroups": {"columns": columns}}}, None)


def test_subgroup_settings_refuse_age_bands_without_a_banded_age_column():
    config = {"evaluation": {"subgroups": {"age_bands": [40]}}}
    with pytest.raises(ValueError, match=r"^evaluation.subgroups.age_bands is set but this dataset has no banded age "
                                         r"subgroup column; set it to null$"):
        subgroups.subgroup_settings(config, None)
    with pytest.raises(ValueError, match="but d has no banded age"):
        subgroups.subgroup_settings(config, _descriptor(SubgroupColumn("age")))  # categorical age
    with pytest.raises(ValueError, match="but d has no banded age"):
        subgroups.subgroup_settings(config, _descriptor(SubgroupColumn("years", "banded", (40,))))


@pytest.mark.parametrize("edges", [[40, 40], [50, 40], [10, 40, 30]])
def test_band_edges_must_strictly_increase(edges):
    desc = _descriptor(SubgroupColumn("age", "banded", (30, 60)))
    with pytest.raises(ValueError, match=r"^subgroup column 'age': band edges must increase, got \["
                       + ", ".join(f"{float(e)}" for e in edges) + r"\]$"):
        subgroups.subgroup_settings({"evaluation": {"subgroups": {"age_bands": edges}}}, desc)
    assert subgroups.subgroup_settings({"evaluation": {"subgroups": {"age_bands": [39, 40]}}}, desc)[0][0].bands == (
        39.0, 40.0)


def test_split_groups_skips_columns_without_values():
    frame = pd.DataFrame({"site": ["a", "b", "a"], "sex": ["", None, ""]})
    config = {"evaluation": {"subgroups": {"columns": ["sex", "site", "absent"]}}}
    groups = subgroups.split_groups(frame, config, None)
    assert list(groups) == ["site"]
    assert groups["site"].labels.tolist() == ["a", "b", "a"] and groups["site"].order == ["a", "b"]
    assert groups["site"].spec == SubgroupColumn("site")
