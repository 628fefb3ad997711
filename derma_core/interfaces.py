"""The data types every backend and evaluator shares.

A dataset source returns a :class:`Dataset` of :class:`Split` objects; a classifier's
``predict`` returns :class:`Predictions`; an evaluator returns an :class:`EvalResult`.
Everything a plugin needs during a run comes through the :class:`RunContext`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .labels import LabelSet

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from .data.descriptor import DatasetDescriptor
    from .tracking import Tracker

#: Columns every split frame has. ``group_id`` is the dataset's grouping (lesion or patient; each
#: image its own group where the dataset has none). Metadata columns (age, sex, ...) may follow.
SPLIT_COLUMNS = ("id", "label", "group_id", "image_path")


class UnsafePathError(ValueError):
    """An image path points outside the folder it must stay in."""


def resolve_inside(root: Path, relative: str | os.PathLike) -> Path:
    """``root / relative``, refusing any path that escapes ``root`` (``..``, absolute, symlinks)."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(
            f"image path {str(relative)!r} escapes its root {str(root)!r}: "
            "image paths must be relative and stay inside the dataset folder"
        )
    return candidate


@dataclass
class Split:
    """One split (train, val or test) of a dataset.

    ``frame`` has the columns in :data:`SPLIT_COLUMNS` (``image_path`` relative to ``root``)
    plus any metadata; its labels are codes of ``label_set``. ``cache``, when present, is a uint8
    array of shape (N, H, W, 3) whose row ``i`` is the resized image of ``frame`` row ``i``
    (usually a read-only memory map).
    """

    name: str
    frame: pd.DataFrame
    root: Path
    cache: np.ndarray | None = None
    label_set: LabelSet = field(kw_only=True)

    def __post_init__(self) -> None:
        missing = [c for c in SPLIT_COLUMNS if c not in self.frame.columns]
        if missing:
            raise ValueError(f"split {self.name!r} is missing columns {missing}")
        self.frame = self.frame.reset_index(drop=True)
        self.root = Path(self.root)
        if not isinstance(self.label_set, LabelSet):
            raise TypeError(f"split {self.name!r}: label_set must be a LabelSet, got {type(self.label_set).__name__}")
        unknown = sorted(set(self.frame["label"].astype(str)) - set(self.label_set.codes))
        if unknown:
            raise ValueError(f"split {self.name!r}: labels {unknown[:5]} are not classes of the dataset "
                             f"({', '.join(self.label_set.codes)})")
        if self.cache is not None and len(self.cache) != len(self.frame):
            raise ValueError(
                f"split {self.name!r}: image cache has {len(self.cache)} rows, frame has {len(self.frame)}"
            )

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].astype(str).tolist()

    @property
    def labels(self) -> list[str]:
        return self.frame["label"].astype(str).tolist()

    @property
    def y(self) -> np.ndarray:
        """Label indices in the order of :attr:`label_set`."""
        index = {c: i for i, c in enumerate(self.label_set.codes)}
        return self.frame["label"].astype(str).map(index).to_numpy(dtype=np.int64)

    @property
    def group_ids(self) -> np.ndarray:
        """Each row's group (lesion or patient): bootstrap intervals resample these."""
        return self.frame["group_id"].astype(str).to_numpy()

    def image_path(self, i: int) -> Path:
        """Absolute path of row ``i``'s image; refuses paths that escape :attr:`root`."""
        return resolve_inside(self.root, self.frame.at[i, "image_path"])

    def load_image(self, i: int) -> "Image":
        """Row ``i`` as an RGB PIL image: from the cache when there is one, else decoded from disk."""
        from PIL import Image

        if self.cache is not None:
            return Image.fromarray(np.asarray(self.cache[i]))
        with Image.open(self.image_path(i)) as im:
            return im.convert("RGB")

    def subset(self, index: Iterable[int] | np.ndarray) -> "Split":
        """A new split holding the given rows (cache rows follow)."""
        idx = np.asarray(list(index) if not isinstance(index, np.ndarray) else index, dtype=np.int64)
        cache = None if self.cache is None else self.cache[idx]
        return Split(self.name, self.frame.iloc[idx].reset_index(drop=True), self.root, cache,
                     label_set=self.label_set)


