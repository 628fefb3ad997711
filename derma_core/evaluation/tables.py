"""Table cells and table rendering, shared by ``derma compare``, ``derma report`` and the study's
report: every number, interval and run label they show is formatted here, and every table of
strings is rendered here as aligned text, a Markdown pipe table or an HTML table.

Plain functions of values and DataFrames, no I/O; a missing value (None, NaN, ``""``) is ``-``.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from ..labels import LabelSet


# -- cells -----------------------------------------------------------------------------------------
def missing(value: Any) -> bool:
    """None, a float NaN or an empty string: shown as ``-``."""
    if value is None or (isinstance(value, str) and value == ""):
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (``0.625``); ``-`` when missing; a value that is no
    number as it is."""
    if missing(value):
        return "-"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def text_cell(value: Any) -> str:
    """A value as it is (a param: ``0.0005``, ``resnet18``); ``-`` when None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def count(value: Any) -> str:
    """An integer count with thousands separators (``1,234``); ``-`` when missing."""
    return f"{int(value):,}" if isinstance(value, (int, float)) and not pd.isna(value) else "-"


def metric_cell(row: Mapping[str, Any] | pd.Series, metric: str) -> str:
    """``0.625 [0.601, 0.650]``: ``row[metric]`` with its ``<metric>_ci_low`` / ``_ci_high``
    interval (or without the interval when the row has none); ``-`` when the value is missing."""
    value, low, high = (number(row.get(key)) for key in (metric, f"{metric}_ci_low", f"{metric}_ci_high"))
    if value == "-":
        return "-"
    return f"{value} [{low}, {high}]" if low != "-" and high != "-" else value


def run_label(row: Mapping[str, Any] | pd.Series) -> str:
    """``name (abcd1234)``: a run's name and short id (the short id alone for an unnamed run)."""
    short = str(row["run_id"])[:8]
    return f"{row['run_name']} ({short})" if row.get("run_name") else short


def describe_classes(label_set: "LabelSet", limit: int = 8) -> str:
    """``akiec, bcc, ... (7 classes)``: a label set in one short line."""
    codes = list(label_set.codes)
    shown = ", ".join(codes[:limit]) + (", ..." if len(codes) > limit else "")
    return f"{shown} ({len(codes)} classes)"


# -- whole tables (DataFrames of strings) -----------------------------------------------------------
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


def render_html(table: pd.DataFrame, cls: str) -> str:
    """An HTML table of class ``cls``, escaped, in a box that scrolls when it is wide."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    # a wide table scrolls in its own box instead of widening the page
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
