"""Splits against reference values: the seed split pinned by fingerprints (SEED_FACTS on the real
metadata where it is present, and a synthetic frame always), the grouped split's balance measured
against its targets (hand-worked cases and a bound that holds for every input), zero shares left
empty, the k-fold guard, and no group in two splits for any ratios (hypothesis).

Why the balance bound holds: groups are placed largest first into the bin with the largest
relative deficit. The targets sum to the groups' total, so before each placement some bin is
still short of its target and the chosen bin is one of those: it ends below target + that
group's size. Seeding puts the smallest group into each bin. So every bin ends with
``filled < target + largest group``, and (the totals being equal) no bin falls short by more
than the others' overshoot, ``(bins - 1) * largest group``. A bin whose target is 0 gets nothing.

Equivalent mutants (no observable change):
- _assign: ``np.argsort(..., kind="stable")`` -> ``kind="STABLE"``: numpy reads the kind
  case-insensitively.
- _group_strata: ``groupby([group, "dx"], sort=True)`` -> ``sort=None``, and the
  ``sort_values([group, "n", "dx"], ..., kind="stable")`` without its ``kind``: the rows are one
  per (group, label), so sorting on group, count and label orders them fully whatever came before
  and whichever sort algorithm runs.
- counts_table: ``groupby("split", sort=False)`` -> ``sort=None``: pandas reads None as False.
- grouped_folds: ``np.full(k, 1.0 / k)`` -> ``np.full(k, 2.0 / k)``: equal shares scaled alike;
  _assign compares deficits relative to each target, so the same bins win.
- official_split: ``if r[1] <= 0`` -> ``if r[1] < 0``: with a zero val share the carve runs with
  shares (1, 0), and _assign puts nothing in a zero-target bin: every train row stays train.
- _ratios: ``np.asarray(ratios, dtype=float)`` -> ``dtype=None``: for numbers (what the CLI and
  the config give) the division by the sum makes floats either way.
- seed_split: the three ``dict.fromkeys`` blocks merged in another order: a group is in exactly
  one of train, val and test, so no key is ever overwritten.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derma_core.data import splits
from derma_core.data.splits import (SPLITS, check_no_leakage, counts_table, grouped_folds, grouped_split,
                                    leaking_groups, official_split, seed_split)

CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
TESTS = Path(__file__).resolve().parent


def _shared_docs() -> Path:
    return TESTS.parent.parent / "shared" / "docs"


def _real_metadata() -> Path:
    root = os.environ.get("DERMA_SHARED_DATA")
    base = Path(root) if root else TESTS.parent.parent / "shared" / "data"
    return base / "ham10000" / "HAM10000_metadata.csv"


def fingerprint(meta: pd.DataFrame, assignment: pd.Series, name, digits: int = 64) -> str:
    """SEED_FACTS's fingerprint: sha256 of the split's image ids, sorted, joined by "\\n"."""
    ids = sorted(meta.loc[assignment.astype(str) == str(name), "image_id"])
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:digits]


def synthetic() -> pd.DataFrame:
    """1000 images of 400 lesions (1-4 images each), nv a third of the lesions, vasc the rarest;
    rows shuffled by a fixed permutation. Built by arithmetic only, so it is the same everywhere."""
    rows = []
    for k in range(400):
        dx = "nv" if k % 3 == 0 else CODES[(k % 13) % 7]
        for j in range(1 + (k * 7) % 4):
            rows.append({"lesion_id": f"L{k:04d}", "image_id": f"I{k:04d}_{j}", "dx": dx})
    frame = pd.DataFrame(rows)
    order = sorted(range(len(frame)), key=lambda i: (i * 37) % len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["group_id"] = frame["lesion_id"]
    return frame


META = synthetic()


# ---------------------------------------------------------------------------------- seed split
SEED_FACTS_FINGERPRINTS = {
    "train": "b7d8405a987fc4b542826d37a83e056cc629045ebc438eaae12b2b754660214d",
    "val": "c5c2f5cfb0eeddab2cec861a04215ef71a5b43fe9d96abb039cafaf50db04446",
    "test": "a219dbd06a9019d19852a5afe5bfadad49ae327e51abcc78c0140f370af014cf",
}


def test_seed_facts_fingerprints_are_the_ones_written_here():
    facts = _shared_docs() / "SEED_FACTS.md"
    if not facts.exists():
        pytest.skip(f"{facts} not found (the shared docs sit next to the repository)")
    text = " ".join(facts.read_text(encoding="utf-8").split())
    for name, digest in SEED_FACTS_FINGERPRINTS.items():
        assert f"{name} `{digest}`" in text, name


@pytest.mark.skipif(not _real_metadata().exists(), reason=f"real HAM10000 metadata absent ({_real_metadata()})")
def test_seed_split_of_the_real_metadata_matches_the_original_split_files():
    meta = pd.read_csv(_real_metadata(), dtype=str, keep_default_na=False)
    meta["group_id"] = meta["lesion_id"]
    assignment = seed_split(meta)  # the default seed is the study's 42
    for name, digest in SEED_FACTS_FINGERPRINTS.items():
        assert fingerprint(meta, assignment, name) == digest, name


# Fingerprints (first 16 hex digits) of the seed split of synthetic() with seed 42, recorded when
# the split matched SEED_FACTS's real fingerprints; seed 43 gives a different split of equal sizes.
SYNTHETIC_SEED_42 = {"train": "de66f5830d027d13", "val": "fcde3dd73f1e1e06", "test": "928c658782494e0f"}
SYNTHETIC_SEED_43 = {"train": "64451ad5484f307e", "val": "3441f2300932a570", "test": "b56035a22926147f"}


def test_seed_split_is_pinned_on_a_synthetic_frame():
    assignment = seed_split(META)
    assert assignment.name == "split" and assignment.index.equals(META.index)
    assert {s: fingerprint(META, assignment, s, 16) for s in SPLITS} == SYNTHETIC_SEED_42
    other = seed_split(META, 43)
    assert {s: fingerprint(META, other, s, 16) for s in SPLITS} == SYNTHETIC_SEED_43
    lesions = META.drop_duplicates("lesion_id").index
    # the same number of lesions per split: sizes cannot tell the two apart
    assert other[lesions].value_counts().to_dict() == assignment[lesions].value_counts().to_dict()


def seed_split_reference(meta: pd.DataFrame, seed: int) -> pd.Series:
    """SEED_FACTS's four steps, written out from the text."""
    from sklearn.model_selection import train_test_split

    lesions = meta[["lesion_id", "dx"]].drop_duplicates()
    train_val, test = train_test_split(lesions, test_size=0.20, stratify=lesions.dx, random_state=seed)
    train, val = train_test_split(train_val, test_size=0.1111, stratify=train_val.dx, random_state=seed)
    where = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        for lesion in part["lesion_id"]:
            where[lesion] = name
    return pd.Series([where[g] for g in meta["lesion_id"]], index=meta.index)


