"""Group-level splits: the original study's exact ``seed`` split, the ``grouped`` split and a
dataset's ``official`` split.

All keep every image of a group (a lesion, a patient, or the image itself where a dataset has
no grouping) in one split: no group leaks between train, val and test. Frames have at least the
columns ``group_id`` (or the column named by ``group``) and ``dx``; functions return a Series of
split names (``train``/``val``/``test``) aligned with the frame's index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")

#: The original study's ratios: 20 % of lesions to test, then 11.11 % of the rest to val.
SEED_TEST_SIZE = 0.20
SEED_VAL_SIZE = 0.1111


def seed_split(meta: pd.DataFrame, seed: int = 42, group: str = "group_id") -> pd.Series:
    """The original study's split of HAM10000, bit for bit (SEED_FACTS): unique (lesion, dx)
    pairs in metadata order, ``train_test_split`` stratified by dx twice with
    ``random_state=seed``. (``derma prep`` allows it on HAM10000's label set only.)"""
    from sklearn.model_selection import train_test_split

    lesions = meta[[group, "dx"]].drop_duplicates()
    train_val, test = train_test_split(lesions, test_size=SEED_TEST_SIZE, stratify=lesions.dx, random_state=seed)
    train, val = train_test_split(train_val, test_size=SEED_VAL_SIZE, stratify=train_val.dx, random_state=seed)
    where = {**dict.fromkeys(train[group], "train"), **dict.fromkeys(val[group], "val"),
             **dict.fromkeys(test[group], "test")}
    return meta[group].map(where).rename("split")


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


def _ratios(ratios) -> np.ndarray:
    ratios_arr = np.asarray(ratios, dtype=float)
    if ratios_arr.shape != (3,) or (ratios_arr < 0).any() or ratios_arr.sum() <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train, val, test), got {ratios}")
    return ratios_arr / ratios_arr.sum()


def grouped_split(meta: pd.DataFrame, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  seed: int = 42, group: str = "group_id") -> pd.Series:
    """A group-level split stratified by label, with every class in every split wherever the
    class has at least three groups.

    ``ratios`` are the train/val/test shares of images. Each group is stratified by its label
    (a lesion has one; a patient counts as their commonest), so stratified group splitting
    reduces to assigning each class's groups to splits separately; doing that directly (rather
    than with sklearn's StratifiedGroupKFold, which only produces 1/K-sized folds and does not
    promise every class in every fold) gives any ratios exactly enough and the every-class
    guarantee.
    """
    return _grouped_bins(meta, _ratios(ratios), seed, list(SPLITS), group).rename("split")


def grouped_folds(meta: pd.DataFrame, k: int, seed: int = 42, group: str = "group_id") -> pd.Series:
    """Assign each image to one of ``k`` group-level, label-stratified cross-validation folds
    (0..k-1); every class is in every fold when it has at least ``k`` groups."""
    if k < 2:
        raise ValueError(f"--folds must be at least 2, got {k}")
    return _grouped_bins(meta, np.full(k, 1.0 / k), seed, list(range(k)), group).rename("fold")


def official_split(meta: pd.DataFrame, ratios: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 42,
                   group: str = "group_id") -> pd.Series:
    """A dataset's own split (its ``split`` column). Where it has no validation rows, val is
    drawn from its train rows, grouped and stratified, at the share ``ratios`` give val
    against train; its test rows stay as they are."""
    split = meta["split"].astype(str).rename("split")
    if (split == "val").any() or not (split == "train").any():
        return split
    r = _ratios(ratios)
    if r[1] <= 0:
        return split
    train = meta[split == "train"]
    carved = _grouped_bins(train, np.array([r[0], r[1]]) / (r[0] + r[1]), seed, ["train", "val"], group)
    out = split.copy()
    out.loc[train.index] = carved.to_numpy()
    return out


def _group_strata(meta: pd.DataFrame, group: str) -> pd.DataFrame:
    """Per group (sorted by label, then group id): its label and its image count. A group whose
    images carry several labels (a patient) is stratified by its commonest, ties by code."""
    counts = meta.groupby([group, "dx"], sort=True).size().rename("n").reset_index()
    sizes = counts.groupby(group)["n"].sum()
    top = counts.sort_values([group, "n", "dx"], ascending=[True, False, True], kind="stable").drop_duplicates(group)
    table = pd.DataFrame({"dx": top["dx"].to_numpy(), "size": sizes.loc[top[group]].to_numpy()},
                         index=pd.Index(top[group].to_numpy(), name=group))
    return table.sort_values(["dx"], kind="stable")


def _grouped_bins(meta: pd.DataFrame, shares: np.ndarray, seed: int, names: list, group: str) -> pd.Series:
    rng = np.random.default_rng(seed)
    strata = _group_strata(meta, group)
    where: dict[str, object] = {}
    for dx in sorted(strata["dx"].unique()):
        sizes = strata.loc[strata["dx"] == dx, "size"]
        bins = _assign(sizes.to_numpy(), shares * sizes.sum(), rng)
        where.update(zip(sizes.index, (names[b] for b in bins)))
    return meta[group].map(where)


def check_no_leakage(meta: pd.DataFrame, assignment: pd.Series, group: str = "group_id") -> None:
    """Raise if any group has images in two splits (or folds)."""
    per_group = pd.DataFrame({"group": meta[group].to_numpy(), "split": np.asarray(assignment)}).groupby("group")["split"]
    leaking = per_group.nunique()
    bad = leaking.index[leaking > 1]
    if len(bad):
        raise AssertionError(f"{len(bad)} groups ({group}) are in two splits, e.g. {list(bad[:3])}")


def leaking_groups(meta: pd.DataFrame, assignment: pd.Series, group: str = "group_id") -> list[str]:
    """The groups with images in more than one split."""
    per_group = pd.DataFrame({"group": meta[group].to_numpy(), "split": np.asarray(assignment)}).groupby("group")["split"]
    leaking = per_group.nunique()
    return [str(g) for g in leaking.index[leaking > 1]]


def counts_table(meta: pd.DataFrame, assignment: pd.Series, labels, group: str = "group_id") -> dict:
    """Images and groups per split, and images per split and class (for the manifest)."""
    frame = pd.DataFrame({"group": meta[group].to_numpy(), "dx": meta["dx"].to_numpy(),
                          "split": np.asarray(assignment)})
    out = {}
    for name, part in frame.groupby("split", sort=False):
        by_class = part["dx"].value_counts()
        out[str(name)] = {"images": int(len(part)), "groups": int(part["group"].nunique()),
                          "by_class": {c: int(by_class.get(c, 0)) for c in labels}}
    return out
