"""The training recipe: options read from the resolved config, class weights, precision choice.

The defaults in ``configs/resnet18.yaml`` are the original study's recipe (SEED_FACTS): AdamW
lr 5e-4, weight decay 1e-4, batch 32, 20 epochs, no scheduler, dropout before the head,
train-only augmentation, ImageNet normalisation, capped class weights, best-val-macro-F1 epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from derma_core.config import get_dotted
from derma_core.weighting import WEIGHTING_MODES, class_weights  # noqa: F401  (re-exported)

OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("none", "cosine", "onecycle")
SAMPLERS = ("none", "balanced")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

#: The original's epoch count, and ``train.epochs: auto`` on the built-in synthetic set (where
#: ResNet-18 from scratch reaches its plateau in about that many epochs, and the default job
#: `derma run --plugin resnet18` stays a few minutes long on a 2-core CPU).
SEED_EPOCHS = 20
SYNTHETIC_EPOCHS = 8


@dataclass
class Augmentation:
    """Train-only augmentation (the seed's: rotation 10 deg, translate 5 %, brightness 5 %, h-flip)."""

    enabled: bool = True
    rotation: float = 10.0
    translate: float = 0.05
    brightness: float = 0.05
    hflip: float = 0.5
    vflip: float = 0.0


@dataclass
class Recipe:
    """Every training option, read from the config by :func:`recipe_from_config`."""

    arch: str = "resnet18"
    arch_kwargs: dict = field(default_factory=dict)
    weights: str = "auto"
    dropout: float = 0.2
    epochs: int = SEED_EPOCHS
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "none"
    sampler: str = "none"
    label_smoothing: float = 0.0
    patience: int = 0
    image_size: int | None = None
    num_workers: int | None = None
    channels_last: bool | None = None
    precision: str = "auto"
    weighting: str = "capped"
    cap: float = 3.0
    checkpoint: str | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)

    def validate(self) -> "Recipe":
        checks = [
            ("train.optimizer", self.optimizer, OPTIMIZERS), ("train.scheduler", self.scheduler, SCHEDULERS),
            ("train.sampler", self.sampler, SAMPLERS), ("class_weighting.mode", self.weighting, WEIGHTING_MODES),
            ("precision", self.precision, PRECISIONS),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        positive = [("train.epochs", self.epochs), ("train.batch_size", self.batch_size), ("train.lr", self.lr)]
        for key, value in positive:
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.patience < 0:
            raise ValueError(f"train.patience must be >= 0 (0 turns early stopping off), got {self.patience!r}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"train.image_size must be >= 16 px (or null for the dataset's size), got {self.image_size}")
        return self

    def params(self) -> dict[str, Any]:
        """The options the core's curated params do not cover, for MLflow."""
        aug = self.augmentation
        return {"arch": self.arch, "arch_kwargs": self.arch_kwargs or "none", "patience": self.patience, "augmentation": aug.enabled, "aug_rotation": aug.rotation,
                "aug_translate": aug.translate, "aug_brightness": aug.brightness, "aug_hflip": aug.hflip,
                "aug_vflip": aug.vflip}


#: Where each recipe option lives in the resolved config. A value is cast to its default's type
#: (``None`` there, or a missing key, keeps the default); the options after it are taken as given.
AUGMENTATION_KEYS = {"enabled": "augmentation.enabled", "rotation": "augmentation.rotation",
                     "translate": "augmentation.translate", "brightness": "augmentation.brightness",
                     "hflip": "augmentation.hflip", "vflip": "augmentation.vflip"}
RECIPE_KEYS = {"arch": "model.arch", "weights": "model.weights", "dropout": "model.dropout",
               "batch_size": "train.batch_size", "lr": "train.lr", "weight_decay": "train.weight_decay",
               "optimizer": "train.optimizer", "scheduler": "train.scheduler", "sampler": "train.sampler",
               "label_smoothing": "train.label_smoothing", "patience": "train.patience", "precision": "precision",
               "weighting": "class_weighting.mode", "cap": "class_weighting.cap"}
AS_GIVEN_KEYS = {"image_size": "train.image_size", "num_workers": "train.num_workers",
                 "channels_last": "train.channels_last", "checkpoint": "checkpoint"}


def _typed(config: dict, cls: type, keys: dict[str, str]) -> dict[str, Any]:
    """``cls``'s options named in ``keys``, read from ``config`` and cast to their defaults' types."""
    defaults = cls()
    values = {}
    for name, key in keys.items():
        default = getattr(defaults, name)
        value = get_dotted(config, key, default)
        values[name] = default if value is None else type(default)(value)
    return values


def recipe_from_config(config: dict) -> Recipe:
    """The :class:`Recipe` of a resolved config (keys as in ``configs/resnet18.yaml``)."""
    epochs = get_dotted(config, "train.epochs")
    return Recipe(
        **_typed(config, Recipe, RECIPE_KEYS),
        **{name: get_dotted(config, key) for name, key in AS_GIVEN_KEYS.items()},
        arch_kwargs=dict(get_dotted(config, "model.kwargs") or {}),
        epochs=resolve_epochs("auto" if epochs is None else epochs, config),
        augmentation=Augmentation(**_typed(config, Augmentation, AUGMENTATION_KEYS)),
    ).validate()


def _synthetic(config: dict) -> bool:
    return get_dotted(config, "data.source") == "synthetic"


def resolve_epochs(epochs: Any, config: dict) -> int:
    """``auto`` -> the original's 20 epochs on real data, :data:`SYNTHETIC_EPOCHS` on the
    built-in synthetic set; an integer is kept."""
    if epochs == "auto":
        return SYNTHETIC_EPOCHS if _synthetic(config) else SEED_EPOCHS
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise ValueError(f"train.epochs must be a whole number or auto, got {epochs!r}")
    return epochs


def resolve_weights(weights: str, config: dict) -> str:
    """``auto`` -> ``none`` on the built-in synthetic data (drawings, trained from scratch, and
    no download needed offline), ``imagenet`` on everything else (the original recipe)."""
    if weights != "auto":
        return weights
    return "none" if _synthetic(config) else "imagenet"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16/AMX via oneDNN).

    Without it, bf16 autocast on the CPU is emulated and several times slower than fp32
    (measured ~8x slower on the project's 2-core AVX2 machine), so ``auto`` keeps fp32 there.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA GPUs that support it (else fp16 with loss scaling), bf16 on CPUs
    with native bf16, fp32 elsewhere (MPS, older CPUs). An explicit choice is kept as is."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def resolve_channels_last(channels_last: bool | None, device: str, precision: str) -> bool:
    """``null`` -> channels_last on CUDA and on the CPU (oneDNN's fast layout: on the project's
    2-core AVX2 CPU it measured 6-22 % faster than NCHW for fp32 training at 128-224 px, even
    at 64 px), NCHW on MPS."""
    if channels_last is not None:
        return bool(channels_last)
    return device.startswith("cuda") or device == "cpu"


def resolve_num_workers(num_workers: int | None, device: str, cached: bool) -> int:
    """``null`` -> 0 on the CPU with a prep cache (batches are one memmap gather; workers would
    only compete with compute for cores), else up to 4 background workers (GPU feeding,
    decoding JPEGs when there is no cache)."""
    import os

    if num_workers is not None:
        if num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0 (or null for automatic), got {num_workers}")
        return int(num_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device == "cpu" and cached:
        return 0
    return max(0, min(4, cores - 1))