@pytest.mark.parametrize("seed", [0, 7])
def test_seed_split_follows_seed_facts_steps(seed):
    got = seed_split(META.rename(columns={"group_id": "patient"}), seed, group="patient")
    assert got.tolist() == seed_split_reference(META, seed).tolist()
    lesions = META.drop_duplicates("lesion_id")
    test_lesions = (got[lesions.index] == "test").sum()
    val_lesions = (got[lesions.index] == "val").sum()
    assert test_lesions == 80  # ceil(0.20 * 400)
    assert val_lesions == 36  # ceil(0.1111 * 320)


# ------------------------------------------------------------------------- _assign by hand
def test_assign_worked_by_hand():
    # sizes 1,2,3,4,10 (distinct: the random tie order plays no part), targets 14, 2, 4 (20 images).
    # Seeding, smallest target first: val <- 1, test <- 2, train <- 3; filled 3, 1, 2.
    # 10: relative deficits 11/14, 1/2, 2/4 -> train (13). 4: 1/14, 1/2, 1/2 -> val (first of the tie).
    out = splits._assign(np.array([1, 2, 3, 4, 10]), np.array([14.0, 2.0, 4.0]), np.random.default_rng(0))
    assert out.tolist() == [1, 2, 0, 1, 0]
    # a zero target: val is skipped at seeding (test <- 1, train <- 2) and never chosen after:
    # 10: 14/16 vs 3/4 -> train; 4: 4/16 vs 3/4 -> test; 3: 4/16 vs -1/4 -> train.
    out = splits._assign(np.array([1, 2, 3, 4, 10]), np.array([16.0, 0.0, 4.0]), np.random.default_rng(0))
    assert out.tolist() == [2, 0, 0, 2, 0]


