"""What ``derma compare`` shows: runs side by side (:func:`display_table`, sorted by
:func:`sort_runs`) and a paired comparison of two of them as text (:func:`paired_text`).

Plain functions on the DataFrame of :func:`~.records.runs_frame` and on
:class:`~.paired.PairedComparison`, tested on constructed cases. The runs are read in
:mod:`.records`, the statistics are in :mod:`.paired`, the cells and renderers in :mod:`.tables`,
and the command in :mod:`derma_core.cli.compare`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import pandas as pd

from .paired import PairedComparison
from .records import key_params
from .tables import metric_cell, missing, number, render_markdown, render_text, run_label, text_cell

#: Metrics shown first in the side-by-side table (when at least one run has them), in this order;
#: then the focus class's and each grouping's metrics the runs have (:func:`summary_metrics`),
#: then :data:`SUMMARY_TAIL`.
SUMMARY_HEAD = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auroc")
SUMMARY_TAIL = ("brier", "ece", "invalid_rate")
#: Metrics for which lower is better (sorting).
LOWER_IS_BETTER = {"brier", "ece", "invalid_rate", "invalid_count"}
#: Metric families that repeat a grouping's or class's metric per subgroup / method: not summary metrics.
_NOT_SUMMARY = ("subgroup_", "conformal_", "calibrated_", "selective_")


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


def sort_runs(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Best run first on ``metric`` (lower first for brier, ece, invalid_rate); missing last."""
    if metric not in frame:
        return frame
    return frame.sort_values(metric, ascending=metric in LOWER_IS_BETTER, na_position="last", kind="stable")


def display_table(frame: pd.DataFrame, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """The side-by-side table as strings: run, plugin, differing key params, metrics with
    intervals (default :func:`summary_metrics`); a ``classes`` column (how many) when the runs
    were evaluated on different label sets."""
    metrics = summary_metrics(frame.columns) if metrics is None else metrics
    shown = [m for m in metrics if m in frame.columns and frame[m].notna().any()]
    params = key_params(frame)
    out = pd.DataFrame({"run": [run_label(r) for _, r in frame.iterrows()], "plugin": frame["plugin"].astype(str)})
    if (frame["status"] != "FINISHED").any():
        out["status"] = frame["status"].astype(str)
    if "classes" in frame and frame["classes"].dropna().astype(str).nunique() > 1:
        out["classes"] = [_n_classes(v) for v in frame["classes"]]
    for p in params:
        out[p] = [text_cell(v) for v in frame[p]]
    for m in shown:
        out[m] = [metric_cell(r, m) for _, r in frame.iterrows()]
    return out.reset_index(drop=True)


def _n_classes(codes: Any) -> str:
    return "-" if missing(codes) else str(len(str(codes).split(",")))


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
        rows.append({"metric": m, "A": number(d.a), "B": number(d.b), "A - B": "-" if math.isnan(d.diff) else f"{d.diff:+.3f}",
                     f"{pct} CI": ci, "verdict": verdict})
    return pd.DataFrame(rows)


def paired_text(result: PairedComparison, markdown: bool = False) -> str:
    """The paired comparison for a reader: what was compared, :func:`paired_table`, McNemar's test."""
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


def metric_order(metric: str, columns: Iterable[str]) -> list[str]:
    """The side-by-side table's metrics: :func:`summary_metrics`, led by ``metric`` when it is not among them."""
    summary = summary_metrics(columns)
    return summary if metric in summary else [metric, *summary]
