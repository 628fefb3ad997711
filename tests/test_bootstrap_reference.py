"""The group-level bootstrap against a slow reference resampler, on fixed seeds.

The reference is written from the definition in plain Python: draw G groups with replacement
(the seeded stream bootstrap.py documents: per block of at most BLOCK resamples, one
``rng.integers(0, G, size=(block, G))`` call; groups in sorted order), put every image of every
drawn group into the resample as often as its group was drawn, and score the resample with
the metrics' definitions (checked against scikit-learn once below, and in
test_evaluation_bootstrap.py); the interval is numpy's percentile of the per-resample values. Plus values worked
out by hand: a split of one class (balanced accuracy is that class's recall, not half of it), a
split of one grouping side, the paired bootstrap's tail share counting ties as "not better".

Equivalent mutants (no observable change):
- image_stats: ``np.asarray(slot, dtype=np.int64)`` -> ``dtype=None``: the one caller
  (paired_bootstrap) passes an integer array already.
- resample_counts: ``.astype(np.float64)`` -> ``.astype(None)``: numpy's default type is float64;
  ``rng.integers(0, n_groups, ...)`` -> ``rng.integers(n_groups, ...)``: numpy reads a single
  bound as the high end from 0, and draws the same stream.
- image_stats and metrics_from_stats: ``np.asarray(..., dtype=np.int64 / np.float64)`` -> no
  dtype, and ``np.zeros(n, dtype=np.int64)`` -> float offsets: the inputs come from _check as
  int64 (and float stats), and scipy takes whole-number float indices as they are.
- paired_bootstrap: ``percentile_interval(...) if len(values) else (nan, nan)`` -> ``if ... or
  True``: percentile_interval of no values is (nan, nan) as well.
- percentile_interval: ``float("nan")`` -> ``float("NAN")``: Python reads both as NaN.
- point_metrics: ``.reshape(-1, width)`` -> ``.reshape(-2, width)``: numpy reads any negative
  size as "the rest".
- metrics_from_stats: ``np.errstate(invalid="ignore", divide="ignore")`` with a key dropped or None:
  it only silences warnings for the NaN rows that np.where discards.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from derma_core.evaluation import bootstrap
from derma_core.evaluation.metrics import GroupTarget
from derma_core.labels import INVALID

K = 4
#: classes 0 and 1 are the positive group
TARGET = GroupTarget("malignancy", "malignant", np.array([True, True, False, False]))


def case(n_groups=40, seed=0, k=K, invalid=0.1):
    """Groups of 1-4 images sharing a label; predictions right 60% of the time, some invalid."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    labels = rng.integers(0, k, n_groups)
    y_true = np.repeat(labels, sizes)
    n = len(y_true)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    y_pred[rng.random(n) < invalid] = INVALID
    # group ids whose sorted order is not their order of appearance
    names = [f"g{(i * 17) % n_groups:03d}" for i in range(n_groups)]
    return y_true, y_pred, np.repeat(names, sizes)