def test_assign_with_fewer_groups_than_bins_serves_the_biggest_bins():
    # groups 5 and 2, targets 4.9, 0.7, 1.4: bins biggest first (train, test, val); train gets the
    # smaller group, test the other, val none
    out = splits._assign(np.array([5, 2]), np.array([4.9, 0.7, 1.4]), np.random.default_rng(0))
    assert out.tolist() == [2, 0]
    out = splits._assign(np.array([3]), np.array([2.1, 0.3, 0.6]), np.random.default_rng(0))
    assert out.tolist() == [0]
    # ... but never a bin whose target is 0, even when it is listed first
    out = splits._assign(np.array([3, 1]), np.array([0.0, 3.2, 0.8]), np.random.default_rng(0))
    assert out.tolist() == [2, 1]


def test_assign_breaks_ties_by_the_seeded_permutation():
    # eight groups of one image, targets 4, 2, 2: which groups go where is the seeded permutation's
    # order; with another seed another set, with the same seed the same one
    sizes, targets = np.ones(8, dtype=int), np.array([4.0, 2.0, 2.0])
    a = splits._assign(sizes, targets, np.random.default_rng(1))
    assert np.bincount(a, minlength=3).tolist() == [4, 2, 2]
    assert a.tolist() == splits._assign(sizes, targets, np.random.default_rng(1)).tolist()
    assert len({tuple(splits._assign(sizes, targets, np.random.default_rng(s)).tolist()) for s in range(6)}) > 1


