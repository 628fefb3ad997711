"""The ``resnet18`` backend: :class:`ResNet18Classifier` (fit, predict, log_model)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from derma_core.config import get_dotted
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LABELS

from .checkpoint import load_checkpoint
from .data import SplitImages
from .model import DermaResNet18, ProbabilityModel, build_model, load_into
from .recipe import (class_weights, recipe_from_config, resolve_channels_last, resolve_num_workers,
                     resolve_precision, resolve_weights)
from .training import Runtime, curves_figure, predict_logits, softmax, train


class ResNet18Classifier:
    """torchvision ResNet-18 trained with the original study's recipe (see ``configs/resnet18.yaml``)."""

    name = "resnet18"

    def __init__(self, config: dict) -> None:
        self.config = config
        self.recipe = recipe_from_config(config)
        self.model: DermaResNet18 | None = None
        self.runtime: Runtime | None = None
        self.image_size: int | None = None
        self.best_epoch: int | None = None

    # -- setup --------------------------------------------------------------------------------
    def _runtime(self, ctx: RunContext, cached: bool) -> Runtime:
        device = torch.device(ctx.device)
        if device.type == "cuda":
            if device.index is not None:
                torch.cuda.set_device(device)
            if not self.config.get("deterministic", True):
                torch.backends.cudnn.benchmark = True
        precision = resolve_precision(self.recipe.precision, ctx.device)
        return Runtime(device=device, precision=precision,
                       channels_last=resolve_channels_last(self.recipe.channels_last, ctx.device, precision),
                       num_workers=resolve_num_workers(self.recipe.num_workers, ctx.device, cached),
                       rank=ctx.rank, world=ctx.world_size, quiet=ctx.quiet)

    def _input_size(self, split: Split) -> int:
        if self.recipe.image_size:
            return int(self.recipe.image_size)
        if split.cache is not None:
            return int(split.cache.shape[1])
        return int(get_dotted(self.config, "data.size", 224))

    def _to_device(self, model: DermaResNet18, rt: Runtime) -> DermaResNet18:
        fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
        return model.to(device=rt.device, memory_format=fmt)

    # -- Classifier protocol --------------------------------------------------------------------
    def fit(self, train_split: Split, val_split: Split, ctx: RunContext) -> None:
        """Train (or, with ``checkpoint: PATH``, load a trained model without training)."""
        recipe = self.recipe
        rt = self.runtime = self._runtime(ctx, train_split.cache is not None)
        if recipe.checkpoint:
            self._load_for_evaluation(recipe.checkpoint, ctx, rt, train_split)
            return
        size = self.image_size = self._input_size(train_split)
        weights = resolve_weights(recipe.weights, self.config)
        if rt.rank == 0 and train_split.cache is None:
            print("resnet18: the train split has no prep cache: decoding JPEGs every epoch (slow); "
                  "`derma prep` builds the cache", file=sys.stderr)
        model = build_model(weights, recipe.dropout, progress=not ctx.quiet)
        self.model = self._to_device(model, rt)
        cw = class_weights(train_split.y, recipe.weighting, recipe.cap)
        ctx.tracker.log_params({
            **recipe.params(),
            "resolved_weights": weights, "resolved_precision": rt.precision,
            "resolved_channels_last": rt.channels_last, "num_workers": rt.num_workers,
            "train_image_size": size, "world_size": rt.world,
            "class_weights": "none" if cw is None else [round(float(w), 4) for w in cw],
        })
        state = train(self.model, SplitImages(train_split, size), SplitImages(val_split, size), recipe, rt, ctx,
                      size, cw, self.config)
        self.best_epoch = state.best_epoch
        if rt.rank == 0 and state.history:
            ctx.log_metrics({"best_epoch": float(state.best_epoch), "best_val_macro_f1": float(state.best_score),
                             "epochs_trained": float(state.epoch)})
            ctx.tracker.set_tags({"derma.best_epoch": state.best_epoch})
            import pandas as pd

            ctx.tracker.log_table(pd.DataFrame(state.history), "tables/training_history.csv")
            ctx.tracker.log_figure(curves_figure(state.history, state.best_epoch), "figures/training_curves.png")

    def _load_for_evaluation(self, path: str, ctx: RunContext, rt: Runtime, train_split: Split) -> None:
        ck = load_checkpoint(Path(path).expanduser())
        state = ck.get("best_model") or ck["model"]
        dropout = float(get_dotted(ck.get("config") or {}, "model.dropout", 0.0) or 0.0)
        model = DermaResNet18(len(LABELS), dropout)
        load_into(model, state, f"checkpoint={path}")
        self.model = self._to_device(model, rt)
        self.image_size = int(self.recipe.image_size or ck.get("image_size") or self._input_size(train_split))
        self.best_epoch = int(ck.get("best_epoch") or ck.get("epoch") or 0)
        ctx.tracker.set_tags({"derma.evaluated_checkpoint": str(path), "derma.best_epoch": self.best_epoch})
        ctx.tracker.log_params({"checkpoint": str(path), "resolved_precision": rt.precision,
                                "train_image_size": self.image_size})

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        """Class probabilities (softmax) for every image of ``split``; the label is the argmax."""
        if self.model is None or self.runtime is None:
            raise RuntimeError("resnet18: predict() called before fit()")
        logits = predict_logits(self.model, SplitImages(split, self.image_size), self.runtime,
                                max(self.recipe.batch_size, 64), self.image_size, desc=f"predict {split.name}",
                                progress=ctx.progress)
        probs = softmax(logits)
        labels = [LABELS[i] for i in probs.argmax(axis=1)]
        return Predictions(ids=split.ids, labels=labels, probabilities=probs,
                           info={"best_epoch": self.best_epoch, "image_size": self.image_size,
                                 "precision": self.runtime.precision})

    def inference_model(self) -> ProbabilityModel:
        """A CPU copy of the trained network taking uint8 ``(B, H, W, 3)`` images, giving probabilities."""
        if self.model is None:
            raise RuntimeError("resnet18: no trained model")
        net = DermaResNet18(self.model.head.out_features, self.model.dropout.p)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return ProbabilityModel(net, self.image_size).eval()

    def log_model(self, ctx: RunContext) -> str | None:
        """Log the model with ``mlflow.pytorch`` (rank 0 only): MLflow's default ``pt2`` format
        (``torch.export``, loadable without derma installed) with a signature inferred from a
        uint8 input example. The example holds two images so the batch dimension stays dynamic."""
        if not ctx.is_main_process or self.model is None:
            return None
        model = self.inference_model()
        example = np.zeros((2, self.image_size, self.image_size, 3), dtype=np.uint8)
        return ctx.tracker.log_pytorch_model(model, name="model", input_example=example, serialization_format="pt2")