@dataclass
class Dataset:
    """A prepared dataset: named splits plus what identifies the data exactly.

    ``descriptor`` holds the dataset's facts (label set, grouping, subgroup columns, modality,
    licence) as the data was prepared; every split shares its label set."""

    name: str
    digest: str
    splits: dict[str, Split]
    descriptor: "DatasetDescriptor" = field(kw_only=True)
    synthetic: bool = False
    dir: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.descriptor.labels, LabelSet):
            raise TypeError(f"dataset {self.name!r}: its descriptor must hold the label set the data was prepared "
                            "with (descriptor.with_labels(label_set))")
        for split in self.splits.values():
            if split.label_set != self.label_set:
                raise ValueError(f"dataset {self.name!r}: split {split.name!r} has classes "
                                 f"{list(split.label_set.codes)}, the dataset {list(self.label_set.codes)}")

    @property
    def label_set(self) -> LabelSet:
        return self.descriptor.labels  # type: ignore[return-value]

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"dataset {self.name!r} has no split {split!r} (has {sorted(self.splits)})") from None


@dataclass
class Predictions:
    """What a classifier says about a split, row-aligned with it.

    ``labels[i]`` is a code of ``label_set`` (the dataset's, usually ``split.label_set``), or
    None when the answer was invalid (free-text VLM output that names no single class).
    ``probabilities`` (N, K) in ``label_set`` order turns on AUROC, calibration and the focus
    class's sensitivity at fixed specificity.
    """

    ids: list[str]
    labels: list[str | None]
    probabilities: np.ndarray | None = None
    raw_text: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    label_set: LabelSet = field(kw_only=True)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.labels) != n:
            raise ValueError(f"predictions: {n} ids but {len(self.labels)} labels")
        if not isinstance(self.label_set, LabelSet):
            raise TypeError("predictions: label_set must be a LabelSet (pass label_set=split.label_set)")
        for label in self.labels:
            if label is not None and label not in self.label_set:
                raise ValueError(f"predictions: unknown label {label!r} (classes: {', '.join(self.label_set.codes)}); "
                                 "use None for an invalid answer")
        if self.probabilities is not None:
            self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
            k = len(self.label_set)
            if self.probabilities.shape != (n, k):
                raise ValueError(
                    f"predictions: probabilities have shape {self.probabilities.shape}, expected ({n}, {k})"
                )
        if self.raw_text is not None and len(self.raw_text) != n:
            raise ValueError(f"predictions: {n} ids but {len(self.raw_text)} raw texts")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted label indices in :attr:`label_set` order; :data:`~derma_core.labels.INVALID`
        (-1) for an invalid answer."""
        return self.label_set.encode(self.labels)

    def aligned_to(self, split: Split) -> "Predictions":
        """These predictions reordered to ``split``'s row order; an error names missing ids."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in split.ids if i not in pos]
        if missing:
            raise ValueError(f"predictions lack {len(missing)} ids of split {split.name!r}, e.g. {missing[:3]}")
        order = [pos[i] for i in split.ids]
        return Predictions(
            ids=[self.ids[k] for k in order],
            labels=[self.labels[k] for k in order],
            probabilities=None if self.probabilities is None else self.probabilities[order],
            raw_text=None if self.raw_text is None else [self.raw_text[k] for k in order],
            info=dict(self.info),
            label_set=self.label_set,
        )

    def to_frame(self, split: Split | None = None) -> pd.DataFrame:
        """The predictions table: id, group_id and true label (with a split), predicted label
        (empty when invalid), ``prob_<label>`` columns and ``raw_text`` when present."""
        df = pd.DataFrame({"id": self.ids})
        if split is not None:
            truth = split.frame.set_index(split.frame["id"].astype(str))
            df["group_id"] = truth.loc[self.ids, "group_id"].astype(str).to_numpy()
            df["label"] = truth.loc[self.ids, "label"].astype(str).to_numpy()
        df["predicted"] = [l if l is not None else "" for l in self.labels]
        if self.probabilities is not None:
            for j, label in enumerate(self.label_set.codes):
                df[f"prob_{label}"] = self.probabilities[:, j]
        if self.raw_text is not None:
            df["raw_text"] = self.raw_text
        return df