def reference_draws(n_groups: int, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Per resample, the indices (into the sorted groups) of the groups drawn."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n_resamples:
        b = min(bootstrap.BLOCK, n_resamples - len(out))
        out.extend(rng.integers(0, n_groups, size=(b, n_groups)))
    return out


def balanced_accuracy(yt: np.ndarray, yp: np.ndarray) -> float:
    """The mean recall over the classes present."""
    return float(np.mean([np.mean(yp[yt == c] == c) for c in sorted(set(yt.tolist()))]))


def macro_f1(yt: np.ndarray, yp: np.ndarray, k: int) -> float:
    """The mean of 2TP / (2TP + FP + FN) over the classes with a true or predicted image."""
    f1 = []
    for c in range(k):
        tp = np.sum((yt == c) & (yp == c))
        fp = np.sum((yt != c) & (yp == c))
        fn = np.sum((yt == c) & (yp != c))
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def reference_scores(y_true, y_pred, groups, n_resamples, seed, k=K, target=None) -> dict[str, list[float]]:
    sorted_groups = sorted(set(groups.tolist()))
    members = {g: np.flatnonzero(groups == g) for g in sorted_groups}
    scores: dict[str, list[float]] = {}
    for drawn in reference_draws(len(sorted_groups), n_resamples, seed):
        rows = np.concatenate([members[sorted_groups[i]] for i in drawn])
        yt, yp = y_true[rows], y_pred[rows]
        values = {"accuracy": np.mean(yt == yp), "balanced_accuracy": balanced_accuracy(yt, yp),
                  "macro_f1": macro_f1(yt, yp, k)}
        if target is not None:
            truth = target.mask[yt]
            said = np.where(yp == INVALID, -1, target.mask[np.maximum(yp, 0)].astype(int))
            sens = np.mean(said[truth] == 1) if truth.any() else math.nan
            spec = np.mean(said[~truth] == 0) if (~truth).any() else math.nan
            present_rates = [v for v in (sens, spec) if not math.isnan(v)]
            values[target.name("sensitivity")] = sens
            values[target.name("specificity")] = spec
            values[target.name("balanced_accuracy")] = np.mean(present_rates) if present_rates else math.nan
        for name, value in values.items():
            scores.setdefault(name, []).append(float(value))
    return scores


def reference_interval(values, confidence):
    v = np.array([x for x in values if not math.isnan(x)])
    alpha = (1 - confidence) / 2
    return tuple(np.percentile(v, [100 * alpha, 100 * (1 - alpha)]))


@pytest.mark.parametrize("seed, confidence, n_resamples", [(42, 0.95, 300), (3, 0.8, 260)])
def test_intervals_equal_the_slow_reference_resampler(seed, confidence, n_resamples):
    y_true, y_pred, groups = case(seed=seed)
    ref = reference_scores(y_true, y_pred, groups, n_resamples, seed, target=TARGET)
    got = bootstrap.bootstrap_distribution(y_true, y_pred, groups, K, n_resamples, seed, [TARGET])
    assert list(got) == list(ref)
    for name, values in ref.items():
        np.testing.assert_allclose(got[name], values, atol=1e-12, err_msg=name)
    cis = bootstrap.bootstrap_ci(y_true, y_pred, groups, K, n_resamples, confidence, seed, [TARGET])
    for name, values in ref.items():
        assert cis[name] == pytest.approx(reference_interval(values, confidence)), name


def test_default_settings_are_1000_resamples_95_percent_seed_42():
    y_true, y_pred, groups = case(n_groups=25, seed=1)
    ref = reference_scores(y_true, y_pred, groups, 1000, 42)
    cis = bootstrap.bootstrap_ci(y_true, y_pred, groups, K)
    for name in bootstrap.BOOTSTRAP_METRICS:
        assert cis[name] == pytest.approx(reference_interval(ref[name], 0.95)), name


def test_a_one_class_split_has_that_class_recall_as_balanced_accuracy():
    # every image is class 2 (not malignant): 10 groups of 2 images, 15 of 20 predicted right
    y_true = np.full(20, 2)
    y_pred = np.array([2, 2, 2, 0, 2, 2, 2, INVALID, 2, 2, 2, 2, 3, 2, 2, 2, 1, 2, 2, 3])
    groups = np.repeat([f"L{i}" for i in range(10)], 2)
    point = bootstrap.point_metrics(bootstrap.image_stats(y_true, y_pred, *bootstrap.group_index(groups), K,
                                                          [TARGET]), K, [TARGET])
    assert point["accuracy"][0] == pytest.approx(15 / 20)
    assert point["balanced_accuracy"][0] == pytest.approx(15 / 20)  # one class present: not halved
    # specificity: images predicted (validly) outside the positive group: all but 0, INVALID, 1 -> 17/20
    assert point["malignancy_specificity"][0] == pytest.approx(17 / 20)
    assert math.isnan(point["malignancy_sensitivity"][0])
    assert point["malignancy_balanced_accuracy"][0] == pytest.approx(17 / 20)
    # macro-F1: class 2 has F1 2*15/(2*15+0+5) = 6/7; classes 0, 1, 3 only false positives: F1 0
    assert point["macro_f1"][0] == pytest.approx((6 / 7 + 0 + 0 + 0) / 4)
    dist = bootstrap.bootstrap_distribution(y_true, y_pred, groups, K, 200, seed=0, targets=[TARGET])
    np.testing.assert_allclose(dist["balanced_accuracy"], dist["accuracy"])
    np.testing.assert_allclose(dist["malignancy_balanced_accuracy"], dist["malignancy_specificity"])
    assert np.isnan(dist["malignancy_sensitivity"]).all()


def test_point_metrics_by_hand():
    # classes 0 1 2 3; 0 and 1 are malignant
    y_true = np.array([0, 0, 1, 2, 3, 3])
    y_pred = np.array([0, 1, INVALID, 2, 0, 3])
    stats = bootstrap.image_stats(y_true, y_pred, np.arange(6), 6, K, [TARGET])
    sums = np.asarray(stats.sum(axis=0)).ravel()
    # tp per class, support, predicted, total, then positives, negatives, hits, rejections
    assert sums.tolist() == [1, 0, 1, 1, 2, 1, 1, 2, 2, 1, 1, 1, 6, 3, 3, 2, 2]
    m = bootstrap.metrics_from_stats(sums, K, [TARGET])
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 0 + 1 + 1 / 2) / 4)
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/(2+1+1); 1: 0; 2: 1; 3: 2/(2+0+1)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 0 + 1 + 2 / 3) / 4)
    assert m["malignancy_sensitivity"] == pytest.approx(2 / 3)  # 0->0, 0->1 in; 1->invalid out
    assert m["malignancy_specificity"] == pytest.approx(2 / 3)  # 2->2, 3->3 out; 3->0 in
    assert m["malignancy_balanced_accuracy"] == pytest.approx(2 / 3)


