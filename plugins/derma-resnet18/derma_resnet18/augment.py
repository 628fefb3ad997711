"""Batched preprocessing and train-time augmentation on uint8 image tensors.

The original applied torchvision v1 transforms to one PIL image at a time: RandomRotation(10),
RandomAffine(degrees=0, translate=(0.05, 0.05)), ColorJitter(brightness=0.05),
RandomHorizontalFlip, then ToTensor and ImageNet normalisation. Here a whole batch (straight
from the uint8 prep cache, on the training device) is augmented at once with the same
distributions and *per-image* random parameters:

* rotation, translation and flips are one affine warp per image, applied to the whole batch by
  a single ``grid_sample`` (nearest neighbour, zero fill: torchvision's defaults). torchvision's
  v2 ``affine`` kernel takes one parameter set per call, which would give every image of a
  batch the same rotation, hence the batched warp; a test checks it against
  ``torchvision.transforms.v2.functional.affine`` image by image;
* brightness is a per-image factor (what ``adjust_brightness`` does: blend with black), which
  commutes with the warp because the fill is black;
* normalisation is torchvision v2's ``normalize``.

Random parameters come from a CPU ``torch.Generator`` the trainer reseeds every epoch, so they
are the same on every device and after a resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .model import IMAGENET_MEAN, IMAGENET_STD
from .recipe import Augmentation


def to_float_nchw(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float ``(B, 3, size, size)`` in [0, 255] (a channels-last view,
    no copy beyond the dtype change); resized with antialiased bilinear when ``size`` differs."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (B, H, W, 3), got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float()
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] float -> ImageNet-normalised (torchvision v2 ``normalize`` on [0, 1] values)."""
    return TF.normalize(x / 255.0, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def eval_batch(images: torch.Tensor, size: int | None, channels_last: bool) -> torch.Tensor:
    """The model input for evaluation: resized, normalised, in the chosen memory layout."""
    x = normalize(to_float_nchw(images, size))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class BatchAugment:
    """Per-image random rotation, translation, brightness and flips for a float batch in [0, 255]."""

    def __init__(self, options: Augmentation) -> None:
        self.options = options

    @property
    def active(self) -> bool:
        o = self.options
        return o.enabled and (o.rotation > 0 or o.translate > 0 or o.brightness > 0 or o.hflip > 0 or o.vflip > 0)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-image parameters, drawn as torchvision v1's ``get_params`` draws them."""
        o = self.options

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

        angle = uniform(-o.rotation, o.rotation)
        # RandomAffine: an integer pixel shift, round(uniform(-max_dx, max_dx))
        tx = torch.round(uniform(-o.translate * width, o.translate * width))
        ty = torch.round(uniform(-o.translate * height, o.translate * height))
        brightness = uniform(max(0.0, 1 - o.brightness), 1 + o.brightness)
        hflip = torch.rand(batch, generator=generator) < o.hflip
        vflip = torch.rand(batch, generator=generator) < o.vflip
        return {"angle": angle, "tx": tx, "ty": ty, "brightness": brightness, "hflip": hflip, "vflip": vflip}

    @staticmethod
    def theta(params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """``affine_grid`` matrices (B, 2, 3): rotate about the centre (counter-clockwise for a
        positive angle, as torchvision's ``rotate``; v2 ``affine`` counts clockwise), shift by
        (tx, ty) pixels, then flip."""
        a = params["angle"] * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        fx = torch.where(params["hflip"], -1.0, 1.0).double()
        fy = torch.where(params["vflip"], -1.0, 1.0).double()
        # output -> input in pixel coordinates centred on the image (y down):
        # p_in = R^-1 (F p_out - t) with R^-1 = [[cos, -sin], [sin, cos]]
        hw, hh = width / 2.0, height / 2.0
        theta = torch.zeros(len(a), 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos * fx
        theta[:, 0, 1] = -sin * fy * hh / hw
        theta[:, 1, 0] = sin * fx * hw / hh
        theta[:, 1, 1] = cos * fy
        tx, ty = params["tx"], params["ty"]
        theta[:, 0, 2] = -(cos * tx - sin * ty) / hw
        theta[:, 1, 2] = -(sin * tx + cos * ty) / hh
        return theta

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Augment float ``(B, 3, H, W)`` values in [0, 255]; returns the same shape and range."""
        if not self.active:
            return x
        b, _, h, w = x.shape
        params = params if params is not None else self.sample(b, h, w, generator)
        o = self.options
        if o.rotation > 0 or o.translate > 0 or o.hflip > 0 or o.vflip > 0:
            theta = self.theta(params, h, w).to(device=x.device, dtype=torch.float32)
            grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
            x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if o.brightness > 0:
            factor = params["brightness"].to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)
            x = (x * factor).clamp_(0.0, 255.0)
        return x


def train_batch(images: torch.Tensor, size: int | None, augment: BatchAugment, generator: torch.Generator,
                channels_last: bool) -> torch.Tensor:
    """The model input for a training step: resized, augmented, normalised, in the chosen layout."""
    x = normalize(augment(to_float_nchw(images, size), generator))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
