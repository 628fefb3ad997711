"""Can a dataset fill the splits its work needs? Checked before anything is written.

A metadata table with too few rows or groups (lesions, patients; single images where the
dataset has no grouping) cannot give every split an image: the grouped split assigns each
class's groups on their own, so a class with one lesion only ever reaches train, and val needs a
class with at least three. Before this check ``derma prep`` wrote a folder with empty splits and
exit 0, and the run on it failed after creating an MLflow run.

:func:`check_splits` is the one check. Given, per row, its group and the split it falls in, and
the splits that must not be empty, it raises :class:`InfeasibleSplitError` -- one line: how many
rows and groups there are, how many each split got and how many each split needs -- when a
needed split would be empty. Its two callers:

* ``derma prep`` (:func:`check_prep_splits`), before the split is written: the same split the
  policy (``seed``, ``grouped``, ``official``) and ratios give is computed on the metadata rows,
  and every split with a share must get at least one group;
* a run (:func:`check_run_splits`), on the loaded dataset before any MLflow run is created: the
  evaluated split always, train when the backend trains, val when it selects on val or is
  evaluated there.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .splits import SEED_TEST_SIZE, SEED_VAL_SIZE, SPLITS


class InfeasibleSplitError(ValueError):
    """A needed split would be (or is) empty; the message is one line."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


def _and(names: Sequence[str]) -> str:
    names = list(names)
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + f" and {names[-1]}"


def group_word(grouping: str | None) -> str:
    """What a group is called: ``lesion``, ``patient``, or ``image`` where there is no grouping."""
    return grouping or "image"


def split_counts(groups: Sequence[Any], assignment: Sequence[Any]) -> dict[str, tuple[int, int]]:
    """Per split name: (rows, distinct groups)."""
    frame = pd.DataFrame({"group": np.asarray(groups, dtype=object), "split": np.asarray(assignment, dtype=object)})
    out = {s: (0, 0) for s in SPLITS}
    for name, part in frame.groupby("split", sort=False, dropna=True):
        out[str(name)] = (int(len(part)), int(part["group"].nunique()))
    return out


def check_splits(groups: Sequence[Any], assignment: Sequence[Any], needed: Sequence[str], *, where: str,
                 grouping: str | None, how: str = "", needs: str | Callable[[list[str]], str] = "",
                 fix: str = "add data", who: str | None = None) -> None:
    """Raise :class:`InfeasibleSplitError` when a split in ``needed`` has no row.

    ``groups`` and ``assignment`` are per row (its group id and its split); ``where`` names the
    data (a metadata file, a prepared folder); ``how`` says how the split was made (``"a grouped
    split at ratios 0.7,0.1,0.2"``), ``needs`` what a split needs beyond one group (or a function
    of the empty splits' names giving it), ``fix`` what to do, ``who`` the backend whose run needs
    the splits."""
    counts = split_counts(groups, assignment)
    empty = [s for s in needed if counts.get(s, (0, 0))[0] == 0]
    if not empty:
        return
    word = group_word(grouping)
    rows, n_groups = len(groups), int(pd.Series(np.asarray(groups, dtype=object)).nunique())
    got = ", ".join(f"{s} {_plural(counts[s][0], 'row')} in {_plural(counts[s][1], word)}" if counts[s][0]
                    else f"{s} 0" for s in SPLITS if s in needed or counts[s][0])
    if callable(needs):
        needs = needs(empty)
    names = _and(empty)
    if who:
        need = f"{who} needs {_and(needed)}, at least 1 {word} each" if len(needed) > 1 else \
            f"{who} needs {needed[0]}: at least 1 {word}"
    else:
        need = f"each of {', '.join(needed)} needs at least 1 {word}" if len(needed) > 1 else \
            f"{needed[0]} needs at least 1 {word}"
    raise InfeasibleSplitError(
        f"{where}: {_plural(rows, 'row')} in {_plural(n_groups, word)} cannot fill the {names} split"
        f"{'s' if len(empty) > 1 else ''}: {how + ' gives ' if how else ''}{got}; {need}"
        f"{'; ' + needs if needs else ''}; {fix}")


