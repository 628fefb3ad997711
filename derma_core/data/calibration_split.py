"""The calibration split: images of val that neither training nor model selection saw.

Temperature / vector scaling and conformal thresholds are only honest when they are fitted on
images exchangeable with the test images. Val is not, once a backend picked its best epoch (or
C, or adapter) on it, or a tuning study picked its hyperparameters on it: the chosen model looks
better on val than on new images, so a threshold fitted there is too tight and the conformal
sets under-cover on test.

So the runner splits val in two before ``fit``:

* the **selection** part (still called ``val``): what ``classifier.fit(train, val, ctx)``
  receives for epoch / model selection, and what a run with ``evaluation.split: val`` (every
  ``derma tune`` trial) is evaluated on;
* the **calibration** part (split name ``calibration``): predicted once after fitting and handed
  to the calibration and conformal evaluators as their reference; nothing else sees it.

The carve is grouped by the dataset's grouping (``group_id``: lesion or patient; single images
where the dataset has none) and stratified by class, with the same assignment as the grouped
split (:func:`derma_core.data.splits.grouped_split`), so no lesion has images on both sides and
the dataset's own train / val / test split (the original study's ``seed`` split included) is
untouched. It depends on ``evaluation.calibration_split.seed`` (not on the run's ``seed``), so
runs with other seeds, tuning trials and the final run all carve the same images.

``evaluation.calibration_split.source`` says where calibration images come from:

* ``auto`` (default): carved from val when the backend selects on val, all of val when it does
  not. A classifier declares the latter with the class attribute ``selects_on_val = False``
  (zero-shot backends, the class prior); without the attribute a backend is assumed to select.
* ``carve``: always carved (e.g. a zero-shot backend whose prompt a study chose on val;
  ``derma tune`` sets it for ``auto``).
* ``val``: all of val, even though selection used it (the behaviour before the carve; its
  guarantees are weaker, and the run's param ``calibration_source: val_reused`` says so).

The share is ``evaluation.calibration_split.share`` of val's images (default 0.5), or about
``evaluation.calibration_split.images`` images when that is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import get_dotted
from ..interfaces import Split
from .splits import grouped_split

SOURCES = ("auto", "carve", "val")
#: The split name of the calibration part (the selection part keeps the name ``val``).
CALIBRATION = "calibration"
#: The run artifact listing every val image and what it was used for.
ARTIFACT = "calibration_split.csv"


@dataclass(frozen=True)
class CalibrationSettings:
    source: str = "auto"
    share: float = 0.5
    images: int | None = None
    seed: int = 0


def calibration_settings(config: dict) -> CalibrationSettings:
    """``evaluation.calibration_split.*`` (the schema has already checked types and ranges)."""
    source = str(get_dotted(config, "evaluation.calibration_split.source", "auto"))
    if source not in SOURCES:
        raise ValueError(f"evaluation.calibration_split.source must be one of {', '.join(SOURCES)}, got {source!r}")
    share = float(get_dotted(config, "evaluation.calibration_split.share", 0.5))
    if not 0 < share < 1:
        raise ValueError(f"evaluation.calibration_split.share must be between 0 and 1 (e.g. 0.5), got {share}")
    images = get_dotted(config, "evaluation.calibration_split.images")
    if images is not None and (isinstance(images, bool) or int(images) < 1):
        raise ValueError(f"evaluation.calibration_split.images must be a whole number >= 1 or null, got {images!r}")
    seed = int(get_dotted(config, "evaluation.calibration_split.seed", 0) or 0)
    return CalibrationSettings(source, share, None if images is None else int(images), seed)


def selects_on_val(classifier: Any) -> bool:
    """Whether ``classifier`` uses the val it is given to select (epochs, C, adapters): its
    ``selects_on_val`` attribute, True when absent."""
    return bool(getattr(classifier, "selects_on_val", True))


@dataclass
class CalibrationSplit:
    """Val divided into what selection uses and what calibration uses (see the module docstring).

    ``mode`` is ``carved`` (disjoint parts), ``val_unselected`` (all of val calibrates; the
    backend does not select on val) or ``val_reused`` (all of val does both: source ``val``).
    """

    selection: Split
    calibration: Split
    mode: str
    #: one line for the run's log when ``auto`` could not carve val and fell back to reusing it
    warning: str | None = None

    @property
    def disjoint(self) -> bool:
        return self.mode != "val_reused"

    def params(self) -> dict[str, Any]:
        """The run params: where calibration images came from and how many images and groups."""
        return {"calibration_source": self.mode,
                "calibration_images": len(self.calibration),
                "calibration_groups": int(len(set(self.calibration.group_ids))),
                "selection_images": len(self.selection),
                "selection_groups": int(len(set(self.selection.group_ids)))}

    def table(self) -> pd.DataFrame:
        """Every val image (id, group_id, label) and its role: ``selection``, ``calibration`` or
        ``selection+calibration``."""
        if self.mode == "carved":
            parts = [(self.selection, "selection"), (self.calibration, "calibration")]
        else:
            parts = [(self.calibration, "selection+calibration" if self.mode == "val_reused" else "calibration")]
        frames = [split.frame[["id", "group_id", "label"]].astype(str).assign(role=role) for split, role in parts]
        return pd.concat(frames, ignore_index=True)


def carve(val: Split, share: float = 0.5, seed: int = 0, images: int | None = None) -> tuple[Split, Split]:
    """``(selection, calibration)``: val's groups divided grouped and stratified by class, about
    ``share`` of its images (or about ``images`` images) to calibration.

    Every class with at least two groups in val gets a group on each side; a class with one
    group goes where the assignment puts it. Raises ValueError (one line) when val cannot be
    divided (fewer than two groups, or a side left empty)."""
    n = len(val)
    if images is not None:
        if images >= n:
            raise ValueError(f"evaluation.calibration_split.images = {images} but val has only {n} images; "
                             "ask for fewer, or set evaluation.calibration_split.source: val")
        share = images / n
    groups = val.group_ids
    if len(set(groups)) < 2:
        raise ValueError(f"val has {n} images in {len(set(groups))} group(s) (lesions, patients or single images): "
                         "it cannot be divided into a selection and a calibration part; use a larger val split or "
                         "set evaluation.calibration_split.source: val")
    meta = pd.DataFrame({"group_id": groups, "dx": val.frame["label"].astype(str).to_numpy()})
    # the grouped split's assignment with no test share: "train" is selection, "val" calibration
    where = grouped_split(meta, (1.0 - share, share, 0.0), seed=seed, group="group_id").to_numpy()
    selection_rows, calibration_rows = np.flatnonzero(where == "train"), np.flatnonzero(where == "val")
    if len(selection_rows) == 0 or len(calibration_rows) == 0:
        empty = "selection" if len(selection_rows) == 0 else "calibration"
        raise ValueError(f"carving {share:.2f} of val ({n} images, {len(set(groups))} groups) for calibration left the "
                         f"{empty} part empty; change evaluation.calibration_split.share or set "
                         "evaluation.calibration_split.source: val")
    selection = val.subset(selection_rows)
    calibration = val.subset(calibration_rows)
    calibration.name = CALIBRATION
    return selection, calibration


def calibration_split(val: Split, config: dict, classifier: Any = None) -> CalibrationSplit:
    """The run's :class:`CalibrationSplit` of ``val`` under ``evaluation.calibration_split``.

    With ``auto``, a val that cannot be carved (one group, or a side left empty) is reused for
    calibration, with a :attr:`CalibrationSplit.warning`; with ``carve`` that is an error."""
    settings = calibration_settings(config)
    source = settings.source
    if source == "auto":
        source = "carve" if classifier is None or selects_on_val(classifier) else "unselected"
    warning = None
    if source == "carve":
        try:
            selection, calibration = carve(val, settings.share, settings.seed, settings.images)
            return CalibrationSplit(selection, calibration, "carved")
        except ValueError as exc:
            if settings.source != "auto":
                raise
            source, warning = "val", (f"{exc}; calibrating on all of val, which selection also used "
                                      "(calibration_source: val_reused)")
    whole = val.subset(np.arange(len(val)))
    whole.name = CALIBRATION
    return CalibrationSplit(val, whole, "val_unselected" if source == "unselected" else "val_reused", warning)
