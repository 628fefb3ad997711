"""Cross-dataset evaluation: fit on dataset A, evaluate on A's test split and on other datasets.

``derma run --dataset A --eval-dataset B=DIR`` (repeatable; ``evaluation.datasets`` in the
config) evaluates the classifier fitted on A on each prepared folder ``DIR`` too, in the same
MLflow run, with the same evaluators; B's metrics are named ``eval_<b>_<metric>``
(``eval_pad_ufes_20_macro_f1``), A's stay ``test_*``. For each B:

1. B's evaluated rows are its test split (``evaluation.datasets_split: test``) or all of it
   (``all``);
2. a label map (:mod:`derma_core.data.labelmaps`) turns the classifier's A classes into B's:
   B's images of classes without a counterpart are excluded and counted per class;
3. the leakage guard (:mod:`derma_core.data.overlap`) finds B's images that duplicate A's train
   or validation images (by id, bytes, pixels and published lists); they are excluded and
   counted, unless ``--allow-overlap`` (``evaluation.allow_overlap``) keeps them, with a warning
   and the run tag ``derma.allow_overlap``;
4. the classifier predicts B's remaining images (the split it sees carries A's classes: its
   labels are a placeholder, B's truth is never shown to it), the map gives predictions over
   the evaluated classes, and every evaluator runs, with B's grouping (lesion, patient or image)
   for the intervals and B's subgroup columns. Calibration and conformal sets need validation
   predictions on B's classes and are not fitted here.

Logged per B: the metrics, ``eval_<b>_images`` (evaluated), ``eval_<b>_excluded_overlap``,
``eval_<b>_overlap_{id,bytes,pixels,listed,total}``, ``eval_<b>_excluded_classes`` and
``eval_<b>_excluded_class_<code>``, ``eval_<b>_unmapped_probability`` and
``eval_<b>_predicted_unmapped``; the artifacts ``cross_dataset/<b>/label_map.json``,
``overlap_pairs.csv``, ``excluded.csv`` and ``summary.json``; the tags ``derma.eval_datasets``
and ``derma.label_map.<b>`` (the map in one line). The runner calls :meth:`CrossDataset.load`
before fitting (so a wrong folder or a missing map stops the run before any training),
:meth:`CrossDataset.predict` on every process after predicting A's test split, and
:meth:`CrossDataset.evaluate` after A's test evaluation.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..interfaces import Dataset, Predictions, Split

if TYPE_CHECKING:  # pragma: no cover
    from ..data.labelmaps import LabelMap
    from ..data.overlap import OverlapResult
    from ..interfaces import RunContext
    from ..tracking import Tracker

TAG_EVAL_DATASETS = "derma.eval_datasets"
TAG_ALLOW_OVERLAP = "derma.allow_overlap"
TAG_LABEL_MAP = "derma.label_map."
ARTIFACT_DIR = "cross_dataset"
EVAL_SPLITS = ("test", "all")


def metric_key(name: str) -> str:
    """The part of the metric names that names an evaluation dataset: ``PAD-UFES-20`` -> ``pad_ufes_20``."""
    key = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    if not key:
        raise ValueError(f"--eval-dataset {name!r}: the name must contain a letter or digit")
    return key


def parse_datasets(value: Any) -> dict[str, str]:
    """``evaluation.datasets``: a mapping name -> prepared folder, or a list of ``NAME=DIR``
    strings (what ``--eval-dataset`` gives); one-line errors otherwise."""
    if value is None:
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(value, dict):
        items = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise ValueError(f"evaluation.datasets: {entry!r} must look like NAME=DIR (a folder `derma prep "
                                 "--dataset NAME` wrote)")
            name, folder = entry.split("=", 1)
            items.append((name.strip(), folder.strip()))
    else:
        raise ValueError("evaluation.datasets must map dataset names to prepared folders ({pad_ufes_20: DIR}) or list "
                         "NAME=DIR strings")
    out: dict[str, str] = {}
    for name, folder in items:
        if not name or not folder:
            raise ValueError(f"evaluation.datasets: {name}={folder}: give NAME=DIR with both parts")
        key = metric_key(name)
        if key in out:
            raise ValueError(f"evaluation.datasets: {name!r} is given twice (as metric prefix eval_{key}); "
                             "give each evaluation dataset once, or distinct names")
        out[key] = folder
    return out


@dataclass
class EvalDataset:
    """One evaluation dataset, loaded and checked: its evaluated rows (``rows``: B's rows kept
    after the exclusions), the label map and the overlap found."""

    key: str
    name: str
    folder: Path
    dataset: Dataset
    full: Split  # every row of the evaluated split(s), B's labels
    label_map: "LabelMap"
    overlap: "OverlapResult"
    keep: np.ndarray  # bool per row of ``full``
    excluded: pd.DataFrame  # id, reason, detail
    allow_overlap: bool
    split_name: str

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.keep)

    def class_exclusions(self) -> dict[str, int]:
        labels = self.full.frame["label"].astype(str)
        return {code: int((labels == code).sum()) for code in self.label_map.excluded_target}


@dataclass
class CrossDataset:
    """The evaluation datasets of one run (see the module docstring)."""

    home: Dataset
    datasets: list[EvalDataset]
    config: dict
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))

    # ---- before fitting
    @classmethod
    def load(cls, config: dict, home: Dataset, log: Callable[[str], None] | None = None) -> "CrossDataset | None":
        """The evaluation datasets ``evaluation.datasets`` names, each with its label map and
        leakage check; None when there are none. One-line ``ValueError``s for a folder that is
        not a prepared dataset, a name that contradicts it, or a pair of label sets with no map."""
        folders = parse_datasets(get_dotted(config, "evaluation.datasets"))
        if not folders:
            return None
        log = log or (lambda line: print(line, file=sys.stderr))
        split = str(get_dotted(config, "evaluation.datasets_split", "test") or "test")
        if split not in EVAL_SPLITS:
            raise ValueError(f"evaluation.datasets_split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
        allow = bool(get_dotted(config, "evaluation.allow_overlap", False))
        maps = [str(p) for p in (get_dotted(config, "evaluation.label_maps") or [])]
        from ..data.overlap import dataset_side

        home_side = dataset_side(home, ("train", "val"))
        loaded = [_load_one(key, Path(folder).expanduser(), split, home, home_side, maps, allow, log)
                  for key, folder in folders.items()]
        return cls(home, loaded, config, log)

    # ---- on every process, after predicting A's test split
    def predict(self, classifier: Any, ctx: "RunContext") -> dict[str, Predictions]:
        """The classifier's predictions (over A's classes) on each evaluation dataset's kept rows."""
        out = {}
        for ev in self.datasets:
            split = _prediction_split(ev, self.home)
            predictions = classifier.predict(split, ctx)
            if not predictions.label_set.same_classes(self.home.label_set):
                raise ValueError(f"{self.config.get('plugin')} predicted over {', '.join(predictions.label_set.codes)} "
                                 f"on {ev.name}, not over the classes it was fitted on "
                                 f"({', '.join(self.home.label_set.codes)})")
            out[ev.key] = predictions.aligned_to(split)
        return out

    # ---- on the main process, after A's test evaluation
    def evaluate(self, predictions: dict[str, Predictions], tracker: "Tracker", step: int = 0) -> dict[str, float]:
        """Map, evaluate and log each evaluation dataset; returns the logged ``eval_*`` metrics."""
        from ..runner import evaluate, log_evaluation

        tracker.set_tags({TAG_EVAL_DATASETS: ",".join(ev.key for ev in self.datasets)})
        if any(ev.allow_overlap and ev.overlap.counts["total"] for ev in self.datasets):
            tracker.set_tags({TAG_ALLOW_OVERLAP: "true"})
        out: dict[str, float] = {}
        for ev in self.datasets:
            prefix = f"eval_{ev.key}"
            split, mapped, extra = map_predictions(ev, predictions[ev.key])
            dataset = Dataset(ev.dataset.name, ev.dataset.digest, {split.name: split},
                              descriptor=ev.dataset.descriptor.with_labels(ev.label_map.evaluated),
                              synthetic=ev.dataset.synthetic, dir=ev.dataset.dir, manifest=ev.dataset.manifest)
            tracker.log_input(split.frame[["id", "label", "group_id", "image_path"]],
                              name=f"{ev.dataset.name}/{ev.split_name}", context=prefix,
                              digest=ev.dataset.digest[:16], source=str(ev.folder))
            metrics, results = evaluate(split, mapped, self.config, dataset, None)
            out.update(log_evaluation(tracker, split, mapped, metrics, results, prefix, step))
            counts = ev.overlap.counts
            classes = ev.class_exclusions()
            summary = {
                "images": float(len(split)), "images_total": float(len(ev.full)),
                "excluded_overlap": float(0 if ev.allow_overlap else counts["total"]),
                **{f"overlap_{k}": float(v) for k, v in counts.items()},
                "excluded_classes": float(sum(classes.values())),
                **{f"excluded_class_{c}": float(n) for c, n in classes.items()},
                **extra,
            }
            prefixed = {f"{prefix}_{k}": v for k, v in summary.items()}
            tracker.log_metrics(prefixed, step=step)
            out.update(prefixed)
            tracker.set_tags({f"{TAG_LABEL_MAP}{ev.key}": ev.label_map.describe()[:4000]})
            where = f"{ARTIFACT_DIR}/{ev.key}"
            tracker.log_dict(ev.label_map.to_dict(), f"{where}/label_map.json")
            tracker.log_table(ev.overlap.pairs, f"{where}/overlap_pairs.csv")
            tracker.log_table(ev.excluded, f"{where}/excluded.csv")
            tracker.log_dict({"name": ev.name, "dataset": ev.dataset.descriptor.name, "dir": str(ev.folder),
                              "digest": ev.dataset.digest, "synthetic": ev.dataset.synthetic,
                              "split": ev.split_name, "label_map": ev.label_map.describe(),
                              "overlap": {k: v for k, v in ev.overlap.to_json().items() if k != "pairs"},
                              "allow_overlap": ev.allow_overlap, "excluded_classes": classes,
                              "calibration": "not fitted: no validation predictions on this dataset's classes",
                              "metrics": summary}, f"{where}/summary.json")
        return out


