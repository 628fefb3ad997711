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

from ..labels import LABELS


def confusion_matrix_figure(cm: np.ndarray, normalize: bool, n_total: int | None = None) -> Figure:
    """Counts (or row-normalised rates) of a 7x7 confusion matrix of valid answers."""
    cm = np.asarray(cm, dtype=np.float64)
    n_valid = int(cm.sum())
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        fmt = ".2f"
    else:
        values = cm.astype(np.int64)
        fmt = "d"
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(values, display_labels=list(LABELS)).plot(
        ax=ax, values_format=fmt, cmap="Blues", colorbar=True)
    if normalize:
        ax.images[0].set_clim(0, 1)
    scope = "valid answers only"
    if n_total is not None and n_total != n_valid:
        scope += f": {n_valid} of {n_total}; {n_total - n_valid} invalid not shown"
    kind = "row-normalised (recall on the diagonal)" if normalize else "counts"
    ax.set_title(f"Confusion matrix, {kind}\n({scope})", fontsize=10)
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


def roc_figure(y_true: np.ndarray, probabilities: np.ndarray, mel_points: dict[float, float] | None = None) -> Figure:
    """One-vs-rest ROC curve per class, with melanoma operating points at fixed specificities."""
    y_true = np.asarray(y_true)
    fig = Figure(figsize=(7, 6.5), layout="constrained")
    ax = fig.add_subplot()
    for c, label in enumerate(LABELS):
        positive = y_true == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, c])
        ax.plot(fpr, tpr, lw=2 if label == "mel" else 1.2, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    for spec, sens in (mel_points or {}).items():
        if np.isfinite(sens):
            ax.plot([1 - spec], [sens], "k^", markersize=7)
            ax.annotate(f"mel sens {sens:.2f} @ spec {spec:.0%}", (1 - spec, sens), textcoords="offset points",
                        xytext=(6, -12), fontsize=8)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("ROC curves, one-vs-rest", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
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
    err = np.vstack([np.where(has_ci, values - lows, 0), np.where(has_ci, highs - values, 0)])
    ax.errorbar(values, y, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=4)
    ax.set_yticks(y, list(names))
    ax.set_xlabel(metric + (" with its bootstrap interval" if has_ci.any() else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{metric} by run", fontsize=10)
    return fig



def subgroup_figure(table: pd.DataFrame, metric: str = "macro_f1") -> Figure:
    """Forest plot per metadata column: each group's metric with its interval; small groups hollow."""
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
        err = np.vstack([np.where(ok, values - lows, 0), np.where(ok, highs - values, 0)])
        small = part["small"].to_numpy(dtype=bool)
        for mask, style in ((~small, {"fmt": "o", "color": "C0"}), (small, {"fmt": "o", "color": "grey", "mfc": "white"})):
            if mask.any():
                ax.errorbar(values[mask], y[mask], xerr=err[:, mask], capsize=3, **style)
        ax.set_yticks(y, [f"{g} (n={n}{', small' if s else ''})" for g, n, s in
                          zip(part["group"], part["images"], small)], fontsize=8)
        ax.set_title(column, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(f"{metric} with its lesion-level bootstrap interval (hollow: small group)")
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
