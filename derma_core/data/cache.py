"""Reading a split's images in batches: one gather from the memory-mapped prep cache.

``derma prep`` writes every split's images, resized once, into ``cache/images.npy`` (uint8
``(N, H, W, 3)``) and :class:`~derma_core.interfaces.Split` holds a memory-mapped view of its
rows. A batch is one fancy-index gather from that view: no JPEG decoding, no per-image Python
work. A split without a cache (a source that has none) is decoded with ``Split.load_image`` and
resized like ``derma prep`` does: correct, but slower. Used by the CNN's data loader and by
feature extraction for probes (numpy only, so the core imports no torch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..interfaces import Split


def check_cache(split: Split) -> None:
    """A clear error when a split's cache is not uint8 ``(N, H, W, 3)``."""
    if split.cache is None:
        return
    shape = tuple(split.cache.shape)
    if len(shape) != 4 or shape[-1] != 3 or split.cache.dtype != np.uint8:
        raise ValueError(f"split {split.name!r}: image cache has shape {shape} {split.cache.dtype}; "
                         "expected uint8 (N, H, W, 3): re-run `derma prep`")


def image_side(split: Split, size: int) -> int:
    """The side of the images :func:`read_images` returns: the cache's, else ``size``."""
    return int(split.cache.shape[1]) if split.cache is not None else int(size)


def read_images(split: Split, indices, size: int) -> np.ndarray:
    """uint8 ``(B, S, S, 3)`` images of the given rows (C-contiguous): from the cache when the
    split has one (``S`` = the cache's side), else decoded and squashed to ``size``."""
    idx = np.asarray(indices, dtype=np.int64)
    if split.cache is not None:
        return np.ascontiguousarray(split.cache[idx])
    if not len(idx):
        return np.zeros((0, size, size, 3), np.uint8)
    from .resize import resize_image

    out = []
    for i in idx:
        image = split.load_image(int(i))
        if image.size != (size, size):
            image = resize_image(image, size, "squash")
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def iter_image_batches(split: Split, batch_size: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(row indices, uint8 images)`` for consecutive batches of every row, in order."""
    check_cache(split)
    n = len(split)
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(n, lo + batch_size))
        yield idx, read_images(split, idx, size)