# ---------------------------------------------------------------- derma prep

def _ratio_text(ratios: Sequence[float]) -> str:
    return ",".join(f"{float(r):g}" for r in ratios)


def _shares(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=float)
    return r / r.sum() if r.sum() > 0 else r


def seed_min_groups(n_classes: int) -> int:
    """The fewest groups the ``seed`` split (two stratified ``train_test_split``s: 20 % of the
    groups to test, then 11.11 % of the rest to val) can split: each part must hold at least one
    group per class."""
    n = max(2 * n_classes, 2)
    while True:
        test = math.ceil(SEED_TEST_SIZE * n)
        rest = n - test
        val = math.ceil(SEED_VAL_SIZE * rest)
        if min(test, rest - val, val) >= n_classes:
            return n
        n += 1


def _grouped_needs(meta: pd.DataFrame, shares: np.ndarray, word: str) -> Callable[[list[str]], str]:
    """What the grouped split needs: a split whose share ranks r-th (largest first) is reached only
    by a class with at least r groups (each class's groups are assigned on their own)."""
    rank = {SPLITS[i]: r for r, i in enumerate((i for i in np.argsort(-shares, kind="stable") if shares[i] > 0),
                                               start=1)}
    per_class = meta.groupby("dx")["group_id"].nunique()

    def needs(empty: list[str]) -> str:
        parts = [(rank[s], s) for s in empty if rank.get(s, 1) > 1]
        if not parts or not len(per_class):
            return ""
        parts.sort(reverse=True)
        wanted = " and ".join(f"{s} needs a class with at least {r} {word}s" if k == 0
                              else f"{s} one with at least {r}" for k, (r, s) in enumerate(parts))
        return (f"as each class's {word}s are split on their own, {wanted} (the largest class, "
                f"{per_class.idxmax()}, has {int(per_class.max())})")
    return needs


def check_prep_splits(meta: pd.DataFrame, policy: str, ratios: Sequence[float], seed: int, descriptor: Any,
                      source: Any) -> None:
    """``derma prep``: refuse (:class:`~derma_core.data.raw.PrepError`, one line) metadata rows
    (columns ``group_id``, ``dx``; ``split`` for the official policy) whose split under
    ``policy`` and ``ratios`` leaves a split with a share empty. Nothing is written."""
    from .raw import PrepError
    from .splits import grouped_split, official_split, seed_split

    meta = meta.reset_index(drop=True)
    grouping = getattr(descriptor, "grouping", None)
    word = group_word(grouping)
    shares = _shares(ratios)
    groups = meta["group_id"].to_numpy()
    where = str(source)
    try:
        if policy == "seed":
            needed = list(SPLITS)
            how = "the seed split (the original study's)"
            k = int(meta["dx"].nunique())
            per_class = meta.groupby("dx")["group_id"].nunique()
            few = sorted(str(c) for c in per_class.index[per_class < 2])
            needs = (f"it needs at least {seed_min_groups(k)} {word}s for {k} classes and at least 2 {word}s of "
                     f"every class" + (f" ({', '.join(few[:8])}{' ...' if len(few) > 8 else ''} "
                                       f"{'has' if len(few) == 1 else 'have'} fewer)" if few else ""))
            try:
                assignment = seed_split(meta, seed)
            except ValueError:  # scikit-learn's stratified split cannot be made
                fix = "add data" + (", or use --split grouped" if _grouped_fills(meta, ratios, seed) else "")
                raise InfeasibleSplitError(
                    f"{where}: {_plural(len(meta), 'row')} in {_plural(int(meta['group_id'].nunique()), word)} are too "
                    f"few for {how}: {needs}; {fix}") from None
        elif policy == "official":
            assignment = official_split(meta, ratios, seed)
            present = set(pd.Series(assignment).dropna().astype(str))
            needed = [s for s in SPLITS if s != "val" or "val" in present or shares[1] > 0]
            how = f"the official split (its {getattr(descriptor, 'split_column', None) or 'split'} column)"
            fix = "add data" + (", or use --split grouped" if _grouped_fills(meta, ratios, seed) else "")
            check_splits(groups, assignment, needed, where=where, grouping=grouping, how=how, fix=fix)
            return
        else:
            needed = [s for s, share in zip(SPLITS, shares) if share > 0]
            assignment = grouped_split(meta, ratios, seed)
            how = f"a grouped split at ratios {_ratio_text(ratios)}"
            needs = _grouped_needs(meta, shares, word)
        check_splits(groups, assignment, needed, where=where, grouping=grouping, how=how, needs=needs)
    except InfeasibleSplitError as exc:
        raise PrepError(f"error: {exc}") from None


