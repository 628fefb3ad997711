"""The ``resnet18`` backend (alias ``cnn``): :class:`ResNet18Classifier` (fit, predict, log_model).

``model.arch`` picks the network (``resnet18``: torchvision's, the default; any timm name). The
head has one output per class of the training split's label set; checkpoints and the logged
model record that label set, and a checkpoint is only loaded on a dataset with the same classes.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

from derma_core.config import get_dotted
from derma_core.evaluation.probabilities import softmax
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LabelSet

from .checkpoint import load_checkpoint, require_same_labels
from .data import SplitImages
from .model import ProbabilityModel, build_model, build_net, is_timm_arch, load_weights_into, timm_preprocessing
from .recipe import (class_weights, recipe_from_config, resolve_channels_last, resolve_num_workers,
                     resolve_precision, resolve_weights)
from .training import Runtime, curves_figure, predict_logits, train


class ResNet18Classifier:
    """A CNN (torchvision ResNet-18 by default, any timm model with ``model.arch``) trained with
    the original study's recipe (see ``configs/resnet18.yaml``)."""

    name = "resnet18"

    def __init__(self, config: dict) -> None:
        self.config = config
        self.recipe = recipe_from_config(config)
        self.model: torch.nn.Module | None = None
        self.runtime: Runtime | None = None
        self.image_size: int | None = None
        self.best_epoch: int | None = None
        self.label_set: LabelSet | None = None  # the classes the model was trained on

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

    def _input_size(self, split: Split, weights: str = "none") -> int:
        """``train.image_size``; else, for a timm model with pretrained weights, the input size of
        its pretrained config; else the dataset's prepared size."""
        if self.recipe.image_size:
            return int(self.recipe.image_size)
        if is_timm_arch(self.recipe.arch) and weights == "imagenet":
            return timm_preprocessing(self.recipe.arch, self.recipe.arch_kwargs).input_size
        if split.cache is not None:
            return int(split.cache.shape[1])
        return int(get_dotted(self.config, "data.size", 224))

    def _to_device(self, model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
        fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
        return model.to(device=rt.device, memory_format=fmt)

    def _checkpoint(self, label_set: LabelSet) -> dict:
        """The ``checkpoint: PATH`` file, read once (resolve and fit both need it); refused in one
        line when it was trained on other classes than ``label_set`` (the dataset's)."""
        if getattr(self, "_loaded_checkpoint", None) is None:
            self._loaded_checkpoint = load_checkpoint(Path(self.recipe.checkpoint).expanduser())
        require_same_labels(self._loaded_checkpoint, label_set, f"checkpoint={self.recipe.checkpoint}",
                            "evaluate it on a dataset with those classes, or train a model on this one")
        return self._loaded_checkpoint

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """What this run's ``auto`` values are (the runner logs them as the curated params):
        weights, epochs, precision, and the image side it trains and predicts at (a 32 px
        prepared folder is 32). ``fit`` uses the same functions, so these are what runs."""
        recipe = self.recipe
        train_split = dataset["train"]
        precision = resolve_precision(recipe.precision, ctx.device)
        out = {"precision": precision,
               "train.channels_last": resolve_channels_last(recipe.channels_last, ctx.device, precision),
               "train.num_workers": resolve_num_workers(recipe.num_workers, ctx.device, train_split.cache is not None)}
        if recipe.checkpoint:  # evaluation of a trained model: no training in this run
            ck = self._checkpoint(train_split.label_set)
            out.update({"model.weights": f"checkpoint:{recipe.checkpoint}", "train.epochs": 0,
                        "train.image_size": int(recipe.image_size or ck.get("image_size")
                                                or self._input_size(train_split))})
            return out
        weights = resolve_weights(recipe.weights, self.config)
        out.update({"model.weights": weights, "train.epochs": int(recipe.epochs),
                    "train.image_size": self._input_size(train_split, weights)})
        return out

    # -- Classifier protocol --------------------------------------------------------------------
    def fit(self, train_split: Split, val_split: Split, ctx: RunContext) -> None:
        """Train (or, with ``checkpoint: PATH``, load a trained model without training)."""
        recipe = self.recipe
        rt = self.runtime = self._runtime(ctx, train_split.cache is not None)
        if recipe.checkpoint:
            self._load_for_evaluation(recipe.checkpoint, ctx, rt, train_split)
            return
        weights = resolve_weights(recipe.weights, self.config)
        size = self.image_size = self._input_size(train_split, weights)
        if rt.rank == 0 and train_split.cache is None:
            print("resnet18: the train split has no prep cache: decoding JPEGs every epoch (slow); "
                  "`derma prep` builds the cache", file=sys.stderr)
        self.label_set = train_split.label_set
        model = build_model(weights, recipe.dropout, self.label_set, progress=not ctx.quiet, arch=recipe.arch,
                            kwargs=recipe.arch_kwargs, image_size=size)
        self.model = self._to_device(model, rt)
        cw = class_weights(train_split.y, recipe.weighting, recipe.cap, num_classes=len(self.label_set))
        # weights, epochs, precision, image size, world size: the curated params (see resolve)
        ctx.tracker.log_params({
            **recipe.params(),
            "num_workers": rt.num_workers,
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
        ck = self._checkpoint(train_split.label_set)
        self.label_set = train_split.label_set
        state = ck.get("best_model") or ck["model"]
        ck_config = ck.get("config") or {}
        dropout = float(get_dotted(ck_config, "model.dropout", 0.0) or 0.0)
        arch = str(get_dotted(ck_config, "model.arch", "resnet18") or "resnet18")
        size = int(self.recipe.image_size or ck.get("image_size") or self._input_size(train_split))
        model = build_net(arch, dropout, len(self.label_set), get_dotted(ck_config, "model.kwargs") or {}, size)
        load_weights_into(model, state, f"checkpoint={path}")
        self.model = self._to_device(model, rt)
        self.image_size = size
        self.best_epoch = int(ck.get("best_epoch") or ck.get("epoch") or 0)
        ctx.tracker.set_tags({"derma.evaluated_checkpoint": str(path), "derma.best_epoch": self.best_epoch})
        ctx.tracker.log_params({"checkpoint": str(path)})

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        """Class probabilities (softmax) for every image of ``split``; the label is the argmax."""
        if self.model is None or self.runtime is None:
            raise RuntimeError("resnet18: predict() called before fit()")
        split.label_set.require_same(self.label_set, "this resnet18 model", f"split {split.name!r} must have "
                                     "the classes it was trained on")
        logits = predict_logits(self.model, SplitImages(split, self.image_size), self.runtime,
                                max(self.recipe.batch_size, 64), self.image_size, desc=f"predict {split.name}",
                                progress=ctx.progress)
        probs = softmax(logits)
        labels = split.label_set.decode(probs.argmax(axis=1))
        return Predictions(ids=split.ids, labels=labels, probabilities=probs, label_set=split.label_set,
                           info={"best_epoch": self.best_epoch, "image_size": self.image_size,
                                 "precision": self.runtime.precision})

    def inference_model(self) -> ProbabilityModel:
        """A CPU copy of the trained network taking uint8 ``(B, H, W, 3)`` images, giving probabilities."""
        if self.model is None:
            raise RuntimeError("resnet18: no trained model")
        net = copy.deepcopy(self.model).to(device="cpu", memory_format=torch.contiguous_format)
        return ProbabilityModel(net, self.image_size).eval()

    def log_model(self, ctx: RunContext) -> str | None:
        """Log the model with ``mlflow.pytorch`` (rank 0 only): MLflow's default ``pt2`` format
        (``torch.export``, loadable without derma installed) with a signature inferred from a
        uint8 input example. The example holds two images so the batch dimension stays dynamic.
        The model's metadata records its classes (``classes``: the output columns' codes in order;
        ``label_set``: the whole label set), read back with ``mlflow.models.get_model_info(uri).metadata``."""
        if not ctx.is_main_process or self.model is None:
            return None
        model = self.inference_model()
        example = np.zeros((2, self.image_size, self.image_size, 3), dtype=np.uint8)
        return ctx.tracker.log_pytorch_model(model, name="model", input_example=example, serialization_format="pt2",
                                             metadata=model_metadata(self.label_set))


def model_metadata(label_set: LabelSet) -> dict:
    """The logged model's MLflow metadata: its output columns' class codes and the label set."""
    return {"classes": list(label_set.codes), "label_set": label_set.to_dict(),
            "output": "class probabilities (batch, classes), one column per class in `classes` order"}
