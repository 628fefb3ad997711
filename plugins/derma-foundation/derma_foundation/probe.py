"""The ``linear_probe`` backend: logistic regression on frozen foundation-model image features.

Features come from :mod:`.features` (an open_clip image tower or any timm model, cached on disk,
so a second run or every trial of a tuning study reuses them). On the train features a
standardiser and a multinomial ``sklearn.linear_model.LogisticRegression`` (lbfgs) are fitted
once per value of the inverse regularisation ``probe.C`` grid; the value with the best
validation macro-F1 is kept (ties: the smaller C, i.e. the stronger regularisation). Class
weights are the CNN's (:func:`derma_core.weighting.class_weights`). ``train.fraction`` trains on
a stratified, grouped share of train (whole lesions or patients; label efficiency: 0.01, 0.1, 1.0).
The probe has one output per class of the training split's label set (any number of classes);
it predicts only on splits with those classes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from derma_core.config import get_dotted
from derma_core.data.splits import grouped_split
from derma_core.evaluation.metrics import classification_metrics
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LabelSet
from derma_core.weighting import class_weights

from .encoders import ImageEncoder, build_encoder, resolved_values
from .features import split_features


def fraction_rows(split: Split, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a stratified, grouped ``fraction`` of ``split`` (all rows at 1.0); every
    class keeps at least one group (:func:`derma_core.data.splits.grouped_split`)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train.fraction must be in (0, 1], got {fraction!r}")
    if fraction >= 1:
        return np.arange(len(split))
    meta = pd.DataFrame({"dx": split.labels, "group_id": split.group_ids})
    where = grouped_split(meta, (fraction, 1.0 - fraction, 0.0), seed=seed)
    return np.flatnonzero(where.to_numpy() == "train")


def full_probabilities(model, features: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, K)`` probabilities in the label set's order (K = ``num_classes``; 0 for a class the
    probe never saw in training)."""
    probs = np.zeros((len(features), num_classes), dtype=np.float64)
    # float64 in: sklearn computes in the input's dtype, and float32 rows miss summing to one
    probs[:, model.classes_] = model.predict_proba(np.asarray(features, dtype=np.float64))
    return probs


class LinearProbeClassifier:
    """A linear probe on frozen features (see the module docstring)."""

    name = "linear_probe"

    def __init__(self, config: dict) -> None:
        self.config = config
        self.encoder: ImageEncoder | None = None
        self.model = None
        self.best_C: float | None = None
        self.label_set: LabelSet | None = None  # the classes the probe was fitted on
        grid = get_dotted(config, "probe.C", [0.01, 0.1, 1.0, 10.0])
        self.grid = sorted(float(c) for c in (grid if isinstance(grid, list) else [grid]))
        if not self.grid or min(self.grid) <= 0:
            raise ValueError(f"probe.C must be a list of positive numbers, got {grid!r}")
        self.weighting = str(get_dotted(config, "class_weighting.mode", "none"))
        self.cap = float(get_dotted(config, "class_weighting.cap", 3.0))
        self.fraction = float(get_dotted(config, "train.fraction", 1.0))
        self.max_iter = int(get_dotted(config, "probe.max_iter", 1000))

    def _encoder(self, ctx: RunContext) -> ImageEncoder:
        if self.encoder is None:
            self.encoder = build_encoder(self.config).to(torch.device(ctx.device))
        return self.encoder

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """The model ``auto`` names, its input size and the precision (the runner logs them)."""
        return resolved_values(self._encoder(ctx), self.config, ctx.device)

    def _features(self, split: Split, ctx: RunContext) -> tuple[np.ndarray, bool]:
        self._encoder(ctx)
        return split_features(self.encoder, split, self.config, torch.device(ctx.device), progress=ctx.progress,
                              quiet=ctx.quiet)

    def _fit_one(self, C: float, x: np.ndarray, y: np.ndarray, weights: dict | None):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter, class_weight=weights)
                             ).fit(x, y)

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        train.label_set.require_same(val.label_set, f"validation split {val.name!r}",
                                     "train and val must have the same classes")
        self.label_set = train.label_set
        k = len(self.label_set)
        x_train, hit_train = self._features(train, ctx)
        x_val, hit_val = self._features(val, ctx)
        rows = fraction_rows(train, self.fraction, ctx.seed)
        x, y = np.asarray(x_train[rows], dtype=np.float64), np.asarray(train.y)[rows]
        cw = class_weights(y, self.weighting, self.cap, num_classes=k)
        weights = None if cw is None else {int(c): float(cw[c]) for c in np.unique(y)}
        scores = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget; the val score judges
            for step, C in enumerate(ctx.progress(self.grid, desc="probe C grid")):
                model = self._fit_one(C, x, y, weights)
                f1 = classification_metrics(val.y, full_probabilities(model, x_val, k).argmax(axis=1), k)["macro_f1"]
                scores.append((f1, C, model))
                ctx.log_metrics({"probe_C": C, "probe_val_macro_f1": float(f1)}, step=step)
        best = max(range(len(scores)), key=lambda i: (scores[i][0], -scores[i][1]))
        f1, self.best_C, self.model = scores[best]
        ctx.tracker.log_params({
            "resolved_model": self.encoder.identity["name"], "pretrained": self.encoder.identity.get("pretrained") or "hub",
            "random_weights": self.encoder.random_weights, "input_size": self.encoder.preprocess.size,
            "feature_dim": int(x_train.shape[1]), "probe_C_grid": self.grid, "train_fraction": self.fraction,
            "train_images_used": int(len(rows)),
            "train_groups_used": int(len(set(np.asarray(train.group_ids)[rows]))),
            "class_weights": "none" if cw is None else [round(float(w), 4) for w in cw],
            "features_cached_train": hit_train, "features_cached_val": hit_val,
        })
        ctx.log_metrics({"best_C": float(self.best_C), "best_val_macro_f1": float(f1)})
        ctx.tracker.set_tags({"derma.best_C": self.best_C})

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        if self.model is None:
            raise RuntimeError("linear_probe: predict() called before fit()")
        split.label_set.require_same(self.label_set, "this linear probe",
                                     f"split {split.name!r} must have the classes it was fitted on")
        feats, cached = self._features(split, ctx)
        probs = full_probabilities(self.model, feats, len(self.label_set))
        return Predictions(ids=split.ids, labels=split.label_set.decode(probs.argmax(axis=1)), probabilities=probs,
                           label_set=split.label_set,
                           info={"best_C": self.best_C, "features_cached": cached})