def check_kept_rows(meta: pd.DataFrame, kept: np.ndarray, descriptor: Any, where: Any) -> None:
    """``derma prep`` after decoding: refuse (one line) when the images refused (unreadable, too
    small, too large) leave a split that had rows with none. ``meta`` has ``group_id`` and
    ``split`` per row, ``kept`` is a boolean mask of the rows whose image was usable."""
    from .raw import PrepError

    before = [s for s in SPLITS if (meta["split"] == s).any()]
    grouping = getattr(descriptor, "grouping", None)
    try:
        check_splits(meta["group_id"].to_numpy()[kept], meta["split"].to_numpy()[kept], before, where=str(where),
                     grouping=grouping, how=f"after the {int((~kept).sum())} refused images were dropped, the split",
                     fix="fix or replace the refused images the warnings above name (or relax --min-side)")
    except InfeasibleSplitError as exc:
        raise PrepError(f"error: {exc}") from None


def _grouped_fills(meta: pd.DataFrame, ratios: Sequence[float], seed: int) -> bool:
    from .splits import grouped_split

    counts = split_counts(meta["group_id"].to_numpy(), grouped_split(meta, ratios, seed).to_numpy())
    return all(counts[s][0] for s in SPLITS)


# ---------------------------------------------------------------- derma run

def run_needs(classifier: Any, eval_split: str) -> list[str]:
    """The splits a run must find non-empty: the evaluated split; train unless the backend
    declares ``needs_train = False`` (by default only backends that do not select on val -- zero-
    shot ones -- are assumed not to train); val when the backend selects on val."""
    from .calibration_split import selects_on_val

    selects = selects_on_val(classifier)
    needed = []
    if bool(getattr(classifier, "needs_train", selects)):
        needed.append("train")
    if selects or eval_split == "val":
        needed.append("val")
    if eval_split not in needed:
        needed.append(eval_split)
    return [s for s in SPLITS if s in needed] + [s for s in needed if s not in SPLITS]


def check_run_splits(dataset: Any, needed: Sequence[str], plugin: str) -> None:
    """A run: raise :class:`InfeasibleSplitError` (one line) when a split in ``needed`` of the
    loaded ``dataset`` is missing or empty, before any MLflow run is created."""
    frames = []
    for name, split in getattr(dataset, "splits", {}).items():
        frame = split.frame
        frames.append(pd.DataFrame({"group": frame["group_id"].astype(str).to_numpy() if "group_id" in frame
                                    else frame["id"].astype(str).to_numpy(), "split": name}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"group": [], "split": []})
    descriptor = getattr(dataset, "descriptor", None)
    where = f"dataset {dataset.name}" + (f" ({dataset.dir})" if getattr(dataset, "dir", None) else "")
    grouping = getattr(descriptor, "grouping", None)
    fix = ("prepare it again with more data, or with a share in --ratios for every split the run needs"
           if getattr(dataset, "dir", None) else "give the dataset more rows")
    check_splits(table["group"].to_numpy(), table["split"].to_numpy(), needed, where=where, grouping=grouping,
                 fix=fix, who=plugin)


__all__ = ["InfeasibleSplitError", "check_prep_splits", "check_run_splits", "check_splits", "group_word",
           "run_needs", "seed_min_groups", "split_counts"]
