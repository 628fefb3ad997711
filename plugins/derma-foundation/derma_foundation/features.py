"""Frozen image features of a split, extracted once and cached on disk.

Extraction streams the split's uint8 images from the memory-mapped prep cache in batches
(:func:`derma_core.data.cache.iter_image_batches`; the next batch is gathered in a background
thread while the model runs), applies the model's own preprocessing on the device and keeps the
float32 features. The file is keyed by (encoder identity, preprocessing, precision, dataset
digest, split name, rows and their labels with the label set) and lives beside the prep cache
(``<prepared>/features/``; for an in-memory source, ``<data cache dir>/features/``). It is
written atomically (temp file + ``os.replace``), so a second run, or every trial of a tuning
study, reads it instead of re-extracting, and an interrupted extraction never leaves a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from derma_core.atomic import atomic_open
from derma_core.config import get_dotted
from derma_core.data.cache import check_cache, image_side, iter_image_batches
from derma_core.interfaces import Split

from .encoders import ImageEncoder

#: Feature-file format; bump when what is stored changes.
FORMAT = 1
#: How many extractions (cache misses) this process ran; tests use it to prove a cache hit.
EXTRACTIONS = {"count": 0}


def dataset_key(split: Split) -> str:
    """What identifies a split: the prepared folder's digest (``manifest.json``), or, for an
    in-memory source without a manifest, a hash of the image bytes; the split's row ids and image
    paths; and its labels with the label set. The features depend on the images only, but a
    split relabelled (another label level of the same images, another label set) gets its own
    file, so a cache file never stands for rows with other labels than the run's."""
    h = hashlib.sha256()
    manifest = Path(split.root) / "manifest.json"
    digest = None
    if manifest.is_file():
        try:
            digest = json.loads(manifest.read_text()).get("digest")
        except (OSError, ValueError):
            digest = None
    if digest:
        h.update(str(digest).encode())
    elif split.cache is not None:
        h.update(np.ascontiguousarray(split.cache).tobytes())
    else:
        h.update(str(Path(split.root).resolve()).encode())
    h.update("\n".join(split.ids).encode())
    h.update("\n".join(str(p) for p in split.frame.get("image_path", [])).encode())
    h.update(split.label_set.digest.encode())
    h.update("\n".join(split.labels).encode())
    return h.hexdigest()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA GPUs that support it, else fp32 (CPU extraction stays exact)."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def cache_file(encoder: ImageEncoder, split: Split, config: dict, precision: str) -> Path:
    """Where the features of ``split`` under ``encoder`` are (or will be) cached."""
    key = {"format": FORMAT, "encoder": encoder.identity, "preprocess": encoder.preprocess.describe(),
           "precision": precision, "data": dataset_key(split), "split": split.name}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    root = Path(split.root)
    if (root / "cache").is_dir() and os.access(root, os.W_OK):
        folder = root / "features"
    else:
        from derma_core.data.sources import cache_dir

        folder = cache_dir(config) / "features"
    return folder / f"{split.name}-{digest}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def _autocast(device: torch.device, precision: str):
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def extract(encoder: ImageEncoder, split: Split, device: torch.device, precision: str = "fp32",
            batch_size: int = 64, progress=None) -> np.ndarray:
    """float32 features ``(N, D)`` of every row of ``split``, in row order (no cache involved)."""
    check_cache(split)
    EXTRACTIONS["count"] += 1
    size = image_side(split, encoder.preprocess.size)
    batches = iter_image_batches(split, batch_size, size)
    total = (len(split) + batch_size - 1) // batch_size
    out: list[np.ndarray] = []
    pin = device.type == "cuda"
    with ThreadPoolExecutor(max_workers=1) as pool:  # gather batch k+1 while the model runs on batch k
        pending = pool.submit(next, batches, None)
        steps = progress(range(total), total=total, desc=f"features {split.name}") if progress else range(total)
        for _ in steps:
            item = pending.result()
            if item is None:
                break
            pending = pool.submit(next, batches, None)
            images = torch.from_numpy(item[1])
            if pin:
                images = images.pin_memory()
            x = encoder.preprocess(images.to(device, non_blocking=True))
            with _autocast(device, precision):
                feats = encoder.encode(x)
            out.append(feats.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def split_features(encoder: ImageEncoder, split: Split, config: dict, device: torch.device,
                   progress=None, quiet: bool = True) -> tuple[np.ndarray, bool]:
    """The features of ``split`` from the cache (``True``) or freshly extracted and cached (``False``)."""
    precision = resolve_precision(str(get_dotted(config, "precision", "auto") or "auto"), device)
    batch_size = int(get_dotted(config, "features.batch_size", 64) or 64)
    use_cache = bool(get_dotted(config, "features.cache", True))
    path = cache_file(encoder, split, config, precision) if use_cache else None
    if path is not None and path.is_file():
        try:
            feats = np.load(path, mmap_mode=None, allow_pickle=False)
            if feats.ndim == 2 and len(feats) == len(split):
                return feats, True
        except (OSError, ValueError):
            pass
        print(f"features: {path} is unreadable or stale; extracting again", file=sys.stderr)
    feats = extract(encoder, split, device, precision, batch_size, progress)
    if path is not None:
        _save_atomic(path, feats)
        if not quiet:
            print(f"features: cached {feats.shape} for split {split.name} at {path}", file=sys.stderr)
    return feats, False
