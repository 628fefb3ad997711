"""The network: a backbone with dropout before a K-way head (K = the dataset's classes), and its weights.

The original used timm's ``resnet18(drop_rate=p)``: global average pool, dropout, linear head.
``model.arch: resnet18`` (the default) is :class:`DermaResNet18`, the same architecture on
torchvision's backbone; ``weights: imagenet`` loads ``ResNet18_Weights.IMAGENET1K_V1`` into it.
Any other ``model.arch`` is a timm model name (``convnext_atto``, ``vit_tiny_patch16_224``;
``timm:resnet18`` for timm's own ResNet-18, the original's): :class:`TimmNet`, built with
``timm.create_model(name, num_classes=0, **model.kwargs)``, with timm's pretrained weights
(``weights: imagenet``, through the Hugging Face hub cache) and the model's own preprocessing.
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from derma_core.labels import LabelSet

from .checkpoint import checkpoint_labels

#: ImageNet normalisation (the seed's, and torchvision's weights').
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """Weights could not be loaded; the message names the file and what to do."""


class DermaResNet18(nn.Module):
    """ResNet-18 backbone -> global pool -> dropout -> linear head (``num_classes``: the size
    of the dataset's label set)."""

    def __init__(self, num_classes: int, dropout: float = 0.0) -> None:
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


def read_weights_file(path: str | os.PathLike, what: str = "model.weights",
                      label_set: LabelSet | None = None) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (loaded with ``weights_only=True``; ``.safetensors`` too).

    Accepts a plain state dict, a derma checkpoint (its ``best_model`` or ``model``) or a
    ``{"state_dict": ...}`` wrapper. A derma checkpoint trained on other classes than
    ``label_set`` (the run's) is refused in one line naming both class lists.
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
    trained = checkpoint_labels(obj)
    if label_set is not None and trained is not None:
        label_set.require_same(trained, f"{what}={path}", "use weights trained on this dataset's classes, "
                               "or backbone-only weights (model.weights=imagenet or a torchvision/timm state dict)")
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
    torchvision's (``conv1.*`` ... ``fc.*``) into the backbone, with its ``fc`` only when it has
    the head's shape. Returns what was loaded ("full" or "backbone"); mismatches are one-line errors."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved dicts
    if any(k.startswith("backbone.") for k in state):
        _load_strict(model, state, source, "a DermaResNet18 state dict")
        return "full"
    head = {k[3:]: v for k, v in state.items() if k.startswith("fc.")}
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_strict(model.backbone, body, source, "a ResNet-18 state dict")
    if head.get("weight") is not None and tuple(head["weight"].shape) == tuple(model.head.weight.shape):
        _load_strict(model.head, head, source, f"a {model.head.out_features}-way ResNet-18 head")
        return "full"
    return "backbone"


#: The arch that is torchvision's ResNet-18 (today's default); every other name goes to timm.
TORCHVISION_ARCH = "resnet18"


def is_timm_arch(arch: str) -> bool:
    return arch != TORCHVISION_ARCH


def timm_name(arch: str) -> str:
    """The timm model name of ``arch`` (``timm:resnet18`` -> ``resnet18``)."""
    return arch.removeprefix("timm:")


@dataclass(frozen=True)
class Preprocessing:
    """What a network expects: input side (px) and per-channel mean/std on [0, 1] values."""

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def timm_preprocessing(arch: str, kwargs: dict | None = None) -> Preprocessing:
    """The pretrained config's preprocessing of a timm model (``timm.data.resolve_data_config``)."""
    timm = _timm()
    name = timm_name(arch)
    if not timm.is_model(name):
        raise WeightsError(f"model.arch={arch}: not torchvision's resnet18 nor a timm model "
                           "(list them with `python -c \"import timm; print(timm.list_models())\"`)")
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {})
    size = int((kwargs or {}).get("img_size") or data["input_size"][-1])
    return Preprocessing(size, tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))


def _timm():
    try:
        import timm
    except ImportError:
        raise WeightsError("model.arch names a timm model but timm is not installed: pip install timm") from None
    return timm