def _load_one(key: str, folder: Path, split: str, home: Dataset, home_side: Any, maps: list[str], allow: bool,
              log: Callable[[str], None]) -> EvalDataset:
    from ..data.labelmaps import LabelMapError, resolve_label_map
    from ..data.overlap import find_overlap, prepared_side
    from ..data.prepare import load_prepared
    from ..data.sources import registered_descriptor
    from ..data.splits import SPLITS

    try:
        dataset = load_prepared(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"--eval-dataset {key}={folder}: {exc}") from None
    prepared_as = dataset.descriptor.name
    if registered_descriptor(key) is not None and key != metric_key(prepared_as):
        raise ValueError(f"--eval-dataset {key}={folder}: that folder was prepared as dataset {prepared_as!r}; "
                         f"write {prepared_as}={folder} (or a name that is not a dataset's)")
    if split == "all":
        frame = pd.concat([dataset[s].frame for s in SPLITS], ignore_index=True)
        cache = None
        if all(dataset[s].cache is not None for s in SPLITS):
            info = dataset.manifest.get("cache") or {}
            cache = np.load(folder / info.get("file", "cache/images.npy"), mmap_mode="r")
            if len(cache) != len(frame):  # rows are train, val, test in order (derma prep)
                cache = np.concatenate([np.asarray(dataset[s].cache) for s in SPLITS])
        full = Split(f"eval_{key}", frame, folder, cache, label_set=dataset.label_set)
    else:
        test = dataset["test"]
        full = Split(f"eval_{key}", test.frame, folder, test.cache, label_set=dataset.label_set)
    try:
        label_map = resolve_label_map(home.descriptor.name, home.label_set, prepared_as, dataset.label_set, maps)
    except LabelMapError as exc:
        raise ValueError(f"--eval-dataset {key}: {exc}") from None
    b_side = prepared_side(folder, list(SPLITS) if split == "all" else ["test"], dataset=dataset)
    overlap = find_overlap(home_side, b_side)
    truth = label_map.map_target_labels(full.labels)
    no_class = np.array([t is None for t in truth], dtype=bool)
    found = overlap.b_ids()
    leak = full.frame["id"].astype(str).isin(found).to_numpy()
    keep = ~no_class & (allow | ~leak)
    kinds = overlap.excluded.set_index("id")["kinds"].to_dict() if found else {}
    excluded = pd.DataFrame({
        "id": full.frame["id"].astype(str), "label": full.labels,
        "reason": ["no counterpart" if c else ("overlap (kept: --allow-overlap)" if allow else "overlap")
                   if l else "" for c, l in zip(no_class, leak)],
        "detail": [f"class {lab} has no counterpart in {home.descriptor.name}'s classes" if c
                   else (kinds.get(i, "") if l else "") for c, l, lab, i in zip(no_class, leak, full.labels,
                                                                                full.frame["id"].astype(str))],
    })
    excluded = excluded[excluded["reason"] != ""].reset_index(drop=True)
    if keep.sum() == 0:
        raise ValueError(f"--eval-dataset {key}={folder}: no image left to evaluate ({int(no_class.sum())} of classes "
                         f"without a counterpart, {int(leak.sum())} overlapping {home.name}'s training data)")
    ev = EvalDataset(key, dataset.name, folder, dataset, full, label_map, overlap, keep, excluded, allow, split)
    counts = overlap.counts
    log(f"eval dataset {key} ({prepared_as}, {split}: {len(full)} images): label map {label_map.describe()}")
    if label_map.excluded_target:
        per = ", ".join(f"{c} {n}" for c, n in ev.class_exclusions().items())
        log(f"  excluded, no counterpart in {home.descriptor.name}'s classes: {per}")
    overlap_line = (f"  overlap with {home.name}'s train+val: {counts['total']} images (id {counts['id']}, bytes "
                    f"{counts['bytes']}, pixels {counts['pixels']}, listed {counts['listed']})")
    if counts["total"] and allow:
        log(f"warning: {overlap_line.strip()} are KEPT (--allow-overlap): {key}'s scores include images the "
            "classifier was trained or tuned on")
    else:
        log(overlap_line + (" excluded" if counts["total"] else ""))
    for note in overlap.notes:
        log(f"  note: {note}")
    return ev