@dataclass
class EvalResult:
    """An evaluator's output: scalar metrics, tables (saved as CSV/JSON) and matplotlib figures."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Classifier(Protocol):
    """A backend. ``fit`` is a no-op for zero-shot models. ``log_model(ctx)`` is optional."""

    name: str

    def fit(self, train: Split, val: Split, ctx: "RunContext") -> None: ...

    def predict(self, split: Split, ctx: "RunContext") -> Predictions: ...


#: factory(config) -> Classifier
ClassifierFactory = Callable[[dict], Classifier]
#: builder(label_set) -> question text (the label set's display names, in its order)
PromptBuilder = Callable[[LabelSet], str]


@dataclass
class EvalInput:
    """Everything an evaluator receives, explicitly (the one evaluator contract).

    ``predictions`` are aligned to ``split`` (same row order). ``dataset`` holds the dataset's
    facts: its label set, grouping (what ``groups`` are: lesions, patients or single images) and
    subgroup columns. ``reference`` is the calibration split with the classifier's predictions
    on it, for evaluators registered with ``needs_reference=True`` (None when there is none,
    e.g. when val itself is evaluated); it is never the evaluated split.
    """

    split: Split
    predictions: Predictions
    config: dict
    dataset: "DatasetDescriptor"
    reference: "EvalReference | None" = None

    def __post_init__(self) -> None:
        if list(self.predictions.ids) != self.split.ids:
            self.predictions = self.predictions.aligned_to(self.split)
        if not self.predictions.label_set.same_classes(self.split.label_set):
            raise ValueError(f"predictions are over {list(self.predictions.label_set.codes)} but split "
                             f"{self.split.name!r} has classes {list(self.split.label_set.codes)}")

    @property
    def label_set(self) -> LabelSet:
        return self.split.label_set

    @property
    def y_true(self) -> np.ndarray:
        return self.split.y

    @property
    def y_pred(self) -> np.ndarray:
        return self.predictions.y_pred

    @property
    def groups(self) -> np.ndarray:
        """Per-row group ids (lesion or patient): the bootstrap's resampling unit."""
        return self.split.group_ids

    @property
    def metadata(self) -> pd.DataFrame:
        return self.split.frame


@dataclass
class EvalReference:
    """The calibration data handed to evaluators registered with ``needs_reference=True``."""

    split: Split
    predictions: Predictions

    def __post_init__(self) -> None:
        if list(self.predictions.ids) != self.split.ids:
            self.predictions = self.predictions.aligned_to(self.split)


#: evaluator(EvalInput) -> EvalResult
Evaluator = Callable[[EvalInput], EvalResult]
#: source(config) -> Dataset
DatasetSource = Callable[[dict], Dataset]


class TrialPruned(Exception):
    """Raised from :meth:`RunContext.report_epoch` when a tuning trial should stop early."""


@dataclass
class RunContext:
    """Everything a plugin needs during one run.

    Plugins log through ``ctx.log_metrics``/``ctx.tracker`` (never through mlflow directly),
    keep checkpoints and partial results under ``ctx.work_dir``, and wrap long loops in
    ``ctx.progress``.
    """

    config: dict
    tracker: "Tracker"
    device: str = "cpu"
    seed: int = 42
    work_dir: Path = field(default_factory=lambda: Path("."))
    quiet: bool = False
    resume: bool = False
    rank: int = 0
    world_size: int = 1
    #: Called as reporter(epoch, metrics) by report_epoch; tuning uses it to prune trials.
    reporter: Callable[[int, dict], None] | None = None
    #: The run's dataset facts: label set, modality (CLIP prompt templates), grouping, subgroups.
    dataset: "DatasetDescriptor | None" = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.work_dir = Path(self.work_dir)
        self.logged_steps: dict[str, int] = {}  # metric -> highest step logged so far

    @property
    def label_set(self) -> LabelSet:
        """The run's label set (from its dataset)."""
        if self.dataset is None:
            raise RuntimeError("this RunContext has no dataset: pass dataset=<the run's descriptor>")
        return self.dataset.labels  # type: ignore[return-value]

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw):
        """A progress bar (tqdm's on a terminal, whole lines in a log: :func:`derma_core.progress.progress`),
        silent when the run is quiet or on non-main ranks."""
        from .progress import progress

        return progress(iterable, total=total, desc=desc, disable=self.quiet or not self.is_main_process,
                        dynamic_ncols=True, leave=False, **kw)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.is_main_process:
            self.tracker.log_metrics(metrics, step=step)
            for key in metrics:
                self.logged_steps[key] = max(self.logged_steps.get(key, 0), step or 0)

    def final_step(self, keys: Iterable[str]) -> int:
        """The step at which final metrics named ``keys`` must be logged so that MLflow shows
        them, not a per-epoch value of the same name, as the run's latest value."""
        steps = [self.logged_steps[k] for k in keys if k in self.logged_steps]
        return max(steps) + 1 if steps else 0

    def report_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log per-epoch metrics (``step`` = epoch) and tell a tuner; may raise TrialPruned."""
        self.log_metrics(metrics, step=epoch)
        if self.reporter is not None:
            self.reporter(epoch, metrics)

    def get(self, dotted: str, default: Any = None) -> Any:
        """Config value at a dotted key path (``"class_weighting.cap"``): :func:`derma_core.config.get_dotted`."""
        from .config import get_dotted

        return get_dotted(self.config, dotted, default)