def test_a_class_nobody_has_or_predicts_is_left_out_of_macro_f1_and_balanced_accuracy():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    m = bootstrap.point_metrics(bootstrap.image_stats(y_true, y_pred, np.arange(4), 4, K), K)
    assert m["balanced_accuracy"][0] == pytest.approx((1 / 2 + 1) / 2)
    assert m["macro_f1"][0] == pytest.approx((2 / 3 + 4 / 5) / 2)
    empty = bootstrap.metrics_from_stats(np.zeros(bootstrap.stats_width(K)), K)
    assert all(math.isnan(float(v)) for v in empty.values())


def test_paired_bootstrap_against_the_reference():
    y_true, pred_a, groups = case(n_groups=30, seed=5)
    pred_b = pred_a.copy()
    pred_b[::3] = y_true[::3]  # B better on some images, equal elsewhere
    pred_b[1::7] = INVALID
    n_resamples, seed = 250, 9
    ra = reference_scores(y_true, pred_a, groups, n_resamples, seed, target=TARGET)
    rb = reference_scores(y_true, pred_b, groups, n_resamples, seed, target=TARGET)
    out = bootstrap.paired_bootstrap(y_true, pred_a, pred_b, groups, K, n_resamples, 0.9, seed, [TARGET])
    assert list(out) == list(bootstrap.metric_names([TARGET]))
    for name, d in out.items():
        diff = np.array(ra[name]) - np.array(rb[name])
        kept = diff[~np.isnan(diff)]
        assert d.metric == name
        assert d.ci_low == pytest.approx(np.percentile(kept, 5)), name
        assert d.ci_high == pytest.approx(np.percentile(kept, 95)), name
        assert d.frac_not_better == pytest.approx(np.mean(kept <= 0)), name
        assert d.diff == pytest.approx(d.a - d.b)
    assert out["accuracy"].a == pytest.approx(accuracy_score(y_true, pred_a))
    assert out["macro_f1"].a == pytest.approx(f1_score(y_true, pred_a, labels=list(range(K)), average="macro",
                                                       zero_division=np.nan))
    present = sorted(set(y_true.tolist()))
    assert out["balanced_accuracy"].b == pytest.approx(recall_score(y_true, pred_b, labels=present, average="macro"))
    assert out["accuracy"].b == pytest.approx(accuracy_score(y_true, pred_b))


def test_paired_ties_count_as_not_better_and_the_interval_can_touch_zero():
    # A and B differ on one group only, where A is right and B wrong: A - B >= 0 in every resample,
    # exactly 0 in those that miss that group (about (1 - 1/G)^G of them)
    y_true = np.zeros(20, dtype=int)
    pred_a = np.zeros(20, dtype=int)
    pred_b = pred_a.copy()
    pred_b[:2] = 1
    groups = np.repeat([f"L{i:02d}" for i in range(10)], 2)
    out = bootstrap.paired_bootstrap(y_true, pred_a, pred_b, groups, 2, 400, 0.95, seed=1)
    d = out["accuracy"]
    assert (d.a, d.b, d.diff) == (1.0, 0.9, pytest.approx(0.1))
    drawn = np.array([(draw == 0).sum() for draw in reference_draws(10, 400, 1)])  # group L00 is index 0
    assert d.frac_not_better == pytest.approx(np.mean(drawn == 0))
    assert 0.25 < d.frac_not_better < 0.45  # (9/10)^10 = 0.35
    assert d.ci_low == 0.0 and not d.excludes_zero
    assert bootstrap.PairedDifference("m", 1, 0, 1, 0.1, 0.2, 0).excludes_zero
    assert bootstrap.PairedDifference("m", 0, 1, -1, -0.2, -0.1, 1).excludes_zero
    assert not bootstrap.PairedDifference("m", 0, 0, 0, -0.1, 0.0, 1).excludes_zero
    none = bootstrap.paired_bootstrap(y_true, pred_a, pred_b, groups, 2, 0)
    assert none["accuracy"].diff == pytest.approx(0.1) and math.isnan(none["accuracy"].ci_low)
    assert math.isnan(none["accuracy"].frac_not_better)


