"""Class weights from train labels, the original study's: ``w_c = N / (K * count_c)``.

One implementation for every trained backend (the CNN's loss weights, the linear probe's
``class_weight``, the LoRA answer-token loss), for any label set: ``K`` is the number of classes
present in train (scikit-learn's ``compute_class_weight("balanced")``; the seed split has all
seven, so K = 7 there), which keeps the mean weight of a training image at 1.
"""

from __future__ import annotations

import numpy as np

#: ``balanced`` is scikit-learn's name for ``uncapped`` (the same formula).
WEIGHTING_MODES = ("none", "capped", "uncapped")


def class_weights(labels: np.ndarray, mode: str = "capped", cap: float = 3.0, *,
                  num_classes: int) -> np.ndarray | None:
    """The original study's class weights from train label indices: ``w_c = N / (K * count_c)``.

    ``num_classes`` is the size of the dataset's label set (``len(split.label_set)``): labels are
    indices ``0..num_classes-1`` and one weight per class is returned. ``K`` is the number of
    classes present in ``labels`` (all of them on a real train split). ``mode`` ``none`` returns
    None (plain cross-entropy); ``capped`` clips every weight at ``cap``; ``uncapped`` (alias
    ``balanced``) keeps them. A class absent from ``labels`` gets weight 0 (it has no training
    examples to weigh, and an infinite weight would poison the validation loss).
    """
    if mode == "balanced":
        mode = "uncapped"
    if mode not in WEIGHTING_MODES:
        raise ValueError(f"class_weighting.mode must be one of {', '.join(WEIGHTING_MODES)}, got {mode!r}")
    if mode == "none":
        return None
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"class weights: num_classes must be at least 2 (the label set's size), got {num_classes!r}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("class weights: the train split is empty")
    bad = labels[(labels < 0) | (labels >= k)]
    if bad.size:
        raise ValueError(f"class weights: label index {int(bad[0])} is outside 0..{k - 1} "
                         f"(the label set has {k} classes)")
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(labels) / (np.count_nonzero(counts) * counts), 0.0)
    if mode == "capped":
        if not cap > 0:
            raise ValueError(f"class_weighting.cap must be > 0, got {cap!r}")
        weights = np.minimum(weights, float(cap))
    return weights
