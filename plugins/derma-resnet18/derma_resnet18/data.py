"""Feeding batches: uint8 images from the prep cache, epoch-seeded (and distributed) sampling.

A batch is one fancy-index gather from the split's memory-mapped uint8 cache ``(N, H, W, 3)``
(:mod:`derma_core.data.cache`, shared with feature extraction): no JPEG decoding, no per-image
Python work. Its ``(B, H, W, 3)`` layout, viewed as ``(B, 3, H, W)``, is already channels-last.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from derma_core.data.cache import check_cache, image_side, read_images
from derma_core.interfaces import Split
from derma_core.reproducibility import seed_worker


class SplitImages(torch.utils.data.Dataset):
    """A split's images as uint8 ``(H, W, 3)`` tensors with their label indices.

    ``__getitems__`` fetches a whole batch at once (DataLoader calls it with the batch's
    indices), so a cached split costs one memmap gather per batch.
    """

    def __init__(self, split: Split, size: int) -> None:
        self.split = split
        self.size = int(size)
        self.y = np.array(split.y, dtype=np.int64)  # writable (pandas may hand out read-only views)
        check_cache(split)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def cached(self) -> bool:
        return self.split.cache is not None

    @property
    def image_size(self) -> int:
        """The side of the images this dataset returns (the cache's, else the decode size)."""
        return image_side(self.split, self.size)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(read_images(self.split, idx, self.size)), torch.from_numpy(self.y[idx])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([i])
        return images[0], labels[0]


def keep_batch(batch):
    """DataLoader ``collate_fn``: ``__getitems__`` already returns a collated batch."""
    return batch


class BalancedDistributedSampler(DistributedSampler):
    """Class-balanced sampling with replacement (each class drawn equally often on average),
    reseeded by ``set_epoch`` and split across ranks like :class:`DistributedSampler`."""

    def __init__(self, dataset: SplitImages, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        counts = np.bincount(dataset.y, minlength=len(dataset.split.label_set)).astype(np.float64)
        self.weights = torch.from_numpy(1.0 / counts[dataset.y])

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return iter(indices[self.rank:self.total_size:self.num_replicas])


def train_loader(dataset: SplitImages, batch_size: int, sampler_kind: str, seed: int, rank: int, world: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    """Shuffled (or class-balanced) batches of this rank's share; call ``loader.sampler.set_epoch``
    every epoch. The last batch is dropped only when it would hold a single image (BatchNorm
    cannot train on one)."""
    if sampler_kind == "balanced":
        sampler = BalancedDistributedSampler(dataset, world, rank, seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    per_rank = math.ceil(len(dataset) / world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=keep_batch, pin_memory=pin_memory, drop_last=per_rank % batch_size == 1,
                      worker_init_fn=seed_worker, persistent_workers=num_workers > 0)


def eval_loader(dataset: SplitImages, indices: np.ndarray, batch_size: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """In-order batches of the given rows (a rank's contiguous shard when distributed)."""
    return DataLoader(torch.utils.data.Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=keep_batch, pin_memory=pin_memory)


def shard(n: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of ``range(n)`` (no padding, so nothing counts twice)."""
    return np.array_split(np.arange(n), world)[rank]