class TimmNet(nn.Module):
    """A timm backbone (pooled features) -> dropout -> linear head, fed ImageNet-normalised input.

    The data path normalises every batch with ImageNet's mean/std (the seed's); a model whose
    pretrained config has another mean/std (ViTs' 0.5/0.5, CLIP's) gets its own normalisation
    back from a fixed per-channel affine map, ``x * scale + shift`` (exact, and cheaper than
    a second normalisation pass), so ``training.py`` and the logged model need no per-arch code.
    """

    def __init__(self, arch: str, num_classes: int, dropout: float = 0.0,
                 kwargs: dict | None = None, image_size: int | None = None, pretrained: bool = False) -> None:
        super().__init__()
        timm = _timm()
        name = timm_name(arch)
        self.arch, self.kwargs = arch, dict(kwargs or {})
        extra = dict(self.kwargs)
        prep = timm_preprocessing(arch, kwargs)
        cfg = _pretrained_cfg(name)
        if image_size and cfg.get("fixed_input_size") and "img_size" not in extra:
            extra["img_size"] = int(image_size)  # ViTs: position embeddings for this side
        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
        except TypeError as exc:
            raise WeightsError(f"model.kwargs={self.kwargs}: timm's {name} does not take them ({exc})") from None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(self.backbone.num_features), num_classes)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        own_mean, own_std = torch.tensor(prep.mean), torch.tensor(prep.std)
        self.register_buffer("in_scale", (std / own_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean - own_mean) / own_std).view(1, 3, 1, 1), persistent=False)
        self.renormalise = bool(prep.mean != IMAGENET_MEAN or prep.std != IMAGENET_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        return self.head(self.dropout(self.backbone(x)))


def _pretrained_cfg(name: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _timm_pretrained(arch: str, dropout: float, num_classes: int, kwargs: dict | None,
                     image_size: int | None) -> TimmNet:
    """A :class:`TimmNet` with timm's pretrained weights; offline without them, one line saying what to do."""
    name = timm_name(arch)
    try:
        return TimmNet(arch, num_classes, dropout, kwargs, image_size, pretrained=True)
    except WeightsError:
        raise
    except Exception as exc:  # hub/network errors come in many types (OSError, HfHubHTTPError, LocalEntryNotFoundError)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hub = _pretrained_cfg(name).get("hf_hub_id") or name
        raise WeightsError(
            f"model.weights=imagenet: cannot load timm's pretrained {name} ({reason}); offline, put it in the "
            f"Hugging Face cache first (`huggingface-cli download {hub}` on a connected machine, copy HF_HOME), "
            "or use -o model.weights=none / -o model.weights=PATH") from None


def load_timm_into(model: TimmNet, state: dict[str, torch.Tensor], source: str) -> str:
    """Load a derma state dict (``backbone.*``/``head.*``) fully, or a timm model's state dict into
    the backbone (its classifier keys are dropped: the K-way head stays fresh)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        _load_strict(model, state, source, f"a derma {model.arch} state dict")
        return "full"
    own = set(model.backbone.state_dict())
    body = {k: v for k, v in state.items() if k in own}
    if not body:
        raise WeightsError(f"{source}: not a {timm_name(model.arch)} state dict (no matching keys; "
                           f"first keys {list(state)[:3]})")
    _load_strict(model.backbone, body, source, f"a {timm_name(model.arch)} state dict")
    return "backbone"


def build_net(arch: str, dropout: float, num_classes: int, kwargs: dict | None = None,
              image_size: int | None = None) -> nn.Module:
    """The untrained network of ``arch`` (random init; what checkpoints are loaded into)."""
    if not is_timm_arch(arch):
        return DermaResNet18(num_classes, dropout)
    return TimmNet(arch, num_classes, dropout, kwargs, image_size)


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> str:
    """:func:`load_into` for either kind of network."""
    if isinstance(model, TimmNet):
        return load_timm_into(model, state, source)
    return load_into(model, state, source)


def build_model(weights: str, dropout: float, label_set: LabelSet, progress: bool = True,
                arch: str = TORCHVISION_ARCH, kwargs: dict | None = None,
                image_size: int | None = None) -> nn.Module:
    """The network of ``arch`` with ``weights``: ``imagenet``, ``none`` (random init) or a PATH,
    its head one output per class of ``label_set`` (the training split's).

    ``resnet18`` is :class:`DermaResNet18` (torchvision); any other ``arch`` a :class:`TimmNet`
    (``kwargs`` go to ``timm.create_model``; ``image_size`` sizes fixed-input models such as ViTs).
    A PATH holding a derma checkpoint of other classes is refused (one line naming both lists).
    """
    num_classes = len(label_set)
    if weights == "auto":
        raise ValueError("model.weights=auto must be resolved (recipe.resolve_weights) before build_model")
    if is_timm_arch(arch):
        if weights == "imagenet":
            return _timm_pretrained(arch, dropout, num_classes, kwargs, image_size)
        model = TimmNet(arch, num_classes, dropout, kwargs, image_size)
        if weights != "none":
            load_timm_into(model, read_weights_file(weights, label_set=label_set), f"model.weights={weights}")
        return model
    model = DermaResNet18(num_classes, dropout)
    if weights == "none":
        return model
    if weights == "imagenet":
        load_into(model, imagenet_state_dict(progress), "ImageNet weights")
        return model
    load_into(model, read_weights_file(weights, label_set=label_set), f"model.weights={weights}")
    return model


class ProbabilityModel(nn.Module):
    """What is logged to MLflow: RGB uint8 images ``(B, H, W, 3)`` in, class probabilities
    ``(B, K)`` out (in the label set's order, which the logged model's metadata records).
    Resizing to the trained size and ImageNet normalisation are inside, so the logged model
    needs no derma code to preprocess."""

    def __init__(self, net: nn.Module, image_size: int) -> None:
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
