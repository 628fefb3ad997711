"""Logged runs read back for ``derma compare`` and ``derma report``: one :class:`RunRecord` per
MLflow run (its params, metrics and tags), the runs to show (:func:`load_records`), a run's
predictions table and label set for a paired test (:func:`load_pair_inputs`), and the runs as one
DataFrame (:func:`runs_frame`).

Every read goes through :mod:`derma_core.tracking` (the only module that talks to MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from .. import tracking
from .paired import PairingError, table_label_set
from .tables import describe_classes

if TYPE_CHECKING:  # pragma: no cover
    from ..labels import LabelSet

#: The columns of :func:`runs_frame` that are not metrics.
INFO_COLUMNS = ("run_id", "run_name", "plugin", "status", "dataset", "classes")


@dataclass
class RunRecord:
    """What ``derma compare`` and ``derma report`` need of one MLflow run."""

    run_id: str
    run_name: str = ""
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def plugin(self) -> str:
        return self.tags.get(tracking.TAG_PLUGIN) or self.params.get("plugin") or "?"

    @property
    def label(self) -> str:
        short = self.run_id[:8]
        return f"{self.run_name} ({short})" if self.run_name else short

    @classmethod
    def from_mlflow(cls, run: Any) -> "RunRecord":
        return cls(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                   params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags))


# -- reading runs ------------------------------------------------------------------------------------
def get_record(run_id: str, uri: str | None) -> RunRecord:
    """One run by id; a :class:`LookupError` saying where it was looked for when it is not there."""
    try:
        return RunRecord.from_mlflow(tracking.get_run(run_id, uri))
    except Exception as exc:  # mlflow raises its own exception types for a missing run
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LookupError(f"run {run_id!r} not found in {tracking.resolve_tracking_uri(uri)}: {first}") from None


def load_records(run_ids: Sequence[str], experiment: str | None, uri: str | None, split: str,
                 metric: str) -> tuple[list[RunRecord], list[str]]:
    """The runs to show (the given ids in order, else the experiment's newest first) and notes
    about runs left out (``experiment`` keeps finished runs that have ``<split>_<metric>``)."""
    notes: list[str] = []
    if run_ids:
        return [get_record(rid, uri) for rid in run_ids], notes
    records = [RunRecord.from_mlflow(r) for r in tracking.search_runs(experiment, uri)]
    kept = [r for r in records if r.status == "FINISHED" and f"{split}_{metric}" in r.metrics]
    if len(kept) < len(records):
        notes.append(f"left out {len(records) - len(kept)} of {len(records)} runs of {experiment!r} that are not "
                     f"finished or have no {split}_{metric}")
    if not kept:
        raise LookupError(f"experiment {experiment!r} has no finished run with metric {split}_{metric}")
    return kept, notes


def predictions_artifact(split: str) -> str:
    """The artifact name ``derma run`` gives a split's predictions table."""
    return "predictions.csv" if split == "test" else f"predictions_{split}.csv"


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


def check_same_classes_tags(a: RunRecord, b: RunRecord) -> None:
    """A :class:`~.paired.PairingError` when both runs' ``derma.label_set`` tags are set and
    differ (before any predictions table is downloaded)."""
    ta, tb = a.tags.get(tracking.TAG_LABEL_SET), b.tags.get(tracking.TAG_LABEL_SET)
    if ta and tb and ta != tb:
        from ..labels import LabelSet

        la, lb = (LabelSet(codes=tuple(t.split(","))) for t in (ta, tb))
        raise PairingError(f"no paired comparison: {a.label} was evaluated on the classes {describe_classes(la)} "
                           f"but {b.label} on {describe_classes(lb)}; paired tests need runs over the same classes")


def load_pair_inputs(record: RunRecord, uri: str | None, split: str) -> tuple[pd.DataFrame, "LabelSet", str]:
    """A run's predictions table on ``split``, its label set (``label_set.json``, else
    :func:`~.paired.table_label_set`) and what its groups are (:func:`group_unit`)."""
    table = tracking.load_run_table(record.run_id, predictions_artifact(split), uri)
    label_set = tracking.load_run_label_set(record.run_id, uri) or table_label_set(table)
    return table, label_set, group_unit(tracking.load_run_dict(record.run_id, "dataset.json", uri))


# -- the runs as one frame ---------------------------------------------------------------------------
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
                               "status": rec.status, "dataset": rec.tags.get(tracking.TAG_DATASET),
                               "classes": rec.tags.get(tracking.TAG_LABEL_SET)}
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


def key_params(frame: pd.DataFrame) -> list[str]:
    """Curated params worth a column: those that differ between runs (all present ones for one run)."""
    names = [c for c in curated_param_names() if c in frame.columns]
    if len(frame) <= 1:
        return [c for c in names if frame[c].notna().any()]
    return [c for c in names if frame[c].astype(str).nunique(dropna=False) > 1]