def test_group_index_is_sorted_ids():
    index, n = bootstrap.group_index(np.array(["b", "a", "c", "a", 7]))
    assert n == 4 and index.tolist() == [2, 1, 3, 1, 0]  # "7" < "a" < "b" < "c"
    assert index.dtype == np.int64


def test_wrong_group_count_and_bad_input_are_refused():
    y = np.array([0, 1, 0])
    with pytest.raises(ValueError, match="^2 group ids for 3 images$"):
        bootstrap.bootstrap_distribution(y, y, np.array(["a", "b"]), 2, 10, 0)
    with pytest.raises(ValueError, match="^2 group ids for 3 images$"):
        bootstrap.paired_bootstrap(y, y, y, np.array(["a", "b"]), 2, 10)
    with pytest.raises(ValueError, match="y_pred"):
        bootstrap.paired_bootstrap(y, y, np.array([0, 5, 0]), np.array(["a", "b", "c"]), 2, 10)
    for confidence in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"^evaluation.confidence must be between 0 and 1, got {confidence}$"):
            bootstrap.bootstrap_ci(y, y, np.array(["a", "b", "c"]), 2, 10, confidence)
    assert bootstrap.bootstrap_ci(y, y, np.array(["a", "b", "c"]), 2, -1) == {}


def test_percentile_interval_edges():
    assert all(math.isnan(v) for v in bootstrap.percentile_interval(np.array([np.nan, np.nan]), 0.9))
    low, high = bootstrap.percentile_interval(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 0.5)
    assert (low, high) == (1.0, 3.0)


def test_resample_blocks_and_chunks():
    blocks = list(bootstrap.resample_counts(7, bootstrap.BLOCK + 1, seed=0))
    assert [b.shape for b in blocks] == [(bootstrap.BLOCK, 7), (1, 7)]
    ref = reference_draws(7, bootstrap.BLOCK + 1, 0)
    got = np.concatenate(blocks)
    for row, drawn in zip(got, ref):
        assert row.tolist() == np.bincount(drawn, minlength=7).tolist()
    assert bootstrap.stats_width(7) == 22 and bootstrap.stats_width(7, [TARGET, TARGET]) == 30
    assert bootstrap.metric_names([TARGET]) == ("accuracy", "balanced_accuracy", "macro_f1", "malignancy_sensitivity",
                                                "malignancy_specificity", "malignancy_balanced_accuracy")


def test_two_targets_each_against_the_reference():
    # a second grouping (classes 0 and 2 positive) beside the first: each target's four sums sit in
    # their own columns
    other = GroupTarget("odd", "yes", np.array([True, False, True, False]))
    y_true, y_pred, groups = case(n_groups=30, seed=11)
    got = bootstrap.bootstrap_distribution(y_true, y_pred, groups, K, 120, 4, [TARGET, other])
    for target in (TARGET, other):
        ref = reference_scores(y_true, y_pred, groups, 120, 4, target=target)
        for name in ("sensitivity", "specificity", "balanced_accuracy"):
            np.testing.assert_allclose(got[target.name(name)], ref[target.name(name)], atol=1e-12,
                                       err_msg=target.name(name))


def test_no_resamples_give_empty_distributions():
    y_true, y_pred, groups = case(n_groups=5, seed=2)
    dist = bootstrap.bootstrap_distribution(y_true, y_pred, groups, K, 0, 0, [TARGET])
    assert set(dist) == set(bootstrap.metric_names([TARGET])) and all(len(v) == 0 for v in dist.values())


def test_a_single_negative_image_has_a_specificity():
    # one benign image (class 2), predicted benign; three malignant: specificity 1/1, not NaN
    y_true = np.array([0, 1, 1, 2])
    y_pred = np.array([0, 2, 1, 2])
    m = bootstrap.point_metrics(bootstrap.image_stats(y_true, y_pred, np.arange(4), 4, K, [TARGET]), K, [TARGET])
    assert m["malignancy_specificity"][0] == 1.0 and m["malignancy_sensitivity"][0] == pytest.approx(2 / 3)
    # and a single positive image likewise has a sensitivity
    m = bootstrap.point_metrics(bootstrap.image_stats(np.array([0, 2]), np.array([1, 3]), np.arange(2), 2, K,
                                                      [TARGET]), K, [TARGET])
    assert m["malignancy_sensitivity"][0] == 1.0 and m["malignancy_specificity"][0] == 1.0
