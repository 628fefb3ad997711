"""The study's report: ``derma report``'s (results with intervals, paired tests against the
baseline, calibration, subgroups, figures, configs) over the study's finished cells, with two
sections of the study's own: the mean and spread across seeds beside each run's interval, and the
table of cells (what ran, what failed and why, what is missing)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..report import Report
from .execute import cells_frame
from .planning import PlannedCell
from .spec import Study

#: Metrics summarised across seeds (besides the study's headline metric), when the runs logged them.
SEED_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def seed_table(planned: list[PlannedCell], frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per configuration (cells that differ by seed only) with two or more finished
    seeds: per metric the mean ± sample SD across seeds with their range, and for the first
    metric (the headline) each seed's value with the interval its run logged. ``frame`` is
    :func:`~derma_core.evaluation.records.runs_frame`'s (unprefixed metrics, ``run_id``)."""
    from ..evaluation.tables import metric_cell

    rows_by_run = {str(r["run_id"]): r for _, r in frame.iterrows()}
    groups: dict[str, list[tuple[PlannedCell, pd.Series]]] = {}
    totals: dict[str, int] = {}
    for pc in planned:
        if pc.cell.seed is None:
            continue
        totals[pc.cell.group] = totals.get(pc.cell.group, 0) + 1
        row = rows_by_run.get(pc.done.info.run_id) if pc.done is not None else None
        if row is not None:
            groups.setdefault(pc.cell.group, []).append((pc, row))
    rows = []
    for group, members in groups.items():
        if len(members) < 2:
            continue
        out: dict[str, Any] = {"configuration": group, "dataset": members[0][0].cell.dataset,
                               "seeds": f"{len(members)} of {totals[group]}"}
        for i, m in enumerate(metrics):
            values = [float(r[m]) for _, r in members if m in r and r[m] is not None and not pd.isna(r[m])]
            if not values:
                continue
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
            out[f"{m} mean ± SD (range)"] = f"{np.mean(values):.3f} ± {sd:.3f} ({min(values):.3f} to {max(values):.3f})"
            if i == 0:
                out[f"{m} per seed [interval]"] = "; ".join(f"seed {pc.cell.seed}: {metric_cell(r, m)}"
                                                          for pc, r in members)
        rows.append(out)
    return pd.DataFrame(rows)


def study_metrics(study: Study) -> list[str]:
    return list(dict.fromkeys([study.report.metric, *SEED_METRICS]))


def _cells_display(planned: list[PlannedCell], study: Study) -> pd.DataFrame:
    frame = cells_frame(planned, study.report.split, study.report.metric)
    frame["run_id"] = [str(v)[:8] for v in frame["run_id"]]
    return frame.drop(columns=["identity", "plugin"]).rename(columns={"run_id": "run"})


def make_sections(study: Study, planned: list[PlannedCell], frame: pd.DataFrame) -> tuple[list, list]:
    """(sections to put after the report's first, sections to put at its end), in the report's
    ``(heading, [(kind, payload)])`` form."""
    seeds = seed_table(planned, frame, study_metrics(study))
    early: list = []
    if len(seeds):
        early.append(("Across seeds", [
            ("text", "Each configuration run with several seeds: the mean and sample standard deviation of each "
                     "metric across its seeds (the spread from training randomness) with their range, and beside "
                     "them each seed's own value of the headline metric with the bootstrap interval its run "
                     "logged (the uncertainty from the finite test set)."),
            ("table:seeds", seeds)]))
    done = sum(pc.done is not None for pc in planned)
    failed = sum(pc.done is None and pc.last is not None and pc.last.info.status != "RUNNING" for pc in planned)
    missing = len(planned) - done
    late = [("Study cells", [
        ("text", f"Study {study.name} ({study.path.name}): {len(planned)} cells, {done} done, {missing} not done"
                 f"{f' ({failed} with a failed or stopped last attempt)' if failed else ''}. A cell is done when a "
                 "FINISHED run in the store has its identity (its resolved config, code version and data digest); "
                 "`derma study FILE` runs the rest."),
        ("table:cells", _cells_display(planned, study))])]
    return early, late


def write_study_report(study: Study, planned: list[PlannedCell], uri: str, out: str | Path,
                       parent: Any = None) -> tuple[Path, Path] | None:
    """Write the report of the study's finished cells to ``out`` (HTML) and its Markdown twin,
    log both on the parent run (``parent``, a Tracker) with the across-seeds table
    (``study_summary.csv``); None when no cell is done yet."""
    from .. import report as report_mod
    from .. import tracking

    run_ids = [pc.done.info.run_id for pc in planned if pc.done is not None]
    if not run_ids:
        return None
    baseline = next((pc.done.info.run_id for pc in planned if pc.name == study.baseline and pc.done is not None), None)
    title = study.report.title or study.title or f"derma study {study.name}"
    rep = report_mod.build_report(run_ids, uri=uri, baseline=baseline, split=study.report.split,
                                  n_resamples=study.report.bootstrap, title=title)
    early, late = make_sections(study, planned, rep.frame)
    full = StudyReport(**{f.name: getattr(rep, f.name) for f in dataclasses.fields(rep)},
                       study_early=early, study_late=late)
    html_path, md_path = report_mod.write_report(full, out)
    if parent is not None:
        parent.log_artifact(html_path, "report")
        parent.log_artifact(md_path, "report")
        figures = html_path.parent / f"{html_path.stem}_files"
        if figures.is_dir():
            parent.log_artifacts(figures, f"report/{figures.name}")
        seeds = seed_table(planned, rep.frame, study_metrics(study))
        if len(seeds):
            parent.log_text(tracking.table_csv(seeds), "study_summary.csv")
    return html_path, md_path


@dataclasses.dataclass
class StudyReport(Report):
    """``derma report``'s report with the study's sections: the across-seeds table right after
    the report's first section (its results), the cells table at the end."""

    study_early: list = dataclasses.field(default_factory=list)
    study_late: list = dataclasses.field(default_factory=list)

    def sections(self):
        out = super().sections()
        return out[:1] + self.study_early + out[1:] + self.study_late
