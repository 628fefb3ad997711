"""The built-in dataset sources, registered through the ``register_datasets`` hook.

``synthetic``   the built-in default: generated and prepared on first use into the cache folder
``ham10000``    a folder written by ``derma prep`` (``data.dir``)
``dermamnist``  medmnist's DermaMNIST ``.npz`` (``data.path``: the file, or a folder holding
                ``dermamnist[_64|_128|_224].npz`` picked by ``data.size``)
``folder``      your own images: a label CSV (``data.path``) and an image folder (``data.image_root``),
                prepared (verified, split by lesion, resized, cached) into the cache folder on first use
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import hookimpl
from ..interfaces import Dataset, Split
from ..labels import LABELS
from . import synthetic as synth
from .prepare import PrepParams, folder_lock, load_prepared, prepare, sha256_file
from .raw import PrepError

#: The split every built-in source prepares with unless told otherwise.
DEFAULT_SPLIT_SEED = 42


def cache_dir(config: dict | None = None) -> Path:
    """Where generated and auto-prepared data live: ``data.cache_dir``, else ``$DERMA_CACHE_DIR``,
    else ``~/.cache/derma``."""
    configured = ((config or {}).get("data") or {}).get("cache_dir")
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("DERMA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "derma"


def _data(config: dict) -> dict:
    return config.get("data") or {}


def _log(config: dict):
    quiet = bool(config.get("quiet"))
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


def synthetic_dataset(config: dict) -> Dataset:
    """The built-in synthetic set (``data.synthetic_n`` images, ``data.synthetic_seed``), prepared
    at ``data.size`` px with a lesion-grouped split; generated once, then reused from the cache."""
    data = _data(config)
    if data.get("dir"):
        raise ValueError(f"data.dir is set ({data['dir']}) but data.source is synthetic; add --dataset ham10000 "
                         "(-o data.source=ham10000) to use the prepared folder, or drop --data-dir")
    n = int(data.get("synthetic_n", 1500))
    seed = int(data.get("synthetic_seed", 0))
    size = int(data.get("size", 64))
    base = cache_dir(config) / f"synthetic-v{synth.GENERATOR_VERSION}-n{n}-s{seed}"
    raw_dir = base / "raw"
    params = PrepParams(size=size, split="grouped", seed=DEFAULT_SPLIT_SEED, resize="squash")
    out = base / f"prepared-{size}px-squash-grouped"
    log = _log(config)
    quiet = bool(config.get("quiet"))
    with folder_lock(base):
        if not (raw_dir / "HAM10000_metadata.csv").exists():
            log(f"generating the built-in SYNTHETIC dataset ({n} images) into {raw_dir} (first use only)")
            synth.generate(raw_dir, n=n, seed=seed, progress=not quiet)
        # always: a no-op (0.1-0.3 s) when the folder matches the raw files and this version of the
        # pipeline, a rebuild when either changed (e.g. a new resize library)
        prepare(raw_dir, out, params, name="synthetic", synthetic=True, progress=not quiet, log=log)
    return load_prepared(out, fold=data.get("fold"), name="synthetic")


def ham10000_dataset(config: dict) -> Dataset:
    """A folder written by ``derma prep`` (``data.dir``)."""
    folder = _data(config).get("dir")
    if not folder:
        raise ValueError("data.source ham10000 needs data.dir: run `derma download ham10000 --out RAW` and "
                         "`derma prep --raw RAW --out PREPARED`, then pass --data-dir PREPARED")
    return load_prepared(Path(folder).expanduser(), fold=_data(config).get("fold"))


# ---------------------------------------------------------------- DermaMNIST

DERMAMNIST_SIZES = (28, 64, 128, 224)


def dermamnist_file(path: Path, size: int) -> Path:
    """The ``.npz`` for ``size`` when ``path`` is a folder (medmnist's file names), else ``path``."""
    if path.is_dir():
        name = "dermamnist.npz" if size == 28 else f"dermamnist_{size}.npz"
        candidate = path / name
        if not candidate.exists():
            found = ", ".join(sorted(p.name for p in path.glob("dermamnist*.npz"))) or "none"
            raise FileNotFoundError(f"{candidate} not found (DermaMNIST files there: {found}); set data.size to "
                                    f"one of {DERMAMNIST_SIZES} that you have, or download {name} from "
                                    "https://zenodo.org/records/10519652")
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; download DermaMNIST (e.g. dermamnist_64.npz) from "
                                "https://zenodo.org/records/10519652 and set data.path to it")
    return path


