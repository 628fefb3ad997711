"""The network: torchvision's ResNet-18 with dropout before a 7-way head, and its weights.

The original used timm's ``resnet18(drop_rate=p)``: global average pool, dropout, linear head.
:class:`DermaResNet18` is the same architecture on torchvision's backbone; ``weights``
``imagenet`` loads ``ResNet18_Weights.IMAGENET1K_V1`` into it.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from derma_core.labels import NUM_CLASSES

#: ImageNet normalisation (the seed's, and torchvision's weights').
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Weights could not be loaded; the message names the file and what to do."""


class DermaResNet18(nn.Module):
    """ResNet-18 backbone -> global pool -> dropout -> linear head (``num_classes``)."""

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


def imagenet_cache_file() -> Path:
    """Where torch's hub cache keeps the ImageNet weights (``$TORCH_HOME/hub/checkpoints/...``)."""
    url = ResNet18_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights, from the hub cache or downloaded into it.

    Offline without the cached file: a one-line :class:`WeightsError` naming the file to put there.
    """
    url = ResNet18_Weights.IMAGENET1K_V1.url
    target = imagenet_cache_file()
    if target.exists():
        return _load_file(target, "model.weights=imagenet")
    try:
        # check_hash: the file name carries the first digits of its sha256
        return torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"model.weights=imagenet: cannot download {url} ({reason}); offline, put that file at {target} "
            "(or set TORCH_HOME), or use -o model.weights=none / -o model.weights=PATH") from None


def _load_file(path: Path, what: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{what}: {path} does not exist") from None
    except Exception as exc:  # unpickling errors, truncated files, non-tensor pickles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{what}: {path} is not a loadable state dict ({first}); "
                           "save one with torch.save(model.state_dict(), path)") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{what}: {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def read_weights_file(path: str | os.PathLike, what: str = "model.weights") -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (loaded with ``weights_only=True``; ``.safetensors`` too).

    Accepts a plain state dict, a derma checkpoint (its ``best_model`` or ``model``) or a
    ``{"state_dict": ...}`` wrapper.
    """
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{what}: {path} is a .safetensors file; pip install safetensors") from None
        if not path.exists():
            raise WeightsError(f"{what}: {path} does not exist")
        return load_file(str(path))
    obj = _load_file(path, what)
    for key in ("best_model", "model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _load_strict(module: nn.Module, state: dict, source: str, what: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split("\n")[1:2]).strip() or str(exc).splitlines()[0]
        raise WeightsError(f"{source}: not {what} ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{source}: not {what} (missing {result.missing_keys[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]})")


def load_into(model: DermaResNet18, state: dict[str, torch.Tensor], source: str) -> str:
    """Load ``state`` into ``model``: derma's layout (``backbone.*``/``head.*``) fully, or
    torchvision's (``conv1.*`` ... ``fc.*``) into the backbone, with its ``fc`` only when it is
    7-way. Returns what was loaded ("full" or "backbone"); mismatches are one-line errors."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved dicts
    if any(k.startswith("backbone.") for k in state):
        _load_strict(model, state, source, "a DermaResNet18 state dict")
        return "full"
    head = {k[3:]: v for k, v in state.items() if k.startswith("fc.")}
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_strict(model.backbone, body, source, "a ResNet-18 state dict")
    if head.get("weight") is not None and tuple(head["weight"].shape) == tuple(model.head.weight.shape):
        _load_strict(model.head, head, source, "a 7-way ResNet-18 head")
        return "full"
    return "backbone"


def build_model(weights: str, dropout: float, num_classes: int = NUM_CLASSES, progress: bool = True) -> DermaResNet18:
    """A :class:`DermaResNet18` with ``weights``: ``imagenet``, ``none`` (random init) or a PATH."""
    model = DermaResNet18(num_classes, dropout)
    if weights == "none":
        return model
    if weights == "imagenet":
        load_into(model, imagenet_state_dict(progress), "ImageNet weights")
        return model
    if weights == "auto":
        raise ValueError("model.weights=auto must be resolved (recipe.resolve_weights) before build_model")
    load_into(model, read_weights_file(weights), f"model.weights={weights}")
    return model


class ProbabilityModel(nn.Module):
    """What is logged to MLflow: RGB uint8 images ``(B, H, W, 3)`` in, class probabilities
    ``(B, 7)`` out (LABELS order). Resizing to the trained size and ImageNet normalisation are
    inside, so the logged model needs no derma code to preprocess."""

    def __init__(self, net: DermaResNet18, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return torch.softmax(self.net(x), dim=1)
