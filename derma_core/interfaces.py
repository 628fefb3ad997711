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

from .labels import LABEL_TO_INDEX, LABELS

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from .tracking import Tracker

#: Columns every split frame has. Metadata columns (dx_type, age, sex, localization) may follow.
SPLIT_COLUMNS = ("id", "label", "lesion_id", "image_path")


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
    plus any metadata. ``cache``, when present, is a uint8 array of shape (N, H, W, 3) whose
    row ``i`` is the resized image of ``frame`` row ``i`` (usually a read-only memory map).
    """

    name: str
    frame: pd.DataFrame
    root: Path
    cache: np.ndarray | None = None

    def __post_init__(self) -> None:
        missing = [c for c in SPLIT_COLUMNS if c not in self.frame.columns]
        if missing:
            raise ValueError(f"split {self.name!r} is missing columns {missing}")
        self.frame = self.frame.reset_index(drop=True)
        self.root = Path(self.root)
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
        """Label indices in :data:`~derma_core.labels.LABELS` order."""
        return self.frame["label"].map(LABEL_TO_INDEX).to_numpy(dtype=np.int64)

    @property
    def lesion_ids(self) -> np.ndarray:
        return self.frame["lesion_id"].astype(str).to_numpy()

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
        return Split(self.name, self.frame.iloc[idx].reset_index(drop=True), self.root, cache)


@dataclass
class Dataset:
    """A prepared dataset: named splits plus what identifies the data exactly."""

    name: str
    digest: str
    splits: dict[str, Split]
    synthetic: bool = False
    dir: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise KeyError(f"dataset {self.name!r} has no split {split!r} (has {sorted(self.splits)})") from None


@dataclass
class Predictions:
    """What a classifier says about a split, row-aligned with it.

    ``labels[i]`` is a label from LABELS, or None when the answer was invalid (free-text
    VLM output that names no single class). ``probabilities`` (N, 7), in LABELS order,
    turns on AUROC, calibration and melanoma sensitivity-at-specificity.
    """

    ids: list[str]
    labels: list[str | None]
    probabilities: np.ndarray | None = None
    raw_text: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.labels) != n:
            raise ValueError(f"predictions: {n} ids but {len(self.labels)} labels")
        for label in self.labels:
            if label is not None and label not in LABEL_TO_INDEX:
                raise ValueError(f"predictions: unknown label {label!r}; use None for an invalid answer")
        if self.probabilities is not None:
            self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
            if self.probabilities.shape != (n, len(LABELS)):
                raise ValueError(
                    f"predictions: probabilities have shape {self.probabilities.shape}, expected ({n}, {len(LABELS)})"
                )
        if self.raw_text is not None and len(self.raw_text) != n:
            raise ValueError(f"predictions: {n} ids but {len(self.raw_text)} raw texts")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted label indices; -1 for an invalid answer."""
        return np.array([LABEL_TO_INDEX[l] if l is not None else -1 for l in self.labels], dtype=np.int64)

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
        )

    def to_frame(self, split: Split | None = None) -> pd.DataFrame:
        """The predictions table: id, lesion_id and true label (with a split), predicted label
        (empty when invalid), ``prob_<label>`` columns and ``raw_text`` when present."""
        df = pd.DataFrame({"id": self.ids})
        if split is not None:
            truth = split.frame.set_index(split.frame["id"].astype(str))
            df["lesion_id"] = truth.loc[self.ids, "lesion_id"].astype(str).to_numpy()
            df["label"] = truth.loc[self.ids, "label"].astype(str).to_numpy()
        df["predicted"] = [l if l is not None else "" for l in self.labels]
        if self.probabilities is not None:
            for j, label in enumerate(LABELS):
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
#: builder(labels) -> question text
PromptBuilder = Callable[[tuple[str, ...]], str]
#: evaluator(split, predictions, config) -> EvalResult
Evaluator = Callable[[Split, Predictions, dict], EvalResult]
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
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.work_dir = Path(self.work_dir)
        self.logged_steps: dict[str, int] = {}  # metric -> highest step logged so far


    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def progress(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw):
        """A tqdm progress bar, silent when the run is quiet or on non-main ranks."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=self.quiet or not self.is_main_process,
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
        """Config value at a dotted key path (``"class_weighting.cap"``)."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node