def _prediction_split(ev: EvalDataset, home: Dataset) -> Split:
    """B's kept rows as the classifier sees them: A's classes, every label a placeholder (A's
    first class), B's metadata kept."""
    rows = ev.rows
    part = ev.full if len(rows) == len(ev.full) else ev.full.subset(rows)  # the kept images' cache rows, in memory
    frame = part.frame.copy()
    frame["label"] = home.label_set.codes[0]
    return Split(part.name, frame, part.root, part.cache, label_set=home.label_set)


def map_predictions(ev: EvalDataset, predictions: Predictions) -> tuple[Split, Predictions, dict[str, float]]:
    """(B's kept rows with their evaluated labels, the predictions mapped to the evaluated
    classes, the map's own counts): the share of probability on A's classes without a
    counterpart (mean) and the images whose top class (or answer) had none."""
    label_map = ev.label_map
    frame = ev.full.frame.iloc[ev.rows].reset_index(drop=True)
    frame["label"] = label_map.map_target_labels(frame["label"].astype(str).tolist())
    split = Split(ev.full.name, frame, ev.full.root, None, label_set=label_map.evaluated)  # evaluators read no pixels
    predictions = predictions.aligned_to(split)
    labels, probabilities, unmapped = label_map.predict(predictions.labels, predictions.probabilities)
    mapped = Predictions(ids=predictions.ids, labels=labels, probabilities=probabilities,
                         raw_text=predictions.raw_text, info=dict(predictions.info), label_set=label_map.evaluated)
    source = label_map.source
    if predictions.probabilities is not None:
        top = np.asarray(predictions.probabilities).argmax(axis=1)
        off = sum(label_map.source_to_eval[source.codes[int(t)]] is None for t in top)
    else:
        off = sum(label is not None and label_map.source_to_eval[label] is None for label in predictions.labels)
    extra = {"predicted_unmapped": float(off)}
    if unmapped is not None:
        extra["unmapped_probability"] = float(np.mean(unmapped)) if len(unmapped) else 0.0
    return split, mapped, extra


