"""Lesion-level splits: the original study's exact ``seed`` split and the ``grouped`` split.

Both keep every image of a lesion in one split (no lesion leaks between train, val and test).
Frames have at least the columns ``lesion_id`` and ``dx``; functions return a Series of split
names (``train``/``val``/``test``) aligned with the frame's index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")

#: The original study's ratios: 20 % of lesions to test, then 11.11 % of the rest to val.
SEED_TEST_SIZE = 0.20
SEED_VAL_SIZE = 0.1111


def seed_split(meta: pd.DataFrame, seed: int = 42) -> pd.Series:
    """The original study's split, bit for bit (SEED_FACTS): unique (lesion, dx) pairs in
    metadata order, ``train_test_split`` stratified by dx twice with ``random_state=seed``."""
    from sklearn.model_selection import train_test_split

    lesions = meta[["lesion_id", "dx"]].drop_duplicates()
    train_val, test = train_test_split(lesions, test_size=SEED_TEST_SIZE, stratify=lesions.dx, random_state=seed)
    train, val = train_test_split(train_val, test_size=SEED_VAL_SIZE, stratify=train_val.dx, random_state=seed)
    where = {**dict.fromkeys(train.lesion_id, "train"), **dict.fromkeys(val.lesion_id, "val"),
             **dict.fromkeys(test.lesion_id, "test")}
    return meta["lesion_id"].map(where).rename("split")


def _assign(sizes: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put groups (image counts ``sizes``) into bins whose image totals approach ``targets``.

    Every bin first gets one group while groups last (so a class reaches every split when it has
    enough lesions); the rest go, largest first with random tie order, to the bin with the
    largest remaining deficit relative to its target.
    """
    n_bins = len(targets)
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    filled = np.zeros(n_bins)
    out = np.empty(len(sizes), dtype=np.int64)
    # seed each bin with one group, smallest targets first (they are the easiest to overshoot);
    seeded = 0
    # with fewer groups than bins, the biggest bins are served first
    bin_order = np.argsort(-targets if len(sizes) < n_bins else targets, kind="stable")
    for b in bin_order:
        if seeded >= len(order) or targets[b] <= 0:
            continue
        # the smallest remaining group seeds a small bin, so it does not overshoot its target
        g = order[-1 - seeded]
        out[g] = b
        filled[b] += sizes[g]
        seeded += 1
    rest = order[: len(order) - seeded]
    total_target = targets.sum()
    for g in rest:
        deficit = (targets - filled) / np.maximum(targets, 1e-9 * total_target)
        deficit[targets <= 0] = -np.inf
        b = int(np.argmax(deficit))
        out[g] = b
        filled[b] += sizes[g]
    return out


def grouped_split(meta: pd.DataFrame, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  seed: int = 42) -> pd.Series:
    """A lesion-grouped split stratified by label, with every class in every split wherever the
    class has at least three lesions.

    ``ratios`` are the train/val/test shares of images. Since every lesion has exactly one label,
    stratified group splitting reduces to assigning each class's lesions to splits separately;
    doing that directly (rather than with sklearn's StratifiedGroupKFold, which only produces
    1/K-sized folds and does not promise every class in every fold) gives any ratios exactly
    enough and the every-class guarantee.
    """
    ratios_arr = np.asarray(ratios, dtype=float)
    if ratios_arr.shape != (3,) or (ratios_arr < 0).any() or ratios_arr.sum() <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train, val, test), got {ratios}")
    ratios_arr = ratios_arr / ratios_arr.sum()
    return _grouped_bins(meta, ratios_arr, seed, list(SPLITS)).rename("split")


def grouped_folds(meta: pd.DataFrame, k: int, seed: int = 42) -> pd.Series:
    """Assign each image to one of ``k`` lesion-grouped, label-stratified cross-validation folds
    (0..k-1); every class is in every fold when it has at least ``k`` lesions."""
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    return _grouped_bins(meta, np.full(k, 1.0 / k), seed, list(range(k))).rename("fold")


def _grouped_bins(meta: pd.DataFrame, shares: np.ndarray, seed: int, names: list) -> pd.Series:
    rng = np.random.default_rng(seed)
    lesion_sizes = meta.groupby(["dx", "lesion_id"], sort=True).size()
    where: dict[str, object] = {}
    for dx in sorted(lesion_sizes.index.get_level_values(0).unique()):
        sizes = lesion_sizes.loc[dx]
        bins = _assign(sizes.to_numpy(), shares * sizes.sum(), rng)
        where.update(zip(sizes.index, (names[b] for b in bins)))
    return meta["lesion_id"].map(where)


def check_no_leakage(meta: pd.DataFrame, assignment: pd.Series) -> None:
    """Raise if any lesion has images in two splits (or folds)."""
    per_lesion = pd.DataFrame({"lesion_id": meta["lesion_id"], "split": assignment}).groupby("lesion_id")["split"]
    leaking = per_lesion.nunique()
    bad = leaking.index[leaking > 1]
    if len(bad):
        raise AssertionError(f"{len(bad)} lesions are in two splits, e.g. {list(bad[:3])}")


def counts_table(meta: pd.DataFrame, assignment: pd.Series, labels: tuple[str, ...]) -> dict:
    """Images and lesions per split, and images per split and class (for the manifest)."""
    frame = pd.DataFrame({"lesion_id": meta["lesion_id"], "dx": meta["dx"], "split": assignment})
    out = {}
    for name, part in frame.groupby("split", sort=False):
        by_class = part["dx"].value_counts()
        out[str(name)] = {"images": int(len(part)), "lesions": int(part["lesion_id"].nunique()),
                          "by_class": {c: int(by_class.get(c, 0)) for c in labels}}
    return out
