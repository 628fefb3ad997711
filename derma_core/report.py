"""``derma report``: one self-contained HTML file (and a Markdown twin) of logged runs.

Everything is READ back from MLflow: the metrics each run logged, its tables
(``tables/test_*.csv``), figures (``figures/test_*.png``), ``config.yaml``, the dataset digest
and the run's label set (``label_set.json``; for runs logged before it, HAM10000's when the
predictions table fits it, else the table's distinct labels). Each run is shown with its own
classes: the per-class tables come one per label set, and paired tests are only made between
runs over the same classes and the same images (the report says why otherwise).
No metric a run logged is recomputed; the only numbers computed here are the paired tests
against the baseline run, which no single run can log (they come from
:func:`derma_core.evaluation.paired.paired_comparison` on the two runs' predictions tables).

The HTML embeds its figures as base64 PNGs, has inline CSS only, no script, and a
Content-Security-Policy that forbids any fetch, so it renders the same offline, in a supplement.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import tracking
from .evaluation.compare import paired_table, summary_metrics
from .evaluation.paired import GROUP_COLUMNS, PairingError, paired_comparison, table_label_set
from .evaluation.records import (RunRecord, get_record, group_unit, key_params, load_records, predictions_artifact,
                                 runs_frame)
from .evaluation.tables import (count, describe_classes, metric_cell, number, render_html, render_markdown, run_label,
                                text_cell)
from .labels import LabelSet

#: Figures shown per run, in this order (artifact ``figures/<split>_<name>.png``) and their captions.
FIGURES = (
    ("confusion_matrix_normalized", "Confusion matrix (row-normalised)"),
    ("per_class", "Per-class recall and F1"),
    ("reliability_diagram", "Reliability diagram (as predicted)"),
    ("calibrated_reliability_diagram", "Reliability diagram after scaling fitted on the calibration split"),
    ("risk_coverage", "Risk-coverage curve"),
    ("subgroups", "Balanced accuracy (classes present) per subgroup"),
)
#: Tables read per run (artifact ``tables/<split>_<name>.csv``).
TABLES = ("subgroups", "subgroup_gaps", "conformal", "conformal_per_class", "conformal_subgroups")
CALIBRATION_METRICS = ("ece", "classwise_ece", "brier", "nll", "calibrated_ece", "calibrated_classwise_ece",
                       "calibrated_brier", "calibrated_nll")
SELECTIVE_METRICS = ("selective_aurc", "selective_eaurc")


@dataclass
class RunReport:
    """What the report shows of one run, as logged."""

    record: RunRecord
    config_text: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    #: The classes it was evaluated on (None when neither label_set.json nor a predictions table exists).
    label_set: LabelSet | None = None
    #: What its groups are (lesions, patients, images), from dataset.json.
    unit: str = "groups"


def load_run_report(record: RunRecord, uri: str | None, split: str = "test") -> RunReport:
    """Download the artifacts the report shows (not the model) of one run."""
    import json

    rep = RunReport(record)
    with tracking.run_artifacts(record.run_id, uri, (None, "figures", "tables")) as fetch:
        if (p := fetch("config.yaml")) is not None:
            rep.config_text = p.read_text(encoding="utf-8")
        if (p := fetch("dataset.json")) is not None:
            rep.dataset = json.loads(p.read_text(encoding="utf-8"))
        if (p := fetch("label_set.json")) is not None:
            rep.label_set = LabelSet.from_dict(json.loads(p.read_text(encoding="utf-8")))
        for name, _ in FIGURES:
            if (p := fetch(f"figures/{split}_{name}.png")) is not None:
                rep.figures[name] = p.read_bytes()
        for name in TABLES:
            if (p := fetch(f"tables/{split}_{name}.csv")) is not None:
                rep.tables[name] = tracking.read_table_csv(p)
        if (p := fetch(predictions_artifact(split))) is not None:
            rep.predictions = tracking.read_table_csv(p)
    if rep.label_set is None and rep.predictions is not None:
        rep.label_set = table_label_set(rep.predictions)
    rep.unit = group_unit(rep.dataset)
    return rep


def select_runs(run_ids: Sequence[str], experiment: str | None, uri: str | None, split: str) -> list[RunRecord]:
    """The runs to report: the given ids in order, or every finished run of the experiment
    that logged ``<split>_macro_f1`` (oldest first, so the order is stable as runs are added)."""
    records, _ = load_records(run_ids, experiment, uri, split, "macro_f1")
    return records if run_ids else records[::-1]


# -- the tables (plain DataFrames of strings, shared by the HTML and the Markdown) -------------
#: The results table's metric columns: (header, metric, with its interval).
RESULT_METRICS = (("accuracy [CI]", "accuracy", True), ("balanced accuracy [CI]", "balanced_accuracy", True),
                  ("macro-F1 [CI]", "macro_f1", True), ("AUROC", "macro_auroc", False),
                  ("invalid rate", "invalid_rate", False))


def evaluated_counts(rep: "RunReport | None", row: pd.Series) -> tuple[Any, Any]:
    """(images, groups) of the evaluated split: from the run's predictions table (its rows and
    distinct ``group_id``), else images as the sum of the logged per-class supports."""
    preds = rep.predictions if rep is not None else None
    if preds is not None and len(preds):
        column = next((c for c in GROUP_COLUMNS if c in preds.columns), None)
        return len(preds), (preds[column].astype(str).nunique() if column else None)
    supports = [v for k, v in row.items() if isinstance(k, str) and k.startswith("support_") and not pd.isna(v)]
    return (sum(supports) if supports else None), None


def results_table(frame: pd.DataFrame, runs: Sequence["RunReport | None"] | None = None,
                  split: str = "test") -> pd.DataFrame:
    """The headline table, one row per run: run, backend, model, dataset (and its number of
    classes), the evaluated images and groups (lesions / patients), accuracy, balanced accuracy
    and macro-F1 with their intervals, AUROC (macro one-vs-rest) and the invalid rate ("-" for a
    closed-set backend, which cannot give an invalid answer). Grouped metrics are in
    :func:`grouped_table`, configuration differences in :func:`config_diff_table`, per-class
    results in :func:`per_class_tables`."""
    runs = list(runs) if runs is not None else [None] * len(frame)
    rows = []
    for (_, r), rep in zip(frame.iterrows(), runs):
        dataset = r.get("dataset") if isinstance(r.get("dataset"), str) and r.get("dataset") else "-"
        if rep is not None and rep.label_set is not None:
            dataset = f"{dataset} ({len(rep.label_set)} classes)"
        images, groups = evaluated_counts(rep, r)
        unit = rep.unit if rep is not None else "groups"
        model = r.get("model")
        row = {"run": run_label(r), "backend": str(r.get("plugin") or "-"),
               "model": text_cell(model),
               "dataset": dataset, f"{split} images": count(images),
               f"{split} groups": f"{count(groups)} {unit}" if groups is not None else "-"}
        for header, metric, ci in RESULT_METRICS:
            row[header] = (metric_cell(r, metric) if metric in frame.columns else "-") if ci else number(r.get(metric))
        rows.append(row)
    return pd.DataFrame(rows)


def grouped_table(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Each grouping's sensitivity and specificity with intervals and AUROC (e.g. malignant vs
    benign), and the focus class's sensitivity at fixed specificity; None when no run has any."""
    summary = summary_metrics(frame.columns)
    names = [m for m in summary if m.endswith(("_sensitivity", "_specificity", "_auroc")) and m != "macro_auroc"
             or "_sensitivity_at_spec" in m]
    if not names:
        return None
    out = pd.DataFrame({"run": [run_label(r) for _, r in frame.iterrows()]})
    for m in names:
        with_ci = m.endswith(("_sensitivity", "_specificity"))
        out[m + (" [CI]" if with_ci else "")] = [metric_cell(r, m) if with_ci else number(r.get(m))
                                                 for _, r in frame.iterrows()]
    return out


