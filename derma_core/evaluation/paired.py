"""Whether one run is really better than another on the same images: the paired statistics.

:func:`paired_comparison` joins two runs' predictions tables image by image
(:func:`align_predictions`), bootstraps the difference A - B in macro-F1, balanced accuracy,
accuracy and each grouping's metrics with the same groups (lesions / patients) resampled for both
runs, and runs McNemar's test on per-image correctness (:func:`mcnemar_test`). Plain functions on
DataFrames, tested on constructed cases; ``derma compare`` and ``derma report`` read the tables
(:mod:`.records`) and show the result (:mod:`.compare`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .tables import describe_classes

if TYPE_CHECKING:  # pragma: no cover
    from ..labels import LabelSet


class PairingError(ValueError):
    """Two runs cannot be compared image by image (different test sets)."""


def table_label_set(frame: pd.DataFrame) -> "LabelSet":
    """The label set of a predictions table of a run that recorded none (logged before
    ``label_set.json``): HAM10000's when its ``prob_<code>`` columns are HAM10000's codes, or
    (without them) when every label fits HAM10000's (the only dataset derma knew then); else
    the ``prob_`` columns' codes, or the distinct labels of the table, sorted."""
    from ..data.datasets.ham10000 import LABEL_SET as HAM10000
    from ..labels import LabelSet

    probs = tuple(c[len("prob_"):] for c in frame.columns if str(c).startswith("prob_"))
    if probs:
        return HAM10000 if probs == HAM10000.codes else LabelSet(codes=probs)
    seen = {str(v) for col in ("label", "predicted") if col in frame.columns for v in frame[col] if str(v) != ""}
    if seen <= set(HAM10000.codes):
        return HAM10000
    if len(seen) < 2:
        raise ValueError(f"cannot tell the classes of a predictions table with only the labels {sorted(seen)} "
                         "and no label_set.json")
    return LabelSet(codes=tuple(sorted(seen)))


#: The predictions table's group column; ``lesion_id`` in tables logged before datasets had descriptors.
GROUP_COLUMNS = ("group_id", "lesion_id")