def print_eval_metrics(metrics: dict[str, float], echo: Callable[[str], None]) -> None:
    """The headline metrics of each evaluation dataset, for ``derma run``'s summary."""
    keys = [k[len("eval_"):-len("_images_total")] for k in metrics
            if k.startswith("eval_") and k.endswith("_images_total")]
    for key in keys:
        p = f"eval_{key}"
        parts = []
        for m in ("balanced_accuracy", "macro_f1"):
            v = metrics.get(f"{p}_{m}")
            if v is None:
                continue
            lo, hi = metrics.get(f"{p}_{m}_ci_low"), metrics.get(f"{p}_{m}_ci_high")
            parts.append(f"{m} {v:.4f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""))
        excluded = [f"{int(metrics.get(f'{p}_excluded_overlap', 0))} overlapping",
                    f"{int(metrics.get(f'{p}_excluded_classes', 0))} of classes without counterpart"]
        images = int(metrics.get(f"{p}_images", 0))
        echo(f"  {p}: {images} images; {'; '.join(parts)} (excluded: {', '.join(excluded)})")


# ---------------------------------------------------------------- the report's section

def _cell(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    lo, hi = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{value:.3f}"


def eval_keys(metrics: dict[str, float]) -> list[str]:
    """The evaluation datasets a run logged (``eval_<key>_images_total``), in name order."""
    return sorted(k[len("eval_"):-len("_images_total")] for k in metrics
                  if k.startswith("eval_") and k.endswith("_images_total"))


def cross_dataset_sections(records: list, split: str = "test") -> list[tuple[str, list[tuple[str, Any]]]]:
    """The report's "Cross-dataset evaluation" section, as the report's (heading, items) pairs
    (empty when no run evaluated another dataset): a table with the runs as rows and the
    datasets as columns (macro-F1 and balanced accuracy with their intervals; a run's own
    dataset is its ``<split>`` evaluation, the others its ``eval_<b>`` ones), and per run and
    evaluation dataset the images evaluated, the overlap found with its training data and the
    label map used. Everything comes from what the runs logged (metrics and tags)."""
    runs = [(r, dict(r.metrics), dict(r.tags)) for r in records]
    if not any(eval_keys(m) for _, m, _ in runs):
        return []
    columns: list[str] = []
    for _, metrics, tags in runs:
        own = tags.get("derma.dataset")
        for key in ([metric_key(own)] if own and f"{split}_macro_f1" in metrics else []) + eval_keys(metrics):
            if key not in columns:
                columns.append(key)
    table_rows, detail_rows = [], []
    for record, metrics, tags in runs:
        own = metric_key(tags["derma.dataset"]) if tags.get("derma.dataset") else None
        row = {"run": record.label, "plugin": record.plugin, "dataset": tags.get("derma.dataset", "-")}
        for key in columns:
            prefix = split if key == own else f"eval_{key}"
            row[f"{key} macro-F1"] = _cell(metrics, f"{prefix}_macro_f1")
            row[f"{key} balanced accuracy"] = _cell(metrics, f"{prefix}_balanced_accuracy")
        table_rows.append(row)
        for key in eval_keys(metrics):
            p = f"eval_{key}"
            count = lambda name: int(metrics.get(f"{p}_{name}", 0))  # noqa: E731
            excluded = {k[len(f"{p}_excluded_class_"):]: int(v) for k, v in metrics.items()
                        if k.startswith(f"{p}_excluded_class_")}
            kept = count("overlap_total") and not count("excluded_overlap")
            detail_rows.append({
                "run": record.label, "dataset": key,
                "images evaluated": f"{count('images')} of {count('images_total')}",
                "overlap id / bytes / pixels / listed": " / ".join(str(count(f"overlap_{k}"))
                                                                   for k in ("id", "bytes", "pixels", "listed")),
                "overlap total": f"{count('overlap_total')}" + (" KEPT (--allow-overlap)" if kept else
                                                                  " excluded" if count("overlap_total") else ""),
                "excluded classes": ", ".join(f"{c} {n}" for c, n in excluded.items()) or "-",
                "label map": tags.get(f"{TAG_LABEL_MAP}{key}", "-"),
            })
    intro = (f"Each run's own dataset is its {split} split; another dataset's cells are the same classifier evaluated "
             "there (eval_<dataset> metrics), through the label map shown below, with the images that duplicate "
             "its training or validation data excluded (by id, file bytes, perceptual hash of the pixels, and "
             "published duplicate lists / shared ISIC lesion ids). Intervals are group-level bootstrap intervals "
             "as each run logged them.")
    return [("Cross-dataset evaluation", [
        ("text", intro),
        ("table:cross-dataset", pd.DataFrame(table_rows)),
        ("h3", "Images evaluated, overlap and label maps"),
        ("table:cross-dataset-details", pd.DataFrame(detail_rows)),
    ])]


__all__ = ["CrossDataset", "EvalDataset", "cross_dataset_sections", "eval_keys", "map_predictions", "metric_key",
           "parse_datasets", "print_eval_metrics", "TAG_EVAL_DATASETS", "TAG_ALLOW_OVERLAP", "TAG_LABEL_MAP",
           "ARTIFACT_DIR"]