def config_diff_table(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The curated params whose values differ between the runs (one column per such key); None
    for a single run or when every run has the same configuration."""
    if len(frame) < 2:
        return None
    keys = key_params(frame)
    if not keys:
        return None
    out = pd.DataFrame({"run": [run_label(r) for _, r in frame.iterrows()]})
    for p in keys:
        out[p] = [text_cell(v) for v in frame[p]]
    return out


def per_class_tables(runs: Sequence["RunReport"], frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One (heading, table) per distinct set of classes among the runs: a row per class (code,
    name, support) and each run's recall and F1 on it, as logged."""
    by_codes: dict[tuple[str, ...], list[int]] = {}
    for i, rep in enumerate(runs):
        if rep.label_set is not None:
            by_codes.setdefault(rep.label_set.codes, []).append(i)
    out = []
    for codes, members in by_codes.items():
        label_set = runs[members[0]].label_set
        assert label_set is not None
        table = pd.DataFrame({"class": list(codes), "name": list(label_set.names)})
        rows = [frame.iloc[i] for i in members]
        # the true images per class: the same for runs on the same split; the first run that logged it
        supports = [[number(r.get(f"support_{c}"), 0) for r in rows] for c in codes]
        table["support"] = [next((v for v in values if v != "-"), "-") for values in supports]
        for i, row in zip(members, rows):
            name = runs[i].record.label
            table[f"{name} recall"] = [number(row.get(f"recall_{c}")) for c in codes]
            table[f"{name} F1"] = [number(row.get(f"f1_{c}")) for c in codes]
        names = ", ".join(runs[i].record.label for i in members)
        out.append((f"{describe_classes(label_set)}: {names}", table))
    return out


def metrics_table(frame: pd.DataFrame, names: Sequence[str], extra: dict[str, list[str]] | None = None) -> pd.DataFrame:
    shown = [m for m in names if m in frame.columns and frame[m].notna().any()]
    out = pd.DataFrame({"run": [run_label(r) for _, r in frame.iterrows()]})
    for key, values in (extra or {}).items():
        out[key] = values
    for m in shown:
        out[m] = [number(v) for v in frame[m]]
    return out


def subgroup_display(table: pd.DataFrame, unit: str = "groups") -> pd.DataFrame:
    """A run's subgroup table for display; ``unit`` names its resampled groups (lesions, patients).

    ``flag`` says when a group's numbers need care: ``small (< N images)`` (left out of the
    worst group and gap) and ``one class: read accuracy`` (macro-F1 means nothing there and is
    not given). Balanced accuracy is over the classes present in the group; ``recall of present
    classes`` lists them (runs logged before it show ``-``)."""
    names = [c for c in table.columns if f"{c}_ci_low" in table.columns] or ["accuracy", "balanced_accuracy",
                                                                             "macro_f1"]
    rows = []
    for r in table.to_dict("records"):
        single = _yes(r.get("single_class"))
        flags = []
        if _yes(r.get("small")):
            limit = r.get("min_count")
            flags.append(f"small (< {number(limit, 0)} images)" if number(limit, 0) != "-" else "small")
        if single:
            flags.append("one class: read accuracy")
        row = {"column": r["column"], "group": r["group"], "images": r["images"],
               unit: r.get("units", r.get("lesions", "-")), "flag": "; ".join(flags)}
        if "classes_present" in r:
            row["classes present"] = number(r["classes_present"], 0)
        for m in names:
            header = {"balanced_accuracy": "balanced accuracy (present classes)"}.get(m, m)
            row[header] = "- (one class)" if single and m == "macro_f1" else metric_cell(r, m)
        if "present_recall" in r:
            text = r["present_recall"]
            row["recall of present classes"] = text if isinstance(text, str) and text else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def gaps_display(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in table.to_dict("records"):
        rows.append({"column": r["column"], "metric": r["metric"], "worst group": r.get("worst_group") or "-",
                     "worst": number(r.get("worst")), "best group": r.get("best_group") or "-", "best": number(r.get("best")),
                     "gap [CI]": metric_cell({"gap": r.get("gap"), "gap_ci_low": r.get("gap_ci_low"),
                                        "gap_ci_high": r.get("gap_ci_high")}, "gap")})
    return pd.DataFrame(rows)


def _yes(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "1.0")


def conformal_display(table: pd.DataFrame) -> pd.DataFrame:
    """A run's conformal summary: a row per method, coverage with its interval and the range a
    correct calibration of this size leaves (runs logged before intervals show the point only)."""
    rows = []
    for r in table.to_dict("records"):
        row = {"method": r["method"], "alpha": number(r.get("alpha")), "target": number(r.get("target_coverage")),
               "coverage [CI]": metric_cell(r, "coverage")}
        if "expected_low" in r:
            row["expected range"] = (f"{number(r['expected_low'])}-{number(r['expected_high'])}"
                                     if number(r["expected_low"]) != "-" else "-")
        for c in ("mean_set_size", "singleton_rate", "empty_rate", "qhat"):
            if c in r:
                row[c] = number(r[c])
        if "classes_below_target" in r:
            row["classes below target"] = number(r["classes_below_target"], 0)
        if "calibration_images" in r:
            row["calibration images"] = number(r["calibration_images"], 0)
        if "note" in r:
            row["note"] = r["note"] if isinstance(r["note"], str) and r["note"] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def conformal_per_class_display(per_class: pd.DataFrame, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-class coverage of every method beside its marginal coverage (the first row): a row
    per class, a column per method with ``coverage [CI]``, flagged when the whole interval is
    below target, or saying the class had too few calibration images for a threshold."""
    methods = list(dict.fromkeys(per_class["method"]))
    by = {(r["method"], r["label"]): r for r in per_class.to_dict("records")}
    marginal = {r["method"]: r for r in summary.to_dict("records")} if summary is not None else {}
    rows = [{"class": "all images (marginal)", "test images": number(per_class.groupby("method")["images"].sum().iloc[0], 0),
             "calibration images": number(next(iter(marginal.values()), {}).get("calibration_images"), 0),
             **{m: metric_cell(marginal[m], "coverage") if m in marginal else "-" for m in methods}}]
    for label in dict.fromkeys(per_class["label"]):
        row = {"class": label, "test images": number(by[(methods[0], label)].get("images"), 0),
               "calibration images": number(by[(methods[0], label)].get("calibration_images"), 0)}
        for m in methods:
            r = by.get((m, label), {})
            text = metric_cell(r, "coverage")
            if _yes(r.get("below_target")):
                text += " \u26a0 below target"
            note = r.get("note")
            if isinstance(note, str) and note.startswith("too few"):
                text += " (no threshold: in every set)"
            row[m] = text
        rows.append(row)
    return pd.DataFrame(rows)


# -- rendering ------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1320px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.1em;overflow-wrap:anywhere}p{overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0 1.2em}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#f3f3f3}
table.results td,table.grouped td,table.config-diff td{white-space:nowrap}
table.results td:first-child,table.grouped td:first-child,table.config-diff td:first-child{white-space:normal;
min-width:10em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top;max-width:100%}
figcaption{font-size:.85em;color:#555}
img{max-width:min(560px,100%);height:auto;border:1px solid #ddd}pre{background:#f7f7f7;padding:.6em;overflow:auto;
font-size:.8em}.note{color:#555;font-size:.9em}
@media print{
@page{margin:12mm}
body{max-width:none;margin:0;padding:0;font-size:9pt}
h2{margin-top:1.2em}h2,h3{break-after:avoid;page-break-after:avoid}
.scroll{overflow:visible}
table{font-size:7.5pt;width:100%}
table.results td,table.grouped td,table.config-diff td{white-space:normal}
thead{display:table-header-group}
tr,figure,img,pre{break-inside:avoid;page-break-inside:avoid}
figure{max-width:48%}img{max-width:100%}
pre{white-space:pre-wrap;overflow:visible}
}
"""

#: The run param ``calibration_source`` in words (see :mod:`derma_core.data.calibration_split`).
CALIBRATION_SOURCES = {"carved": "calibration split (carved from val)",
                       "val_unselected": "all of val (nothing selected on it)",
                       "val_reused": "all of val, reused after selection (weaker)"}


@dataclass
class Report:
    title: str
    runs: list[RunReport]
    baseline: RunReport | None
    frame: pd.DataFrame
    paired: list[tuple[RunReport, Any, str | None]]  # (run, PairedComparison or None, why not)
    split: str = "test"

    def sections(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        """(heading, [(kind, payload)]) with kinds text / table:<class> / figure / pre / h3."""
        from .evaluation.crossdataset import cross_dataset_sections  # runs evaluated on other datasets too

        out = self._results_section() + self._config_diff_section()
        out += cross_dataset_sections([r.record for r in self.runs], self.split)
        for part in (self._per_class_section, self._paired_section, self._calibration_section,
                     self._selective_section, self._conformal_section, self._subgroups_section,
                     self._figures_section, self._runs_section):
            out += part()
        return out

    # each of these is a list of zero or one (heading, [(kind, payload)]) sections

    def _results_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        n = len(self.runs)
        intro = (f"{n} run{'s' if n != 1 else ''}, evaluated on the {self.split} split, as each run logged them. "
                 "[CI]: the group-level (lesion or patient, as each dataset groups its images) bootstrap percentile "
                 "interval (95% unless the run set evaluation.confidence). AUROC: macro one-vs-rest, for runs with "
                 "class probabilities. Invalid rate: the share of free-text answers that name no single class "
                 "(\"-\" for a backend that cannot give one).")
        items: list[tuple[str, Any]] = [("text", intro),
                                         ("table:results", results_table(self.frame, self.runs, self.split))]
        grouped = grouped_table(self.frame)
        if grouped is not None:
            items += [("text", "Grouped metrics take the positive group of a grouping of the classes (e.g. malignant) "
                               "against the rest; sensitivity at a fixed specificity is the focus class's."),
                      ("table:grouped", grouped)]
        return [("Results", items)]

    def _config_diff_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        diff = config_diff_table(self.frame)
        if diff is None:
            return []
        return [("Configuration differences", [("text", "The curated params whose values differ between the "
                                                        "runs (\"-\": not set for that backend); each run's "
                                                        "full config.yaml is at the end."),
                                               ("table:config-diff", diff)])]

    def _per_class_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        class_items: list[tuple[str, Any]] = []
        for heading, table in per_class_tables(self.runs, self.frame):
            class_items += [("h3", heading), ("table:per-class", table)]
        if not class_items:
            return []
        return [("Per-class results", [("text", "Recall and F1 per class as each run logged them, one table "
                                                "per set of classes.")] + class_items)]

    def _paired_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        if self.baseline is None or not self.paired:
            return []
        items: list[tuple[str, Any]] = [("text", f"Each run (A) against the baseline {self.baseline.record.label} (B), "
                                                "on the same images and classes: paired group-level bootstrap of "
                                                "A - B, and McNemar's exact test on per-image correctness.")]
        for rep, pair, why in self.paired:
            items.append(("h3", f"{rep.record.label} vs {self.baseline.record.label}"))
            if pair is None:
                items.append(("text", f"no paired test: {why}"))
                continue
            items.append(("table:paired", paired_table(pair)))
            mc = pair.mcnemar
            items.append(("text", f"{pair.n_images} images, {pair.n_groups} {pair.unit}, {pair.n_resamples} resamples. "
                                  f"McNemar: A right & B wrong {mc.a_only}, A wrong & B right {mc.b_only}, "
                                  f"exact p = {mc.p_value:.3g}."))
        return [("Paired tests against the baseline", items)]

    def _calibration_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        extra = {"temperature": [r.record.params.get("calibration_temperature", "-") for r in self.runs],
                 "fitted on": [CALIBRATION_SOURCES.get(str(r.record.params.get("calibration_source")), "-")
                               for r in self.runs],
                 "calibration images": [str(r.record.params.get("calibration_images", "-")) for r in self.runs]}
        cal = metrics_table(self.frame, CALIBRATION_METRICS, extra)
        if cal.shape[1] <= 4:
            return []
        return [("Calibration", [("text", "ECE, classwise ECE, Brier and NLL as predicted and after temperature "
                                          "(or vector) scaling fitted on the calibration split: images of val "
                                          "that neither training nor model selection saw, carved from val by "
                                          "lesion or patient and class before fitting (all of val for a "
                                          "backend that selects nothing on val, e.g. zero-shot). Never fitted "
                                          "on the evaluated split. \"fitted on\" says which images each run "
                                          "used."),
                                 ("table:calibration", cal)])]

    def _selective_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        refer = [c for c in self.frame.columns if c.startswith("selective_accuracy_refer")]
        sel = metrics_table(self.frame, list(SELECTIVE_METRICS) + refer
                            + [c.replace("accuracy", "coverage") for c in refer])
        if sel.shape[1] <= 1:
            return []
        return [("Selective prediction", [("text", "Area under the risk-coverage curve (lower is better) and "
                                                   "the accuracy on the cases kept when the least confident "
                                                   "share is referred."), ("table:selective", sel)])]

    def _conformal_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        conf_items: list[tuple[str, Any]] = []
        for rep in self.runs:
            if "conformal" in rep.tables:
                conf_items += [("h3", rep.record.label), ("table:conformal", conformal_display(rep.tables["conformal"]))]
                if "conformal_per_class" in rep.tables and len(rep.tables["conformal_per_class"]):
                    conf_items.append(("table:conformal-per-class",
                                       conformal_per_class_display(rep.tables["conformal_per_class"],
                                                                   rep.tables["conformal"])))
                if "conformal_subgroups" in rep.tables:
                    sub = rep.tables["conformal_subgroups"].copy()
                    for c in ("coverage", "mean_set_size"):
                        sub[c] = [number(v) for v in sub[c]]
                    sub["small"] = ["yes" if str(v).lower() in ("true", "1") else "" for v in sub["small"]]
                    conf_items.append(("table:conformal-subgroups", sub))
        if not conf_items:
            return []
        return [("Conformal prediction sets", [("text", "Split-conformal sets calibrated on images of val that "
                                                        "neither training nor model selection used; coverage on "
                                                        "the evaluated split with Clopper-Pearson intervals over "
                                                        "lesions or patients. The marginal methods (lac, aps) "
                                                        "promise 1 - alpha coverage only on average over images, "
                                                        "so a rare class can fall far below it, while the "
                                                        "classwise methods fit one threshold per class and "
                                                        "promise it for every class; a class is flagged when its "
                                                        "whole interval lies below the target.")] + conf_items)]

    def _subgroups_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        sub_items: list[tuple[str, Any]] = []
        for rep in self.runs:
            if "subgroups" in rep.tables:
                sub_items += [("h3", rep.record.label),
                              ("table:subgroups", subgroup_display(rep.tables["subgroups"], rep.unit))]
                if "subgroup_gaps" in rep.tables:
                    sub_items.append(("table:gaps", gaps_display(rep.tables["subgroup_gaps"])))
        if not sub_items:
            return []
        return [("Subgroups", [("text", "Metrics per metadata group with group-level intervals. Balanced "
                                        "accuracy is the mean recall over the classes present in the group, "
                                        "and each present class's recall is listed. flag: small groups "
                                        "(fewer images than evaluation.subgroups.min_count) are shown but "
                                        "left out of the worst group and gap; in a group with one true class "
                                        "macro-F1 means nothing (each wrong answer adds a class with F1 0) "
                                        "and is not given: read accuracy, that class's recall.")]
                 + sub_items)]

    def _figures_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        fig_items: list[tuple[str, Any]] = []
        for rep in self.runs:
            figs = [(name, caption, rep.figures[name]) for name, caption in FIGURES if name in rep.figures]
            if figs:
                fig_items.append(("h3", rep.record.label))
                fig_items += [("figure", (name, caption, data, rep.record.run_id)) for name, caption, data in figs]
        return [("Figures", fig_items)] if fig_items else []

    def _runs_section(self) -> list[tuple[str, list[tuple[str, Any]]]]:
        cfg_items: list[tuple[str, Any]] = []
        for rep in self.runs:
            digest = rep.record.tags.get("derma.dataset_digest") or rep.dataset.get("digest") or "-"
            synthetic = rep.record.tags.get("derma.synthetic") or str(rep.dataset.get("synthetic", "-")).lower()
            cfg_items += [("h3", rep.record.label),
                          ("text", f"run id {rep.record.run_id}; dataset {rep.dataset.get('name', '-')}, digest {digest}"
                                   f", classes {describe_classes(rep.label_set) if rep.label_set else '-'}"
                                   f", synthetic {synthetic}; derma {rep.record.tags.get('derma.version', '-')}, "
                                   f"git {rep.record.tags.get('derma.git_sha') or '-'}"),
                          ("pre", rep.config_text or "(no config.yaml logged)")]
        return [("Runs: configuration and data", cfg_items)]

    def html(self) -> str:
        parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
                 "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
                 "style-src 'unsafe-inline'\">",
                 f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for heading, items in self.sections():
            parts.append(f"<section><h2>{html.escape(heading)}</h2>")
            for kind, payload in items:
                if kind == "text":
                    parts.append(f'<p class="note">{html.escape(payload)}</p>')
                elif kind == "h3":
                    parts.append(f"<h3>{html.escape(payload)}</h3>")
                elif kind == "pre":
                    parts.append(f"<details><summary>config.yaml</summary><pre>{html.escape(payload)}</pre></details>")
                elif kind == "figure":
                    name, caption, data, _ = payload
                    b64 = base64.b64encode(data).decode("ascii")
                    parts.append(f'<figure class="fig-{name}"><img alt="{html.escape(caption)}" '
                                 f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>')
                elif kind.startswith("table:"):
                    parts.append(render_html(payload, kind.split(":", 1)[1]))
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def markdown(self, figure_dir: Path, link_prefix: str) -> tuple[str, dict[Path, bytes]]:
        """The Markdown twin and the PNG files it links to (under ``figure_dir``)."""
        lines = [f"# {self.title}", ""]
        files: dict[Path, bytes] = {}
        for heading, items in self.sections():
            lines += [f"## {heading}", ""]
            for kind, payload in items:
                if kind == "text":
                    lines += [payload, ""]
                elif kind == "h3":
                    lines += [f"### {payload}", ""]
                elif kind == "pre":
                    lines += ["```yaml", payload.rstrip(), "```", ""]
                elif kind == "figure":
                    name, caption, data, run_id = payload
                    fname = f"{run_id[:8]}_{name}.png"
                    files[figure_dir / fname] = data
                    lines += [f"![{caption}]({link_prefix}/{fname})", ""]
                elif kind.startswith("table:"):
                    lines += [render_markdown(payload), ""]
        return "\n".join(lines), files


def build_report(run_ids: Sequence[str] = (), experiment: str | None = None, uri: str | None = None,
                 baseline: str | None = None, split: str = "test", n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 42, title: str | None = None) -> Report:
    """Read the runs back from MLflow and assemble the report (paired tests need predictions)."""
    records = select_runs(run_ids, experiment, uri, split)
    if baseline is not None and baseline not in {r.run_id for r in records}:
        try:
            records.append(get_record(baseline, uri))
        except LookupError:
            raise LookupError(f"baseline run {baseline!r} not found in {tracking.resolve_tracking_uri(uri)}") from None
    reports = [load_run_report(r, uri, split) for r in records]
    frame = runs_frame(records, split).reset_index(drop=True)
    base = None
    if len(reports) > 1:
        base = next((r for r in reports if r.record.run_id == baseline), reports[0]) if baseline else reports[0]
    paired = []
    if base is not None:
        for rep in reports:
            if rep is base:
                continue
            if rep.predictions is None or base.predictions is None:
                paired.append((rep, None, "a predictions table is missing"))
                continue
            try:
                pair = paired_comparison(rep.predictions, base.predictions, (rep.record.label, base.record.label),
                                         n_resamples, confidence, seed, label_sets=(rep.label_set, base.label_set),
                                         unit=rep.unit)
                paired.append((rep, pair, None))
            except (PairingError, ValueError) as exc:
                paired.append((rep, None, str(exc)))
    name = title or (f"derma report: experiment {experiment}" if experiment else "derma report")
    return Report(name, reports, base, frame, paired, split)


def write_report(report: Report, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its Markdown twin ``out`` with ``.md`` (figures in ``<stem>_files/``)."""
    from .atomic import write_bytes as atomic_write_bytes, write_text as atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, report.html())
    md_path = out.with_suffix(".md")
    fig_dir = out.parent / f"{out.stem}_files"
    text, files = report.markdown(fig_dir, fig_dir.name)
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    atomic_write_text(md_path, text)
    return out, md_path