def _group_column(df: pd.DataFrame) -> str | None:
    return next((c for c in GROUP_COLUMNS if c in df.columns), None)


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Join two predictions tables (``id, group_id, label, predicted``; ``lesion_id`` in older
    tables) image by image.

    Returns ``id, group_id, label, pred_a, pred_b`` in A's row order. Raises
    :class:`PairingError` when the runs were not evaluated on the same images, or when the same
    image carries a different true label or group in the two runs.
    """
    groups = []
    for name, df in zip(names, (a, b)):
        group = _group_column(df)
        missing = [c for c in ("id", "label", "predicted") if c not in df.columns] + ([] if group else ["group_id"])
        if missing:
            raise PairingError(f"predictions table of {name} lacks columns {missing}; was it written by derma run?")
        groups.append(group)
        dup = df["id"].astype(str).duplicated()
        if dup.any():
            raise PairingError(f"predictions table of {name} repeats image id {df['id'][dup].iloc[0]!r}")
    ids_a, ids_b = set(a["id"].astype(str)), set(b["id"].astype(str))
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise PairingError(
            f"no paired comparison: {names[0]} and {names[1]} were evaluated on different images "
            f"({len(ids_a)} vs {len(ids_b)} ids; {len(only_a)} only in {names[0]}, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in {names[1]}, e.g. {only_b[:3]}). Compare runs on the same test split.")
    cols = ["id", "group_id", "label", "predicted"]
    left = a.rename(columns={groups[0]: "group_id"})[cols].astype(str)
    right = b.rename(columns={groups[1]: "group_id"})[cols].astype(str).set_index("id").loc[left["id"]]
    for col in ("label", "group_id"):
        diff = left[col].to_numpy() != right[col].to_numpy()
        if diff.any():
            i = int(np.flatnonzero(diff)[0])
            raise PairingError(
                f"no paired comparison: image {left['id'].iloc[i]!r} has {col} {left[col].iloc[i]!r} in "
                f"{names[0]} but {right[col].iloc[i]!r} in {names[1]} ({int(diff.sum())} such images): "
                "not the same test set")
    return pd.DataFrame({"id": left["id"].to_numpy(), "group_id": left["group_id"].to_numpy(),
                         "label": left["label"].to_numpy(), "pred_a": left["predicted"].to_numpy(),
                         "pred_b": right["predicted"].to_numpy()})


@dataclass
class McNemarResult:
    """McNemar's test on paired per-image correctness."""

    a_only: int  # images A got right and B got wrong
    b_only: int  # images B got right and A got wrong
    both: int
    neither: int
    p_value: float  # exact (binomial) two-sided p-value
    chi2: float  # the chi-squared statistic with continuity correction, for reference
    p_value_chi2: float


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar's test. Only discordant images matter: under "equally good" each of them is as
    likely to favour A as B, so the exact p-value is a two-sided binomial test of ``a_only`` out
    of ``a_only + b_only`` at 1/2 (what statsmodels' ``mcnemar(exact=True)`` computes).
    """
    from scipy.stats import binomtest, chi2

    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError("correctness vectors differ in length")
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    n = a_only + b_only
    if n == 0:
        p_exact, stat, p_chi2 = 1.0, 0.0, 1.0
    else:
        p_exact = float(binomtest(a_only, n, 0.5).pvalue)
        stat = float(max(abs(a_only - b_only) - 1, 0) ** 2 / n)
        p_chi2 = float(chi2.sf(stat, df=1))
    return McNemarResult(a_only, b_only, int(np.sum(correct_a & correct_b)), int(np.sum(~correct_a & ~correct_b)),
                         min(p_exact, 1.0), stat, p_chi2)


@dataclass
class PairedComparison:
    """Run A vs run B on the same images (and the same classes)."""

    a: str
    b: str
    n_images: int
    n_groups: int
    confidence: float
    n_resamples: int
    differences: dict[str, Any]  # metric -> bootstrap.PairedDifference
    mcnemar: McNemarResult
    #: What the groups are (``lesions``, ``patients``, ``images``), for the text.
    unit: str = "groups"
    #: The classes both runs were evaluated on.
    classes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n_images": self.n_images, "n_groups": self.n_groups, "unit": self.unit,
                "classes": list(self.classes), "confidence": self.confidence, "bootstrap_resamples": self.n_resamples,
                "differences": {m: asdict(d) for m, d in self.differences.items()},
                "mcnemar": asdict(self.mcnemar)}


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("A", "B"),
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 42, *,
                      label_sets: "tuple[LabelSet | None, LabelSet | None]" = (None, None),
                      unit: str = "groups") -> PairedComparison:
    """Bootstrap the difference A - B in macro-F1, balanced accuracy and accuracy (and each
    grouping's sensitivity, specificity and balanced accuracy), the same groups (lesions /
    patients) resampled for both runs, and run McNemar's test on per-image correctness.

    ``label_sets`` are the runs' recorded label sets (None: :func:`table_label_set` of its
    table). Runs over different classes, or on different images, raise :class:`PairingError`.
    """
    from .bootstrap import paired_bootstrap
    from .metrics import group_targets

    la = label_sets[0] or table_label_set(a)
    lb = label_sets[1] or table_label_set(b)
    if not la.same_classes(lb):
        raise PairingError(f"no paired comparison: {names[0]} was evaluated on the classes {describe_classes(la)} "
                           f"but {names[1]} on {describe_classes(lb)}; paired tests need runs over the same classes")
    joined = align_predictions(a, b, names)
    try:
        y_true = la.encode(joined["label"].tolist(), "true label", allow_invalid=False)
        pred_a = la.encode(joined["pred_a"].tolist(), f"predicted label of {names[0]}")
        pred_b = la.encode(joined["pred_b"].tolist(), f"predicted label of {names[1]}")
    except ValueError as exc:
        raise PairingError(f"no paired comparison: {exc}") from None
    same_groupings = la.groupings == lb.groupings and la.positive == lb.positive
    targets = group_targets(la) if same_groupings else []
    diffs = paired_bootstrap(y_true, pred_a, pred_b, joined["group_id"].to_numpy(), len(la), n_resamples,
                             confidence, seed, targets)
    test = mcnemar_test(pred_a == y_true, pred_b == y_true)
    return PairedComparison(names[0], names[1], len(joined), int(joined["group_id"].nunique()), confidence,
                            n_resamples, diffs, test, unit, la.codes)
