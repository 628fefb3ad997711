"""Group-level (lesion) bootstrap: agreement with scikit-learn, determinism, group resampling,
grouped metrics, bounded memory for many classes, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation import bootstrap
from derma_core.evaluation.metrics import classification_metrics, group_targets, grouped_label_metrics
from derma_core.labels import INVALID, LabelSet

K = len(HAM)
TARGETS = group_targets(HAM)


def _case(n_images=400, seed=0, invalid=0.05, k=K):
    rng = np.random.default_rng(seed)
    weights = [0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05] if k == K else np.full(k, 1 / k)
    y_true = rng.choice(k, size=n_images, p=weights)
    y_pred = np.where(rng.random(n_images) < 0.6, y_true, rng.integers(0, k, n_images))
    y_pred[rng.random(n_images) < invalid] = INVALID
    # lesions of 1-4 images, all images of a lesion share its label (as in HAM10000)
    lesion_ids, i, k = np.empty(n_images, dtype=object), 0, 0
    while i < n_images:
        size = int(rng.integers(1, 5))
        lesion_ids[i:i + size] = f"L{k:05d}"
        y_true[i:i + size] = y_true[i]
        i += size
        k += 1
    return y_true, y_pred, lesion_ids.astype(str)


def test_metrics_from_sums_equal_sklearn_with_sample_weights():
    y_true, y_pred, lesions = _case()
    lesion, n_lesions = bootstrap.group_index(lesions)
    stats = bootstrap.image_stats(y_true, y_pred, lesion, n_lesions, K, TARGETS)
    assert stats.shape == (n_lesions, bootstrap.stats_width(K, TARGETS)) == (n_lesions, 3 * K + 1 + 4)
    counts = next(bootstrap.resample_counts(n_lesions, 5, seed=1))
    values = bootstrap.metrics_from_stats(counts @ stats, K, TARGETS)
    malignant = TARGETS[0].mask
    for b in range(5):
        w = counts[b][lesion]  # an image weighs as often as its lesion was drawn
        keep = w > 0
        yt, yp, ww = y_true[keep], y_pred[keep], w[keep]
        present = sorted(set(yt.tolist()))
        assert values["accuracy"][b] == pytest.approx(accuracy_score(yt, yp, sample_weight=ww))
        assert values["balanced_accuracy"][b] == pytest.approx(
            recall_score(yt, yp, labels=present, average="macro", sample_weight=ww))
        assert values["macro_f1"][b] == pytest.approx(
            f1_score(yt, yp, labels=list(range(K)), average="macro", sample_weight=ww, zero_division=np.nan))
        # grouped: the predicted group of an invalid answer is neither group
        gt = malignant[yt].astype(int)
        gp = np.where(yp == INVALID, -1, malignant[np.maximum(yp, 0)].astype(int))
        sens = recall_score(gt, gp, labels=[1], average="macro", sample_weight=ww)
        spec = recall_score(gt, gp, labels=[0], average="macro", sample_weight=ww)
        assert values["malignancy_sensitivity"][b] == pytest.approx(sens)
        assert values["malignancy_specificity"][b] == pytest.approx(spec)
        assert values["malignancy_balanced_accuracy"][b] == pytest.approx((sens + spec) / 2)
    # the un-resampled table gives the point metrics
    full = bootstrap.point_metrics(stats, K, TARGETS)
    point = classification_metrics(y_true, y_pred, K) | grouped_label_metrics(y_true, y_pred, K, TARGETS)
    for name in bootstrap.metric_names(TARGETS):
        assert full[name][0] == pytest.approx(point[name])


def test_bootstrap_is_seeded_and_reproducible():
    y_true, y_pred, lesions = _case()
    a = bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 300, 0.95, seed=7, targets=TARGETS)
    b = bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 300, 0.95, seed=7, targets=TARGETS)
    c = bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 300, 0.95, seed=8, targets=TARGETS)
    assert a == b
    assert a != c
    assert set(a) == {"accuracy", "balanced_accuracy", "macro_f1", "malignancy_sensitivity",
                      "malignancy_specificity", "malignancy_balanced_accuracy"}
    point = classification_metrics(y_true, y_pred, K) | grouped_label_metrics(y_true, y_pred, K, TARGETS)
    for name, (low, high) in a.items():
        assert low < point[name] < high
    # without targets: the same resamples give the same intervals for the three base metrics
    plain = bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 300, 0.95, seed=7)
    assert plain == {m: a[m] for m in bootstrap.BOOTSTRAP_METRICS}
    assert bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 0) == {}


def test_resamples_are_whole_lesions():
    """Duplicating every image leaves a lesion-level bootstrap exactly unchanged (the lesions and
    their draws are the same); an image-level bootstrap would get narrower."""
    y_true, y_pred, lesions = _case(n_images=200)
    once = bootstrap.bootstrap_distribution(y_true, y_pred, lesions, K, 200, seed=3)
    k = 5
    many = bootstrap.bootstrap_distribution(np.repeat(y_true, k), np.repeat(y_pred, k), np.repeat(lesions, k), K,
                                            200, seed=3)
    for name in bootstrap.BOOTSTRAP_METRICS:
        np.testing.assert_allclose(many[name], once[name])
    # and row order does not matter either
    perm = np.random.default_rng(0).permutation(len(y_true))
    shuffled = bootstrap.bootstrap_distribution(y_true[perm], y_pred[perm], lesions[perm], K, 200, seed=3)
    np.testing.assert_allclose(shuffled["accuracy"], once["accuracy"])


def test_lesion_resampling_widens_intervals_for_clustered_images():
    # 40 lesions of 10 images each; a lesion is all right or all wrong: 40 independent units
    y_true = np.zeros(400, dtype=int)
    y_pred = np.repeat(np.where(np.arange(40) % 2 == 0, 0, 1), 10)
    lesions = np.repeat([f"L{i}" for i in range(40)], 10)
    acc = bootstrap.bootstrap_distribution(y_true, y_pred, lesions, 2, 2000, seed=0)["accuracy"]
    # lesion-level sd is sqrt(.25 / 40) = 0.079; treating 400 images as independent gives 0.025
    assert 0.065 < acc.std() < 0.095
    per_image = bootstrap.bootstrap_distribution(y_true, y_pred, np.arange(400).astype(str), 2, 2000,
                                                 seed=0)["accuracy"]
    assert per_image.std() < 0.035


def test_resample_counts_draw_each_lesion_uniformly_with_replacement():
    blocks = list(bootstrap.resample_counts(n_groups=50, n_resamples=600, seed=0))
    counts = np.concatenate(blocks)
    assert counts.shape == (600, 50) and [len(b) for b in blocks] == [250, 250, 100]
    assert (counts.sum(axis=1) == 50).all()  # as many lesions as the split has
    assert counts.mean() == pytest.approx(1.0)
    assert counts.var() == pytest.approx(1 - 1 / 50, abs=0.05)  # binomial(50, 1/50)


def test_percentile_interval():
    values = np.arange(1001, dtype=float)
    assert bootstrap.percentile_interval(values, 0.95) == pytest.approx((25.0, 975.0))
    assert bootstrap.percentile_interval(np.array([np.nan, 1.0, 1.0]), 0.9) == (1.0, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.bootstrap_ci(np.zeros(3, int), np.zeros(3, int), np.array(["a", "b", "c"]), 2, 10, 1.5)


def test_paired_bootstrap_identical_and_better():
    y_true, y_pred, lesions = _case()
    same = bootstrap.paired_bootstrap(y_true, y_pred, y_pred.copy(), lesions, K, 200, seed=1, targets=TARGETS)
    assert set(same) == set(bootstrap.metric_names(TARGETS))
    for d in same.values():
        assert d.diff == 0 and d.ci_low == 0 and d.ci_high == 0 and not d.excludes_zero
    better = bootstrap.paired_bootstrap(y_true, y_true.copy(), y_pred, lesions, K, 200, seed=1, targets=TARGETS)
    point = classification_metrics(y_true, y_pred, K) | grouped_label_metrics(y_true, y_pred, K, TARGETS)
    for name, d in better.items():
        assert d.a == 1.0 and d.b == pytest.approx(point[name]) and d.diff == pytest.approx(1 - point[name])
        assert d.ci_low > 0 and d.excludes_zero and d.frac_not_better == 0


def test_bootstrap_speed():
    y_true, y_pred, lesions = _case(n_images=2000, seed=1)
    start = time.perf_counter()
    bootstrap.bootstrap_ci(y_true, y_pred, lesions, K, 1000, 0.95, seed=0, targets=TARGETS)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"1000 resamples of 2000 images took {elapsed:.1f}s"


def test_blocks_are_split_below_the_memory_bound(monkeypatch):
    """114 classes: a group's sums are 3 * 114 + 1 + 4 = 347 numbers per slot, and subgroups have
    dozens of slots. A block's rows are taken in chunks of at most MAX_PRODUCT numbers; the
    chunking changes nothing in the results."""
    k = 114
    y_true, y_pred, lesions = _case(n_images=3000, seed=4, k=k)
    wide = LabelSet(codes=tuple(f"c{i:03d}" for i in range(k)),
                    groupings={"half": {f"c{i:03d}": "low" if i < 57 else "high" for i in range(k)}},
                    positive={"half": "high"})
    targets = group_targets(wide)
    start = time.perf_counter()
    default = bootstrap.bootstrap_distribution(y_true, y_pred, lesions, k, 300, seed=2, targets=targets)
    elapsed = time.perf_counter() - start
    sizes = []
    original = bootstrap.metrics_from_stats

    def spy(sums, n_classes, t=()):
        sizes.append(sums.size)
        return original(sums, n_classes, t)

    monkeypatch.setattr(bootstrap, "metrics_from_stats", spy)
    monkeypatch.setattr(bootstrap, "MAX_PRODUCT", 100 * 347)  # 100 resamples of 347 sums per product
    chunked = bootstrap.bootstrap_distribution(y_true, y_pred, lesions, k, 300, seed=2, targets=targets)
    assert max(sizes) <= 100 * 347 and len(sizes) == 4  # 250 = 100 + 100 + 50, then 50
    for name in bootstrap.metric_names(targets):
        np.testing.assert_allclose(chunked[name], default[name])
    point = classification_metrics(y_true, y_pred, k)
    assert abs(np.nanmean(default["macro_f1"]) - point["macro_f1"]) < 0.05
    assert elapsed < 10.0, f"300 resamples with 114 classes took {elapsed:.1f}s"
