"""Frozen image encoders: open_clip image towers and timm models, with their own preprocessing.

``model.name`` says which:

* ``auto``: ``tiny-clip`` on the built-in synthetic data, BiomedCLIP (:data:`BIOMEDCLIP`) on real data;
* ``tiny-clip``: a tiny random open_clip model built from ``model_configs/derma-tiny-clip.json``
  with open_clip's own BPE tokenizer (smoke tests, offline; its numbers mean nothing);
* ``hf-hub:ORG/REPO``: an open_clip checkpoint on the Hugging Face hub (BiomedCLIP, DermLIP, ...);
* ``timm:NAME``: a timm model (``timm:vit_small_patch14_dinov2.lvd142m``, ``timm:convnext_tiny``);
  ``model.pretrained: none`` for random init (tests), else timm's pretrained weights;
* any other name: an open_clip architecture (``ViT-B-16``) with ``model.pretrained`` its tag
  (``laion2b_s34b_b88k``; ``none`` for random weights).

Random weights on real data are refused unless ``model.allow_random: true`` (the same rule as
LLaVA's ``tiny-random``). Weights come from the Hugging Face hub cache; offline without them, one
line says what to put where.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from derma_core.config import get_dotted

TINY_CLIP = "tiny-clip"
TINY_CLIP_ARCH = "derma-tiny-clip"
BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
_CONFIGS = Path(__file__).resolve().parent / "model_configs"


class EncoderError(RuntimeError):
    """A model could not be built or loaded; the message says what to do."""


@dataclass(frozen=True)
class Preprocess:
    """A model's own preprocessing, applied to a whole uint8 ``(B, H, W, 3)`` batch on the device.

    Departs from open_clip's/timm's PIL transforms on purpose: the prep cache is already square
    (``derma prep`` squashes), so resize-shortest-side + centre crop is one batched antialiased
    resize (to ``size / crop_pct``, then a centre crop of ``size``) on tensors, which keeps
    extraction at the model's own speed instead of a per-image PIL loop.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        scaled = int(round(self.size / self.crop_pct))
        if x.shape[-1] != scaled or x.shape[-2] != scaled:
            mode = "bicubic" if self.interpolation == "bicubic" else "bilinear"
            x = F.interpolate(x, size=(scaled, scaled), mode=mode, antialias=True, align_corners=False)
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clips to the pixel range too
        if scaled != self.size:
            top = (scaled - self.size) // 2
            x = x[..., top:top + self.size, top:top + self.size]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass
class ImageEncoder:
    """A frozen image encoder: ``encode(preprocessed batch) -> features``.

    ``identity`` is what the feature cache is keyed by (with the preprocessing). ``clip`` and
    ``tokenizer`` are set for open_clip models (zero-shot needs the text tower).
    """

    identity: dict[str, Any]
    model: nn.Module
    preprocess: Preprocess
    random_weights: bool
    clip: Any = None
    tokenizer: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            return self.clip.encode_image(x)
        return self.model(x)

    def to(self, device: torch.device) -> "ImageEncoder":
        self.model.to(device)
        if self.clip is not None:
            self.clip.to(device)
        return self


def resolved_values(encoder: "ImageEncoder", config: dict, device: str) -> dict[str, Any]:
    """What ``auto``/null resolved to, for the runner's curated params (``resolve`` of a classifier)."""
    from .features import resolve_precision

    return {"model.name": resolve_name(config), "model.image_size": encoder.preprocess.size,
            "precision": resolve_precision(str(get_dotted(config, "precision", "auto") or "auto"), torch.device(device))}


def resolve_name(config: dict) -> str:
    """``model.name`` with ``auto`` resolved: tiny-clip on the synthetic set, BiomedCLIP on real data."""
    name = str(get_dotted(config, "model.name", "auto") or "auto")
    if name == "auto":
        return TINY_CLIP if get_dotted(config, "data.source") == "synthetic" else BIOMEDCLIP
    return name


def _pretrained(config: dict) -> str | None:
    value = get_dotted(config, "model.pretrained")
    return None if value is None else str(value)


def _hub_error(what: str, exc: Exception, download: str) -> EncoderError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return EncoderError(f"{what}: cannot load the weights ({reason[:200]}); offline, download them on a connected "
                        f"machine (`{download}`) and copy the Hugging Face cache (HF_HOME), or pick another model.name")


def build_encoder(config: dict, need_text: bool = False) -> ImageEncoder:
    """The frozen encoder of a resolved config (eval mode, on the CPU; move it with ``.to``)."""
    name = resolve_name(config)
    if name.startswith("timm:"):
        if need_text:
            raise EncoderError(f"model.name={name}: a timm model has no text tower; zero-shot needs an open_clip "
                               f"model (e.g. {BIOMEDCLIP})")
        encoder = _timm_encoder(name.removeprefix("timm:"), config)
    else:
        encoder = _open_clip_encoder(name, config)
    if encoder.random_weights and get_dotted(config, "data.source") != "synthetic" \
            and not get_dotted(config, "model.allow_random", False):
        raise EncoderError(f"model.name={name} has random weights: on real data (data.source="
                           f"{get_dotted(config, 'data.source')}) its numbers mean nothing; pass a real model "
                           f"(e.g. -o model.name={BIOMEDCLIP}) or -o model.allow_random=true for a smoke test")
    encoder.model.eval()
    for p in encoder.model.parameters():
        p.requires_grad_(False)
    image_size = get_dotted(config, "model.image_size")
    if image_size:
        encoder = ImageEncoder(encoder.identity, encoder.model,
                               Preprocess(int(image_size), encoder.preprocess.mean, encoder.preprocess.std,
                                          encoder.preprocess.interpolation, 1.0),
                               encoder.random_weights, encoder.clip, encoder.tokenizer, encoder.info)
    return encoder