def per_group(part: pd.DataFrame, assignment: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The image count and split index (0 train, 1 val, 2 test) of each group of ``part``."""
    first = part.drop_duplicates("group_id")
    sizes = part.groupby("group_id").size().loc[first["group_id"]].to_numpy()
    return sizes, np.array([SPLITS.index(s) for s in assignment[first.index]])


def balance_ok(sizes: np.ndarray, targets: np.ndarray, bins: np.ndarray) -> None:
    filled = np.bincount(bins, weights=sizes, minlength=len(targets))
    biggest = sizes.max()
    for b, (have, want) in enumerate(zip(filled, targets)):
        if want <= 0:
            assert have == 0, (b, filled, targets)
        else:
            assert have < want + biggest + 1e-9, (b, filled, targets)
            assert want - have <= (len(targets) - 1) * biggest + 1e-9, (b, filled, targets)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=40),
       shares=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.7, 1.0]), min_size=2, max_size=5)
       .filter(lambda s: sum(s) > 0),
       seed=st.integers(0, 50))
def test_assign_balance_against_targets(sizes, shares, seed):
    sizes = np.array(sizes)
    shares = np.array(shares) / sum(shares)
    targets = shares * sizes.sum()
    bins = splits._assign(sizes, targets, np.random.default_rng(seed))
    assert set(bins.tolist()) <= set(np.flatnonzero(targets > 0).tolist())
    balance_ok(sizes, targets, bins)
    positive = int((targets > 0).sum())
    if len(sizes) >= positive:  # every bin with a target gets a group while groups last
        assert set(bins.tolist()) == set(np.flatnonzero(targets > 0).tolist())


# ------------------------------------------------------------------------------ grouped split
def test_grouped_split_is_pinned_on_a_synthetic_frame():
    """Reproducibility: the grouped split of a frame with a seed never changes between versions
    (a prepared folder records seed and ratios, not the split); recorded with seed 42."""
    default = grouped_split(META)
    assert default.name == "split"
    assert default.equals(grouped_split(META, (0.7, 0.1, 0.2), 42, "group_id"))
    assert {s: fingerprint(META, default, s, 16) for s in SPLITS} == {
        "train": "de4dfba774d9db6e", "val": "90ba16b045627bbd", "test": "eeb6187602ad69aa"}
    folds = grouped_folds(META, 3)
    assert folds.name == "fold" and folds.equals(grouped_folds(META, 3, 42, "group_id"))
    assert [fingerprint(META, folds, f, 16) for f in range(3)] == [
        "5253eed42ae18bbd", "56d58252ea8bc34b", "9fe12afa4f0406c3"]


@pytest.mark.parametrize("ratios", [(0.7, 0.1, 0.2), (0.6, 0.2, 0.2), (0.8, 0.0, 0.2), (7, 1, 2), (0.5, 0.5, 0.0)])
def test_grouped_split_balance_per_class_against_targets(ratios):
    assignment = grouped_split(META, ratios, seed=5)
    shares = np.array(ratios, dtype=float) / sum(ratios)
    check_no_leakage(META, assignment)
    for dx, part in META.groupby("dx"):
        targets = shares * len(part)
        filled = assignment[part.index].value_counts().reindex(list(SPLITS), fill_value=0).to_numpy()
        sizes, bins = per_group(part, assignment)
        balance_ok(sizes, targets, bins)
        assert filled.sum() == len(part), dx
    for name, share in zip(SPLITS, shares):
        got = (assignment == name).mean()
        if share == 0:
            assert got == 0, name  # a zero share leaves the split empty
        else:
            assert abs(got - share) < 0.03, (name, got, share)


def test_ratios_given_in_any_units_are_shares():
    assert grouped_split(META, (7, 1, 2), 3).equals(grouped_split(META, (0.7, 0.1, 0.2), 3))


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.5, 0.3, 0.1, 0.1), (0.8, -0.1, 0.3), (0, 0, 0)])
def test_bad_ratios_are_refused_naming_them(ratios):
    with pytest.raises(ValueError, match=r"split ratios must be three non-negative numbers \(train, val, test\), "
                                         r"got \(") as info:
        grouped_split(META, ratios, 0)
    assert str(ratios) in str(info.value)


@pytest.mark.parametrize("k", [1, 0, -2])
def test_fewer_than_two_folds_are_refused(k):
    with pytest.raises(ValueError, match=f"^--folds must be at least 2, got {k}$"):
        grouped_folds(META, k)


def test_two_folds_halve_each_class():
    folds = grouped_folds(META, 2, seed=1)
    check_no_leakage(META, folds)
    assert set(folds) == {0, 1}
    for dx, part in META.groupby("dx"):
        sizes = part.groupby("group_id").size()
        per = folds[part.index].value_counts()
        assert abs(per[0] - per[1]) <= sizes.max(), dx


def test_group_strata_commonest_label_ties_by_code():
    meta = pd.DataFrame({"group_id": ["P1", "P1", "P1", "P2", "P2", "P3", "P0", "P0"],
                         "dx": ["mel", "nv", "mel", "nv", "mel", "bcc", "nv", "nv"]})
    table = splits._group_strata(meta, "group_id")
    # P1: mel 2, nv 1 -> mel; P2: nv 1, mel 1 -> mel (tie: the first code); sorted by label, then id
    assert table.index.tolist() == ["P3", "P1", "P2", "P0"]
    assert table["dx"].tolist() == ["bcc", "mel", "mel", "nv"]
    assert table["size"].tolist() == [1, 3, 2, 2]


def test_a_patient_goes_with_the_commonest_label_of_its_images():
    # one class of three patients (shares 1/3 each): each patient fills one split; a patient whose
    # commonest label is the other class is stratified with that class instead
    meta = pd.DataFrame({"group_id": ["A", "B", "C", "D", "D", "D"],
                         "dx": ["x", "x", "x", "y", "y", "x"],
                         "image_id": list("123456")})
    assignment = grouped_split(meta, (1, 1, 1), seed=0)
    assert sorted(assignment[:3]) == sorted(SPLITS)
    check_no_leakage(meta, assignment)


# ------------------------------------------------------------------------------- official split
def _official() -> pd.DataFrame:
    return META.assign(split=np.where(META["lesion_id"].str[1:].astype(int) % 5 == 0, "test", "train"))


def test_official_split_carves_val_at_its_share_of_train_per_class():
    meta = _official()
    out = official_split(meta, (0.6, 0.2, 0.2), seed=2)
    assert out.name == "split"
    assert (out[meta["split"] == "test"] == "test").all()
    train = meta[meta["split"] == "train"]
    for dx, part in train.groupby("dx"):
        val = (out[part.index] == "val").sum()
        # val's target is 0.2 / 0.8 of the class's train images
        assert abs(val - len(part) / 4) < 3 * part.groupby("group_id").size().max(), dx
    share = (out[train.index] == "val").mean()
    assert abs(share - 0.25) < 0.02
    assert official_split(meta, (0.6, 0.2, 0.2), seed=2).equals(out)
    assert official_split(meta).equals(official_split(meta, (0.7, 0.1, 0.2), 42))


def test_official_split_with_a_zero_val_share_or_own_val_is_kept():
    meta = _official()
    kept = official_split(meta, (0.8, 0.0, 0.2))
    assert kept.tolist() == meta["split"].tolist() and kept.name == "split"
    with_val = meta.assign(split=np.where(np.arange(len(meta)) % 9 == 0, "val", meta["split"]))
    assert official_split(with_val, (0.6, 0.2, 0.2)).tolist() == with_val["split"].tolist()
    only_test = meta.assign(split="test")
    assert official_split(only_test).tolist() == ["test"] * len(meta)


# ------------------------------------------------------------------------------ leakage, counts
def test_leakage_check_names_the_groups():
    meta = pd.DataFrame({"group_id": ["a", "a", "b", "b", "c", "c", "d", "d", "e"]})
    assignment = pd.Series(["train", "val", "val", "test", "train", "train", "val", "train", "test"])
    with pytest.raises(AssertionError) as info:
        check_no_leakage(meta, assignment)
    assert str(info.value) == "3 groups (group_id) are in two splits, e.g. ['a', 'b', 'd']"
    assert leaking_groups(meta, assignment) == ["a", "b", "d"]
    frame = meta.rename(columns={"group_id": "patient"})
    assert leaking_groups(frame, assignment, group="patient") == ["a", "b", "d"]
    with pytest.raises(AssertionError, match=r"^3 groups \(patient\)"):
        check_no_leakage(frame, assignment, group="patient")
    check_no_leakage(meta, pd.Series(["train"] * 9))


def test_counts_table_by_hand():
    meta = pd.DataFrame({"group_id": ["a", "a", "b", "c", "d"], "dx": ["mel", "mel", "nv", "nv", "bcc"]})
    table = counts_table(meta, pd.Series(["train", "train", "train", "test", "test"]), ["bcc", "mel", "nv"])
    assert table == {"train": {"images": 3, "groups": 2, "by_class": {"bcc": 0, "mel": 2, "nv": 1}},
                     "test": {"images": 2, "groups": 2, "by_class": {"bcc": 1, "mel": 0, "nv": 1}}}
    assert list(table) == ["train", "test"]  # in order of appearance
    folds = counts_table(meta.rename(columns={"group_id": "g"}), pd.Series([1, 1, 0, 0, 0]), ["nv"], group="g")
    assert folds == {"1": {"images": 2, "groups": 1, "by_class": {"nv": 0}},
                     "0": {"images": 3, "groups": 3, "by_class": {"nv": 2}}}


# ------------------------------------------------------------------------- no lesion in two splits
@st.composite
def frames(draw):
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    labels = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True))
    rows = []
    for k in range(n):
        dx = labels[int(rng.integers(len(labels)))]
        for j in range(int(rng.integers(1, 5))):
            rows.append({"group_id": f"L{k}", "image_id": f"I{k}_{j}", "dx": dx})
    frame = pd.DataFrame(rows)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(meta=frames(), ratios=st.tuples(*[st.sampled_from([0.0, 0.1, 0.2, 0.7])] * 3).filter(lambda r: sum(r) > 0),
       seed=st.integers(0, 100))
def test_a_lesion_is_never_in_two_splits_and_zero_shares_stay_empty(meta, ratios, seed):
    assignment = grouped_split(meta, ratios, seed)
    assert assignment.notna().all() and leaking_groups(meta, assignment) == []
    for name, share in zip(SPLITS, ratios):
        if share == 0:
            assert not (assignment == name).any(), (name, ratios)
    shares = np.array(ratios) / sum(ratios)
    for dx, part in meta.groupby("dx"):
        sizes, bins = per_group(part, assignment)
        balance_ok(sizes, shares * len(part), bins)
