"""Batched augmentation = torchvision's per-image transforms; preprocessing = v2 Normalize."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from derma_resnet18.augment import BatchAugment, eval_batch, to_float_nchw, train_batch
from derma_resnet18.recipe import Augmentation


@pytest.mark.parametrize("h,w", [(32, 32), (24, 40), (64, 64)])
def test_batched_warp_equals_torchvision_per_image(h, w):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, h, w), dtype=torch.uint8)
    aug = BatchAugment(Augmentation(rotation=10, translate=0.1, brightness=0, hflip=0.5, vflip=0.3))
    params = aug.sample(16, h, w, torch.Generator().manual_seed(1))
    out = aug(x.float(), None, params)
    assert params["hflip"].any() and (~params["hflip"]).any()
    for i in range(16):
        # v2's affine counts the angle clockwise, RandomRotation counter-clockwise
        ref = TF.affine(x[i], angle=-float(params["angle"][i]), translate=[int(params["tx"][i]), int(params["ty"][i])],
                        scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST, fill=0)
        if params["hflip"][i]:
            ref = TF.horizontal_flip(ref)
        if params["vflip"][i]:
            ref = TF.vertical_flip(ref)
        torch.testing.assert_close(out[i], ref.float(), rtol=0, atol=0)


def test_rotation_direction_matches_random_rotation():
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment(Augmentation(rotation=10, translate=0, brightness=0, hflip=0, vflip=0))
    params = {"angle": torch.tensor([8.0], dtype=torch.float64), "tx": torch.zeros(1, dtype=torch.float64),
              "ty": torch.zeros(1, dtype=torch.float64), "brightness": torch.ones(1, dtype=torch.float64),
              "hflip": torch.tensor([False]), "vflip": torch.tensor([False])}
    ref = TF.rotate(x[0], 8.0, interpolation=InterpolationMode.NEAREST)
    torch.testing.assert_close(aug(x.float(), None, params)[0], ref.float(), rtol=0, atol=0)


def test_brightness_is_per_image_and_matches_adjust_brightness():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(Augmentation(rotation=0, translate=0, brightness=0.05, hflip=0, vflip=0))
    params = aug.sample(8, 16, 16, torch.Generator().manual_seed(5))
    out = aug(x.float(), None, params)
    factors = params["brightness"]
    assert ((factors >= 0.95) & (factors <= 1.05)).all() and factors.unique().numel() == 8
    for i in range(8):
        ref = TF.adjust_brightness(x[i].float() / 255, float(factors[i])) * 255
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-3)


def test_parameters_follow_the_seed_distributions():
    aug = BatchAugment(Augmentation())
    p = aug.sample(4000, 64, 64, torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= 10 and p["angle"].abs().max() > 9.5
    assert set(p["tx"].unique().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}  # round(U(-3.2, 3.2))
    assert 0.45 < p["hflip"].float().mean() < 0.55 and not p["vflip"].any()
    again = aug.sample(4000, 64, 64, torch.Generator().manual_seed(0))
    assert all(torch.equal(p[k], again[k]) for k in p)  # same generator seed, same parameters


def test_disabled_augmentation_is_identity_and_eval_is_v2_normalize():
    images = torch.randint(0, 256, (3, 20, 20, 3), dtype=torch.uint8)
    off = BatchAugment(Augmentation(enabled=False))
    assert not off.active
    x = train_batch(images, None, off, torch.Generator(), channels_last=False)
    pipeline = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    expected = pipeline(images.permute(0, 3, 1, 2))
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eval_batch(images, None, channels_last=False), expected, rtol=1e-5, atol=1e-5)


def test_layout_and_resize():
    images = torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8)
    x = eval_batch(images, 32, channels_last=True)
    assert x.shape == (2, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert to_float_nchw(images).shape == (2, 3, 40, 40)
    with pytest.raises(ValueError, match="B, H, W, 3"):
        to_float_nchw(images.permute(0, 3, 1, 2))
