"""``derma compare``: runs side by side, and a paired test of whether one backend is really better.

The logic is in plain functions on DataFrames / small records so it can be tested on
constructed cases; the click command at the bottom only reads runs through
:mod:`derma_core.tracking` and prints.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import click
import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from ..labels import LabelSet

#: Metrics shown first in the side-by-side table (when at least one run has them), in this order;
#: then the focus class's and each grouping's metrics the runs have (:func:`summary_metrics`),
#: then :data:`SUMMARY_TAIL`.
SUMMARY_HEAD = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auroc")
SUMMARY_TAIL = ("brier", "ece", "invalid_rate")
#: Metrics for which lower is better (sorting).
LOWER_IS_BETTER = {"brier", "ece", "invalid_rate", "invalid_count"}
TAG_PLUGIN = "derma.plugin"  # the same strings as tracking.TAG_*; kept here so importing is cheap
TAG_DIGEST = "derma.dataset_digest"
TAG_DATASET = "derma.dataset"
TAG_LABEL_SET = "derma.label_set"
#: Metric families that repeat a grouping's or class's metric per subgroup / method: not summary metrics.
_NOT_SUMMARY = ("subgroup_", "conformal_", "calibrated_", "selective_")


class PairingError(ValueError):
    """Two runs cannot be compared image by image (different test sets)."""


# -- run records and the side-by-side table ------------------------------------------------
@dataclass
class RunRecord:
    """What ``derma compare`` needs of one MLflow run."""

    run_id: str
    run_name: str = ""
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def plugin(self) -> str:
        return self.tags.get(TAG_PLUGIN) or self.params.get("plugin") or "?"

    @property
    def label(self) -> str:
        short = self.run_id[:8]
        return f"{self.run_name} ({short})" if self.run_name else short

    @classmethod
    def from_mlflow(cls, run: Any) -> "RunRecord":
        return cls(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                   params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags))


def curated_param_names() -> list[str]:
    """The curated param names (the same across plugins), minus ``plugin`` (shown on its own)."""
    from ..runner import CURATED_PARAMS

    return [name for name in CURATED_PARAMS if name != "plugin"]


def runs_frame(records: Sequence[RunRecord], split: str = "test") -> pd.DataFrame:
    """One row per run: run_id, run_name, plugin, status, dataset and classes (its
    ``derma.dataset`` and ``derma.label_set`` tags; None for runs logged before them), every
    curated param, and every ``<split>_*`` metric of any run without its split prefix
    (``macro_f1``, ``macro_f1_ci_low``...)."""
    prefix = f"{split}_"
    param_names = curated_param_names()
    rows = []
    for rec in records:
        row: dict[str, Any] = {"run_id": rec.run_id, "run_name": rec.run_name, "plugin": rec.plugin,
                               "status": rec.status, "dataset": rec.tags.get(TAG_DATASET),
                               "classes": rec.tags.get(TAG_LABEL_SET)}
        for name in param_names:
            row[name] = rec.params.get(name)
        for key, value in rec.metrics.items():
            if key.startswith(prefix):
                row[key[len(prefix):]] = float(value)
        rows.append(row)
    frame = pd.DataFrame(rows)
    # Params no run has are noise.
    empty = [c for c in param_names if c in frame and frame[c].isna().all()]
    return frame.drop(columns=empty)


def summary_metrics(columns: Iterable[str]) -> list[str]:
    """The side-by-side metrics among ``columns`` (unprefixed metric names of some runs):
    :data:`SUMMARY_HEAD`, the focus class's sensitivity at fixed specificity
    (``mel_sensitivity_at_spec80`` ...), each grouping's sensitivity, specificity and AUROC
    (``malignancy_sensitivity`` ...), then :data:`SUMMARY_TAIL`.

    Groupings are recognised by their ``<grouping>_sensitivity`` and ``<grouping>_specificity``
    pair, the focus class by ``<code>_sensitivity_at_spec<NN>`` for a code that is no grouping;
    the names come from the runs' own label sets, whatever they are."""
    cols = [c for c in dict.fromkeys(columns) if isinstance(c, str) and not c.startswith(_NOT_SUMMARY)]
    present = set(cols)
    groupings = sorted(c[: -len("_specificity")] for c in cols
                       if c.endswith("_specificity") and f"{c[: -len('_specificity')]}_sensitivity" in present)
    focus = sorted(c for c in cols if (m := re.fullmatch(r"(.+)_sensitivity_at_spec\d+", c)) and m.group(1) not in groupings)
    grouped = [f"{g}_{m}" for g in groupings for m in ("sensitivity", "specificity", "auroc")]
    return [m for m in (*SUMMARY_HEAD, *focus, *grouped, *SUMMARY_TAIL) if m in present]


