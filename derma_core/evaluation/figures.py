"""Matplotlib figures for evaluation and ``derma compare``.

Figures are built on :class:`matplotlib.figure.Figure` directly rather than through pyplot:
they render with the Agg canvas whatever backend is active, need no display, never pile up in
pyplot's figure registry, and importing this module does not change the user's backend (which
would break a notebook's inline plots). The tracker saves and closes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, auc, roc_curve

from ..labels import LabelSet

#: Up to this many classes the confusion matrix shows its counts in the cells and the ROC
#: figure a legend entry per class; beyond, only colours / the focus class and groupings.
ANNOTATE_MAX = 15


def class_axis_layout(n_classes: int) -> tuple[float, float]:
    """(side of the class axis in inches, tick label font size) for K classes: 6.5 inches and
    the default font up to a dozen classes, at most 22 inches (a 7 pt font at 114 classes)."""
    k = int(n_classes)
    side = float(np.clip(3.5 + 0.2 * k, 6.5, 22.0))
    per_class = side * 72 * 0.8 / k  # points of axis per class
    return side, float(np.clip(0.6 * per_class, 4.0, 10.0))


def confusion_matrix_figure(cm: np.ndarray, codes: Sequence[str], normalize: bool,
                            n_total: int | None = None, free_text: bool | None = None) -> Figure:
    """Counts (or row-normalised rates) of a K x K confusion matrix of valid answers, ticks
    labelled with the class codes; cell values written only up to :data:`ANNOTATE_MAX` classes.

    ``free_text``: the backend can give an invalid answer (a free-text VLM); only then does the
    title say the matrix holds the valid answers only (and how many invalid ones it leaves out).
    None: inferred from ``n_total`` (some answers are missing from ``cm``)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = len(codes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {k} classes")
    n_valid = int(cm.sum())
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        fmt = ".2f"
    else:
        values = cm.astype(np.int64)
        fmt = "d"
    side, font = class_axis_layout(k)
    annotate = k <= ANNOTATE_MAX
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(values, display_labels=list(codes)).plot(
        ax=ax, values_format=fmt, cmap="Blues", colorbar=True, include_values=annotate,
        xticks_rotation="horizontal" if k <= 8 else "vertical")
    ax.tick_params(labelsize=font)
    if annotate and k > 8:
        for text in ax.texts:
            text.set_fontsize(max(5.0, font - 1))
    if normalize:
        ax.images[0].set_clim(0, 1)
    missing = n_total is not None and n_total != n_valid
    kind = "row-normalised (recall on the diagonal)" if normalize else "counts"
    title = f"Confusion matrix, {kind}, {k} classes"
    if free_text or (free_text is None and missing):
        scope = "valid answers only"
        if missing:
            scope += f": {n_valid} of {n_total}; {n_total - n_valid} invalid not shown"
        title += f"\n({scope})"
    else:
        title += f"\n({n_valid} images)"
    ax.set_title(title, fontsize=float(np.clip(side * 0.6, 10, 16)))
    return fig


def reliability_figure(table: pd.DataFrame, ece: float) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per bin, bars sized by bin count."""
    fig = Figure(figsize=(6, 6.5), layout="constrained")
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    used = table["count"] > 0
    width = float(table["bin_high"].iloc[0] - table["bin_low"].iloc[0])
    centers = (table["bin_low"] + table["bin_high"]) / 2
    ax.bar(centers[used], table["accuracy"][used], width=width, edgecolor="black", alpha=0.7,
           label="accuracy in bin")
    ax.plot(table["confidence"][used], table["accuracy"][used], "o", color="C3", markersize=4,
            label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylabel("accuracy of the top class")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram (ECE = {ece:.3f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centers, table["count"], width=width, edgecolor="black", color="C0")
    hist.set_xlabel("confidence (largest class probability)")
    hist.set_ylabel("images")
    return fig


def roc_figure(y_true: np.ndarray, probabilities: np.ndarray, label_set: LabelSet,
               focus_points: dict[float, float] | None = None) -> Figure:
    """One-vs-rest ROC curve per class, each grouping's positive group against the rest
    (P(group) = the sum of its classes' probabilities; dashed), and the focus class's
    operating points at fixed specificities. Beyond :data:`ANNOTATE_MAX` classes the per-class
    curves are thin grey lines without legend entries (the focus class and groupings keep theirs)."""
    from .metrics import group_targets

    y_true = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    k = len(label_set)
    many = k > ANNOTATE_MAX
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    ax = fig.add_subplot()
    for c, label in enumerate(label_set.codes):
        positive = y_true == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        focus = label == label_set.focus
        if many and not focus:
            ax.plot(fpr, tpr, lw=0.6, color="grey", alpha=0.35)
        else:
            ax.plot(fpr, tpr, lw=2 if focus else 1.2, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    for target in group_targets(label_set):
        truth = target.mask[y_true]
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, p[:, target.mask].sum(axis=1))
        ax.plot(fpr, tpr, "--", lw=2, color="black",
                label=f"{target.positive} ({target.grouping}) vs rest (AUC {auc(fpr, tpr):.3f})")
    for spec, sens in (focus_points or {}).items():
        if np.isfinite(sens):
            ax.plot([1 - spec], [sens], "k^", markersize=7)
            ax.annotate(f"{label_set.focus} sens {sens:.2f} @ spec {spec:.0%}", (1 - spec, sens),
                        textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    title = "ROC curves, one-vs-rest"
    if many:
        title += f" ({k} classes in grey; named: focus class and groupings)"
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8 if k <= 10 else 7)
    return fig


def per_class_figure(report: pd.DataFrame) -> Figure:
    """Recall and F1 per class as horizontal bars (a ``per_class`` table of
    :func:`~.metrics.per_class_report`), one row per class in label-set order; its height and
    font follow the number of classes."""
    k = len(report)
    side, font = class_axis_layout(k)
    fig = Figure(figsize=(7, max(3.0, side * 0.9)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(k)[::-1]
    h = 0.4
    ax.barh(y + h / 2, report["recall"].to_numpy(dtype=float), height=h, color="C0", label="recall")
    ax.barh(y - h / 2, report["f1"].to_numpy(dtype=float), height=h, color="C1", label="F1")
    support = report["support"].to_numpy()
    labels = [f"{c} (n={int(n)})" for c, n in zip(report["label"], support)] if k <= 40 else list(report["label"])
    ax.set_yticks(y, labels, fontsize=font)
    ax.set_ylim(-0.7, k - 0.3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall / F1 (classes without true images have recall 0)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Per-class recall and F1, {k} classes", fontsize=10)
    return fig


def compare_figure(names: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
                   metric: str) -> Figure:
    """Forest plot: one row per run, the metric with its confidence interval."""
    n = len(names)
    fig = Figure(figsize=(7, 1.2 + 0.45 * n), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    values = np.asarray(values, dtype=np.float64)
    lows = np.asarray(lows, dtype=np.float64)
    highs = np.asarray(highs, dtype=np.float64)
    has_ci = np.isfinite(lows) & np.isfinite(highs)
    # a percentile interval need not contain the point estimate (a small group's resamples): never a negative bar
    err = np.clip(np.vstack([np.where(has_ci, values - lows, 0), np.where(has_ci, highs - values, 0)]), 0, None)
    ax.errorbar(values, y, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=4)
    ax.set_yticks(y, list(names))
    ax.set_xlabel(metric + (" with its bootstrap interval" if has_ci.any() else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{metric} by run", fontsize=10)
    return fig



def subgroup_figure(table: pd.DataFrame, metric: str = "balanced_accuracy") -> Figure:
    """Forest plot per metadata column: each group's metric with its interval (default balanced
    accuracy over the classes present in the group, defined in every group); small groups
    hollow, single-class groups labelled ``one class``."""
    columns = list(dict.fromkeys(table["column"]))
    heights = [max(1, int((table["column"] == c).sum())) for c in columns]
    fig = Figure(figsize=(7, 1.0 + 0.32 * sum(heights) + 0.5 * len(columns)), layout="constrained")
    axes = fig.subplots(len(columns), 1, height_ratios=heights, sharex=True, squeeze=False)[:, 0]
    for ax, column in zip(axes, columns):
        part = table[table["column"] == column].reset_index(drop=True)
        y = np.arange(len(part))[::-1]
        values = part[metric].to_numpy(dtype=np.float64)
        lows = part[f"{metric}_ci_low"].to_numpy(dtype=np.float64)
        highs = part[f"{metric}_ci_high"].to_numpy(dtype=np.float64)
        ok = np.isfinite(lows) & np.isfinite(highs) & np.isfinite(values)
        # a percentile interval need not contain the point estimate (a small group's resamples): never a negative bar
        err = np.clip(np.vstack([np.where(ok, values - lows, 0), np.where(ok, highs - values, 0)]), 0, None)
        small = part["small"].to_numpy(dtype=bool)
        single = (part["single_class"].to_numpy(dtype=bool) if "single_class" in part
                  else np.zeros(len(part), dtype=bool))
        for mask, style in ((~small, {"fmt": "o", "color": "C0"}), (small, {"fmt": "o", "color": "grey", "mfc": "white"})):
            if mask.any():
                ax.errorbar(values[mask], y[mask], xerr=err[:, mask], capsize=3, **style)
        ax.set_yticks(y, [f"{g} (n={n}{', small' if s else ''}{', one class' if o else ''})" for g, n, s, o in
                          zip(part["group"], part["images"], small, single)], fontsize=8)
        ax.set_title(column, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    what = "balanced accuracy over the classes present" if metric == "balanced_accuracy" else metric
    axes[-1].set_xlabel(f"{what}, with its group-level bootstrap interval (hollow: small group)")
    return fig


def risk_coverage_figure(curve: pd.DataFrame, aurc: float) -> Figure:
    """Selective risk (error rate among the kept images) against coverage."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(curve["coverage"], curve["risk"], color="C0", lw=2)
    ax.set_xlabel("coverage (share of images the model keeps)")
    ax.set_ylabel("selective risk (error rate of kept images)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(curve["risk"].max()) * 1.1))
    ax.grid(alpha=0.3)
    ax.set_title(f"Risk-coverage curve (AURC = {aurc:.3f})", fontsize=10)
    return fig