def _open_clip_encoder(name: str, config: dict) -> ImageEncoder:
    import open_clip

    seed = int(get_dotted(config, "seed", 0) or 0)
    kwargs = dict(get_dotted(config, "model.kwargs") or {})
    pretrained = _pretrained(config)
    if name == TINY_CLIP:
        arch, pretrained = TINY_CLIP_ARCH, "none"
        if arch not in open_clip.list_models():
            open_clip.add_model_config(_CONFIGS / f"{TINY_CLIP_ARCH}.json")
    else:
        arch = name
        if not arch.startswith(("hf-hub:", "local-dir:")):
            if arch not in open_clip.list_models():
                raise EncoderError(f"model.name={arch}: not an open_clip architecture, an hf-hub: id or timm:NAME "
                                   "(open_clip.list_models() lists the architectures)")
            if pretrained is None:
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
                raise EncoderError(f"model.name={arch} needs model.pretrained: one of {tags} (or none for random "
                                   "weights)")
    random_weights = pretrained == "none"
    torch.manual_seed(seed)  # random initialisation (tiny-clip, pretrained none) repeats with the seed
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))  # open_clip logs a warning for every random init
    try:
        model = open_clip.create_model(arch, pretrained=None if random_weights or arch.startswith(("hf-hub:", "local-dir:"))
                                       else pretrained, load_weights=not random_weights, **kwargs)
        tokenizer = open_clip.get_tokenizer(arch)
    except EncoderError:
        raise
    except Exception as exc:  # hub and network errors come in many types
        if random_weights:
            raise EncoderError(f"model.name={name}: cannot build it ({str(exc).splitlines()[0][:200]})") from None
        repo = arch.removeprefix("hf-hub:") if arch.startswith("hf-hub:") else f"open_clip {arch} {pretrained}"
        raise _hub_error(f"model.name={name}", exc, f"huggingface-cli download {repo}") from None
    finally:
        logger.setLevel(level)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = int(size[-1] if isinstance(size, (tuple, list)) else size)
    prep = Preprocess(size, tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]),
                      str(cfg.get("interpolation", "bicubic")))
    identity = {"kind": "open_clip", "name": name, "pretrained": pretrained, "kwargs": kwargs}
    if random_weights:
        identity["seed"] = seed
    return ImageEncoder(identity, model.visual, prep, random_weights, clip=model, tokenizer=tokenizer,
                        info={"arch": arch, "pretrained": pretrained})


def _timm_encoder(name: str, config: dict) -> ImageEncoder:
    import timm
    from timm.data import resolve_data_config

    seed = int(get_dotted(config, "seed", 0) or 0)
    kwargs = dict(get_dotted(config, "model.kwargs") or {})
    pretrained = _pretrained(config)
    random_weights = pretrained == "none"
    if not timm.is_model(name.split(".")[0]):
        raise EncoderError(f"model.name=timm:{name}: not a timm model (timm.list_models() lists them)")
    full = name if random_weights or pretrained is None else f"{name.split('.')[0]}.{pretrained}"
    torch.manual_seed(seed)
    try:
        model = timm.create_model(full, pretrained=not random_weights, num_classes=0, **kwargs)
    except TypeError as exc:
        raise EncoderError(f"model.kwargs={kwargs}: timm's {name} does not take them ({exc})") from None
    except Exception as exc:
        if random_weights:
            raise EncoderError(f"model.name=timm:{name}: cannot build it ({str(exc).splitlines()[0][:200]})") from None
        cfg = getattr(timm.models.get_pretrained_cfg(full), "hf_hub_id", None) or f"timm/{full}"
        raise _hub_error(f"model.name=timm:{name}", exc, f"huggingface-cli download {cfg}") from None
    data = resolve_data_config({}, model=model)
    side = kwargs.get("img_size") or data["input_size"][-1]  # a fixed-input model built for another side
    prep = Preprocess(int(side[-1] if isinstance(side, (tuple, list)) else side), tuple(float(v) for v in data["mean"]),
                      tuple(float(v) for v in data["std"]), str(data.get("interpolation", "bicubic")),
                      float(data.get("crop_pct", 1.0) or 1.0))
    identity = {"kind": "timm", "name": full, "pretrained": pretrained, "kwargs": kwargs}
    if random_weights:
        identity["seed"] = seed
    return ImageEncoder(identity, model, prep, random_weights, info={"arch": full, "pretrained": pretrained})