def key_params(frame: pd.DataFrame) -> list[str]:
    """Curated params worth a column: those that differ between runs (all present ones for one run)."""
    names = [c for c in curated_param_names() if c in frame.columns]
    if len(frame) <= 1:
        return [c for c in names if frame[c].notna().any()]
    return [c for c in names if frame[c].astype(str).nunique(dropna=False) > 1]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def metric_cell(row: pd.Series, metric: str) -> str:
    """``0.625 [0.601, 0.650]`` (or without the interval when the run has none)."""
    value = row.get(metric)
    if value is None or pd.isna(value):
        return "-"
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}"


def sort_runs(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Best run first on ``metric`` (lower first for brier, ece, invalid_rate); missing last."""
    if metric not in frame:
        return frame
    return frame.sort_values(metric, ascending=metric in LOWER_IS_BETTER, na_position="last", kind="stable")


#: The columns of :func:`runs_frame` that are not metrics.
INFO_COLUMNS = ("run_id", "run_name", "plugin", "status", "dataset", "classes")


def display_table(frame: pd.DataFrame, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """The side-by-side table as strings: run, plugin, differing key params, metrics with
    intervals (default :func:`summary_metrics`); a ``classes`` column (how many) when the runs
    were evaluated on different label sets."""
    metrics = summary_metrics(frame.columns) if metrics is None else metrics
    shown = [m for m in metrics if m in frame.columns and frame[m].notna().any()]
    params = key_params(frame)
    out = pd.DataFrame({"run": [_run_label(r) for _, r in frame.iterrows()], "plugin": frame["plugin"].astype(str)})
    if (frame["status"] != "FINISHED").any():
        out["status"] = frame["status"].astype(str)
    if "classes" in frame and frame["classes"].dropna().astype(str).nunique() > 1:
        out["classes"] = [_n_classes(v) for v in frame["classes"]]
    for p in params:
        out[p] = [_fmt(v) for v in frame[p]]
    for m in shown:
        out[m] = [metric_cell(r, m) for _, r in frame.iterrows()]
    return out.reset_index(drop=True)


def _n_classes(codes: Any) -> str:
    if codes is None or (isinstance(codes, float) and math.isnan(codes)) or codes == "":
        return "-"
    return str(len(str(codes).split(",")))


def _run_label(row: pd.Series) -> str:
    short = str(row["run_id"])[:8]
    return f"{row['run_name']} ({short})" if row.get("run_name") else short


def render_text(table: pd.DataFrame) -> str:
    """A plain aligned text table (no extra dependency)."""
    cols = list(table.columns)
    cells = [[str(c) for c in cols]] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown pipe table."""
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


# -- label sets of logged runs ------------------------------------------------------------------
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


def describe_classes(label_set: "LabelSet", limit: int = 8) -> str:
    """``akiec, bcc, ... (7 classes)``: a label set in one short line."""
    codes = list(label_set.codes)
    shown = ", ".join(codes[:limit]) + (", ..." if len(codes) > limit else "")
    return f"{shown} ({len(codes)} classes)"


def group_unit(facts: dict | None) -> str:
    """What a dataset's groups are, for text: ``lesions``, ``patients``, ``images`` (no grouping),
    from a run's ``dataset.json``; ``lesions`` for runs logged before it recorded facts (HAM10000)."""
    if not facts:
        return "groups"
    inner = facts.get("facts")
    if not isinstance(inner, dict):
        return "lesions"
    grouping = inner.get("grouping")
    return f"{grouping}s" if grouping else "images"


# -- paired comparison -----------------------------------------------------------------------
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


def paired_table(result: PairedComparison) -> pd.DataFrame:
    """The paired differences as a small display table (macro-F1, balanced accuracy, accuracy,
    then the grouped metrics)."""
    pct = f"{result.confidence:.0%}"
    first = ("macro_f1", "balanced_accuracy", "accuracy")
    order = [m for m in first if m in result.differences] + [m for m in result.differences if m not in first]
    rows = []
    for m in order:
        d = result.differences[m]
        ci = "-" if math.isnan(d.ci_low) else f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        if math.isnan(d.ci_low):
            verdict = "-"
        elif d.ci_low > 0:
            verdict = "A better"
        elif d.ci_high < 0:
            verdict = "B better"
        else:
            verdict = "no clear difference"
        rows.append({"metric": m, "A": _fmt(d.a), "B": _fmt(d.b), "A - B": "-" if math.isnan(d.diff) else f"{d.diff:+.3f}",
                     f"{pct} CI": ci, "verdict": verdict})
    return pd.DataFrame(rows)


def paired_text(result: PairedComparison, markdown: bool = False) -> str:
    mc = result.mcnemar
    head = (f"Paired comparison on {result.n_images} images ({result.n_groups} {result.unit}), "
            f"A = {result.a}, B = {result.b}; intervals from {result.n_resamples} bootstrap resamples of "
            f"the {result.unit}:")
    table = paired_table(result)
    body = render_markdown(table) if markdown else render_text(table)
    tail = (f"McNemar's test on per-image correctness: A right & B wrong {mc.a_only}, A wrong & B right "
            f"{mc.b_only}; exact p = {mc.p_value:.3g} (chi2 with continuity correction {mc.chi2:.2f}, "
            f"p = {mc.p_value_chi2:.3g}). It treats images as independent; the bootstrap resamples whole {result.unit}.")
    return "\n\n".join([head, body, tail]) if markdown else "\n".join([head, body, tail])


# -- I/O helpers -------------------------------------------------------------------------------
def predictions_artifact(split: str) -> str:
    """The artifact name ``derma run`` gives a split's predictions table."""
    return "predictions.csv" if split == "test" else f"predictions_{split}.csv"


def save_figure_atomic(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG, atomically (:func:`derma_core.atomic.atomic_path`)."""
    from ..atomic import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_records(run_ids: Sequence[str], experiment: str | None, uri: str | None, split: str,
                 metric: str) -> tuple[list[RunRecord], list[str]]:
    """The runs to compare and notes about runs left out (``--experiment`` keeps finished runs
    that have the chosen metric)."""
    from .. import tracking

    notes: list[str] = []
    if run_ids:
        records = []
        for rid in run_ids:
            try:
                records.append(RunRecord.from_mlflow(tracking.get_run(rid, uri)))
            except Exception as exc:  # mlflow raises its own exception types for a missing run
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LookupError(f"run {rid!r} not found in {tracking.resolve_tracking_uri(uri)}: {first}") from None
        return records, notes
    records = [RunRecord.from_mlflow(r) for r in tracking.search_runs(experiment, uri)]
    kept = [r for r in records if r.status == "FINISHED" and f"{split}_{metric}" in r.metrics]
    if len(kept) < len(records):
        notes.append(f"left out {len(records) - len(kept)} of {len(records)} runs of {experiment!r} that are not "
                     f"finished or have no {split}_{metric}")
    if not kept:
        raise LookupError(f"experiment {experiment!r} has no finished run with metric {split}_{metric}")
    return kept, notes


def check_same_classes_tags(a: RunRecord, b: RunRecord) -> None:
    """A :class:`PairingError` when both runs' ``derma.label_set`` tags are set and differ
    (before any predictions table is downloaded)."""
    ta, tb = a.tags.get(TAG_LABEL_SET), b.tags.get(TAG_LABEL_SET)
    if ta and tb and ta != tb:
        from ..labels import LabelSet

        la, lb = (LabelSet(codes=tuple(t.split(","))) for t in (ta, tb))
        raise PairingError(f"no paired comparison: {a.label} was evaluated on the classes {describe_classes(la)} "
                           f"but {b.label} on {describe_classes(lb)}; paired tests need runs over the same classes")


def load_pair_inputs(record: RunRecord, uri: str | None, split: str) -> tuple[pd.DataFrame, "LabelSet", str]:
    """A run's predictions table on ``split``, its label set (``label_set.json``, else
    :func:`table_label_set`) and what its groups are (:func:`group_unit`)."""
    from .. import tracking

    table = tracking.load_run_table(record.run_id, predictions_artifact(split), uri)
    label_set = tracking.load_run_label_set(record.run_id, uri) or table_label_set(table)
    return table, label_set, group_unit(tracking.load_run_dict(record.run_id, "dataset.json", uri))


@click.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", "-e", help="Compare every finished run of this MLflow experiment.")
@click.option("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG forest plot of --metric.")
@click.option("--metric", default="macro_f1", show_default=True, help="Metric to sort and plot by (no split prefix).")
@click.option("--split", default="test", show_default=True, help="Which evaluated split's metrics to compare.")
@click.option("--paired/--no-paired", default=None,
              help="Paired test of two runs (default: whenever exactly two runs share their test images).")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples for the paired comparison.")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the paired bootstrap.")
def compare_command(run_ids, experiment, tracking_uri, fmt, plot_path, metric, split, paired, n_resamples,
                    confidence, seed):
    """Compare runs side by side; for two runs on the same test set, test whether one is better.

    Give RUN_IDs (in the order A, B) or --experiment NAME.
    """
    if bool(run_ids) == bool(experiment):
        _fail("give run ids or --experiment NAME (not both)", 2)
    # MLflow draws a progress bar for every predictions table it downloads: noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        records, notes = load_records(run_ids, experiment, tracking_uri, split, metric)
    except LookupError as exc:
        _fail(str(exc).strip("'\""))
    frame = runs_frame(records, split)
    if metric not in frame.columns:
        available = sorted(c for c in frame.columns if not c.endswith(("_ci_low", "_ci_high"))
                           and c not in INFO_COLUMNS and c not in curated_param_names())
        _fail(f"no run has metric {split}_{metric}; available: {', '.join(available) or 'none'}", 2)
    if experiment:
        frame = sort_runs(frame, metric)
        order = {rid: i for i, rid in enumerate(frame["run_id"])}
        records = sorted(records, key=lambda r: order[r.run_id])
    frame = frame.reset_index(drop=True)
    pair, pair_note = _compare_pair(records, paired, tracking_uri, split, n_resamples, confidence, seed, notes)
    if plot_path:
        from .figures import compare_figure

        fig = compare_figure([_run_label(r) for _, r in frame.iterrows()], frame[metric].tolist(),
                             frame.get(f"{metric}_ci_low", pd.Series([np.nan] * len(frame))).tolist(),
                             frame.get(f"{metric}_ci_high", pd.Series([np.nan] * len(frame))).tolist(),
                             f"{split}_{metric}")
        save_figure_atomic(fig, plot_path)
        notes.append(f"plot written to {plot_path}")
    _print_comparison(fmt, frame, records, pair, pair_note, notes, metric, split, tracking_uri)


def _compare_pair(records: list[RunRecord], paired: bool | None, tracking_uri: str | None, split: str,
                  n_resamples: int, confidence: float, seed: int,
                  notes: list[str]) -> tuple["PairedComparison | None", str | None]:
    """The paired comparison of two runs (by default whenever there are two), or None and why
    not (--paired: a failure exits instead)."""
    pair: PairedComparison | None = None
    pair_note: str | None = None
    if paired is None:
        want = len(records) == 2
    else:
        want = paired
        if paired and len(records) != 2:
            _fail(f"--paired needs exactly two runs, got {len(records)}", 2)
    if want:
        a, b = records
        try:
            check_same_classes_tags(a, b)
            inputs = [load_pair_inputs(r, tracking_uri, split) for r in (a, b)]
            pair = paired_comparison(inputs[0][0], inputs[1][0], (a.label, b.label), n_resamples, confidence, seed,
                                     label_sets=(inputs[0][1], inputs[1][1]), unit=inputs[0][2])
            if a.tags.get(TAG_DIGEST) and b.tags.get(TAG_DIGEST) and a.tags[TAG_DIGEST] != b.tags[TAG_DIGEST]:
                notes.append("the two runs' dataset digests differ although their test images match")
        except (PairingError, LookupError, ValueError) as exc:
            if paired:
                _fail(str(exc).strip("'\""))
            pair_note = str(exc).strip("'\"")
    return pair, pair_note


def _print_comparison(fmt: str, frame: pd.DataFrame, records: list[RunRecord], pair: "PairedComparison | None",
                      pair_note: str | None, notes: list[str], metric: str, split: str,
                      tracking_uri: str | None) -> None:
    """The comparison in ``fmt`` on stdout; the notes on stderr."""
    from .. import tracking

    if fmt == "json":
        payload = {"split": split, "metric": metric, "tracking_uri": tracking.resolve_tracking_uri(tracking_uri),
                   "runs": [{"run_id": r.run_id, "run_name": r.run_name, "plugin": r.plugin, "status": r.status,
                             "params": {k: v for k, v in r.params.items()},
                             "metrics": {k[len(split) + 1:]: v for k, v in r.metrics.items()
                                         if k.startswith(f"{split}_")}}
                            for r in records],
                   "paired": pair.as_dict() if pair else None,
                   "paired_skipped": pair_note}
        click.echo(json.dumps(_jsonable(payload), indent=2))
    elif fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
        if pair is not None:
            notes.append("the paired comparison is shown by --format table, markdown or json")
    else:
        table = display_table(frame, _metric_order(metric, frame.columns))
        markdown = fmt == "markdown"
        click.echo(render_markdown(table) if markdown else render_text(table))
        if pair is not None:
            click.echo()
            click.echo(paired_text(pair, markdown))
        elif pair_note:
            click.echo()
            click.echo(pair_note)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if fmt in ("json", "csv") and pair_note:
        click.echo(f"note: {pair_note}", err=True)


def _metric_order(metric: str, columns: Iterable[str]) -> list[str]:
    summary = summary_metrics(columns)
    return summary if metric in summary else [metric, *summary]