def dermamnist_dataset(config: dict) -> Dataset:
    """DermaMNIST from a local ``.npz`` in medmnist's format (``{train,val,test}_{images,labels}``).

    Its labels follow the same order as derma's LABELS. Its split is image-level: images of one
    lesion can sit in train and test, so scores are optimistic (a warning says so).
    """
    data = _data(config)
    if not data.get("path"):
        raise ValueError("data.source dermamnist needs data.path: the dermamnist*.npz file or its folder")
    path = dermamnist_file(Path(data["path"]).expanduser(), int(data.get("size", 28)))
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc}); re-download it") from None
    warnings.warn("DermaMNIST's split is image-level, not lesion-level: images of one lesion appear in "
                  "several splits, so test scores are optimistic and not comparable to HAM10000 lesion splits",
                  UserWarning, stacklevel=2)
    _log(config)("warning: DermaMNIST's split is image-level and leaks lesions between splits; "
                 "treat its scores as optimistic")
    splits = {}
    digest = hashlib.sha256()
    for s in ("train", "val", "test"):
        for key in (f"{s}_images", f"{s}_labels"):
            if key not in npz.files:
                raise ValueError(f"{path}: missing array {key!r} (has {', '.join(npz.files)}); "
                                 "expected medmnist's DermaMNIST format")
        images = npz[f"{s}_images"]
        labels = npz[f"{s}_labels"].reshape(-1).astype(np.int64)
        if images.ndim == 3:  # grey images: repeat into RGB
            images = np.repeat(images[..., None], 3, axis=-1)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"{path}: {s}_images has shape {images.shape} {images.dtype}; expected uint8 "
                             "(N, H, W, 3) matching the labels")
        bad = np.flatnonzero((labels < 0) | (labels >= len(LABELS)))
        if len(bad):
            raise ValueError(f"{path}: {s}_labels[{bad[0]}] = {labels[bad[0]]} is not a DermaMNIST class 0..6")
        ids = [f"dermamnist_{s}_{i}" for i in range(len(labels))]
        frame = pd.DataFrame({"id": ids, "label": [LABELS[k] for k in labels], "lesion_id": ids,
                              # no files on disk: images come from the cache (Split.load_image)
                              "image_path": [f"{s}/{i}.png" for i in range(len(labels))]})
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(labels.tobytes())
        splits[s] = Split(s, frame, path.parent, np.ascontiguousarray(images))
    return Dataset(name=f"dermamnist-{splits['train'].cache.shape[1]}", digest=digest.hexdigest(), splits=splits,
                   dir=path.parent, manifest={"source": str(path), "split": "image-level (leaks lesions)",
                                              "counts": {s: len(v) for s, v in splits.items()}})


# ---------------------------------------------------------------- folder + label CSV

def folder_dataset(config: dict) -> Dataset:
    """Your own images: ``data.path`` is a CSV with an image column (``image``/``image_id``/
    ``filename``: a path or file stem under ``data.image_root``) and a label column (``label``/``dx``,
    values from LABELS), optionally ``lesion_id`` and metadata columns. It is verified, split by
    lesion (grouped, stratified) and resized to ``data.size`` into the cache folder on first use."""
    from .raw import Problem, RawData, find_images, read_metadata, verify_metadata

    data = _data(config)
    if not data.get("path"):
        raise ValueError("data.source folder needs data.path (the label CSV) and data.image_root (the images)")
    csv = Path(data["path"]).expanduser()
    if not csv.exists():
        raise FileNotFoundError(f"{csv} not found: data.path must be the label CSV")
    root = Path(data.get("image_root") or csv.parent).expanduser()
    size = int(data.get("size", 64))
    frame, problems = read_metadata(csv)
    if "image_id" in frame.columns:
        # paths like "imgs/a.jpg" -> the id "a" (find_images indexes files by stem)
        frame["image_id"] = frame["image_id"].map(lambda v: Path(v).stem if v else v)
    if "lesion_id" not in frame.columns and "image_id" in frame.columns:
        problems = [p for p in problems if not (p.code == "missing_column" and "'lesion_id'" in p.message)]
        problems.append(Problem("missing_column", f"{csv.name} header", "no lesion_id column",
                                "each image is treated as its own lesion; add lesion_id if a lesion has "
                                "several images, or they may leak between splits"))
        frame["lesion_id"] = frame["image_id"]
    images, image_problems = find_images(root)
    usable, row_problems = verify_metadata(frame, images, csv.name, root)
    raw = RawData(root, csv, usable, images, problems + image_problems + row_problems)
    key = hashlib.sha256(f"{csv.resolve()}|{root.resolve()}|{sha256_file(csv)}".encode()).hexdigest()[:16]
    out = cache_dir(config) / "folder" / f"{csv.stem}-{key}-{size}px"
    params = PrepParams(size=size, split="grouped", seed=DEFAULT_SPLIT_SEED, resize="squash")
    prepare(raw, out, params, name=f"folder-{csv.stem}", progress=not config.get("quiet"), log=_log(config))
    return load_prepared(out, fold=data.get("fold"))


@hookimpl
def register_datasets(register):
    register("synthetic", synthetic_dataset)
    register("ham10000", ham10000_dataset)
    register("dermamnist", dermamnist_dataset)
    register("folder", folder_dataset)


__all__ = ["cache_dir", "synthetic_dataset", "ham10000_dataset", "dermamnist_dataset", "folder_dataset",
           "PrepError"]
