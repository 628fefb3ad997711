"""The built-in datasets, registered through the ``register_datasets`` hook.

Every descriptor of :func:`~derma_core.data.datasets.builtin_descriptors` (``ham10000`` and the
public datasets) is registered under its name: as a source it loads the folder ``derma prep``
wrote (``data.dir``). Besides them:

``synthetic``   the built-in default: a synthetic HAM10000 set generated and prepared on first use
                into the cache folder
``dermamnist``  medmnist's DermaMNIST ``.npz`` (``data.path``: the file, or a folder holding
                ``dermamnist[_64|_128|_224].npz`` picked by ``data.size``)
``folder``      your own images: a YAML spec or a label CSV (``data.path``) and an image folder
                (``data.image_root``), prepared (verified, split, resized, cached) into the cache
                folder on first use; or a folder prepared from a spec (``data.dir``)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import hookimpl
from ..interfaces import Dataset, Split
from . import synthetic as synth
from .datasets import builtin_descriptors
from .datasets import folder as foldermod
from .datasets.ham10000 import DESCRIPTOR as HAM10000
from .datasets.ham10000 import LABEL_SET as HAM10000_LABELS
from .descriptor import DatasetDescriptor, DatasetOption
from .prepare import MANIFEST, PrepParams, folder_lock, load_prepared, prepare
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


def log_for(config: dict):
    """Where a source's messages go: stderr, or nowhere with ``quiet``."""
    quiet = bool(config.get("quiet"))
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))


def prepared_as(folder: str | os.PathLike) -> str | None:
    """The dataset a prepared folder was prepared as (None when it is not one)."""
    try:
        manifest = json.loads((Path(folder).expanduser() / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    block = manifest.get("dataset") if isinstance(manifest, dict) else None
    if isinstance(block, dict) and block.get("name"):
        return str(block["name"])
    return "ham10000" if isinstance(manifest, dict) and manifest.get("format") == "derma-prepared" else None


def synthetic_dataset(config: dict) -> Dataset:
    """The built-in synthetic set (``data.synthetic_n`` images, ``data.synthetic_seed``) in
    HAM10000's layout, prepared at ``data.size`` px with a lesion-grouped split; generated once,
    then reused from the cache."""
    data = _data(config)
    if data.get("dir"):
        name = prepared_as(data["dir"]) or "ham10000"
        raise ValueError(f"data.dir is set ({data['dir']}) but data.source is synthetic; add --dataset {name} "
                         f"(-o data.source={name}) to use the prepared folder, or drop --data-dir")
    n = int(data.get("synthetic_n", 1500))
    seed = int(data.get("synthetic_seed", 0))
    size = int(data.get("size", 64))
    base = cache_dir(config) / f"synthetic-v{synth.GENERATOR_VERSION}-n{n}-s{seed}"
    raw_dir = base / "raw"
    params = PrepParams(size=size, split="grouped", seed=DEFAULT_SPLIT_SEED, resize="squash")
    out = base / f"prepared-{size}px-squash-grouped"
    log = log_for(config)
    quiet = bool(config.get("quiet"))
    with folder_lock(base):
        marker = synth.read_marker(raw_dir)
        if marker is None or marker.get("legacy"):  # a folder drawn before markers existed is only marked
            if marker is None:
                log(f"generating the built-in SYNTHETIC dataset ({n} images) into {raw_dir} (first use only)")
            synth.generate(raw_dir, n=n, seed=seed, progress=not quiet, dataset=HAM10000)
        # always: a no-op (0.1-0.3 s) when the folder matches the raw files and this version of the
        # pipeline, a rebuild when either changed (e.g. a new resize library)
        prepare(raw_dir, out, params, name="synthetic", synthetic=True, progress=not quiet, log=log,
                dataset=HAM10000)
    return load_prepared(out, fold=data.get("fold"), name="synthetic")


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

    Its labels are HAM10000's, in the same order. Its split is image-level: images of one lesion
    can sit in train and test, so scores are optimistic (a warning says so).
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
    log_for(config)("warning: DermaMNIST's split is image-level and leaks lesions between splits; "
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
        codes = DERMAMNIST.labels.codes
        bad = np.flatnonzero((labels < 0) | (labels >= len(codes)))
        if len(bad):
            raise ValueError(f"{path}: {s}_labels[{bad[0]}] = {labels[bad[0]]} is not a DermaMNIST class "
                             f"0..{len(codes) - 1}")
        ids = [f"dermamnist_{s}_{i}" for i in range(len(labels))]
        frame = pd.DataFrame({"id": ids, "label": [codes[k] for k in labels], "group_id": ids,
                              # no files on disk: images come from the cache (Split.load_image)
                              "image_path": [f"{s}/{i}.png" for i in range(len(labels))]})
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(labels.tobytes())
        splits[s] = Split(s, frame, path.parent, np.ascontiguousarray(images), label_set=DERMAMNIST.labels)
    return Dataset(name=f"dermamnist-{splits['train'].cache.shape[1]}", digest=digest.hexdigest(), splits=splits,
                   descriptor=DERMAMNIST, dir=path.parent,
                   manifest={"source": str(path), "split": "image-level (leaks lesions)",
                             "counts": {s: len(v) for s, v in splits.items()}, "dataset": DERMAMNIST.facts()})


# ---------------------------------------------------------------- the registry

def _download_dermamnist(out: Path, options=None, progress: bool = True, **kwargs) -> Path:
    """DermaMNIST's .npz from Zenodo (:func:`derma_core.data.download.download_dermamnist`)."""
    from .download import download_dermamnist

    return download_dermamnist(out, options, progress, **kwargs)


#: DermaMNIST (MedMNIST v2): HAM10000's images at 28-224 px with HAM10000's seven classes and an
#: image-level split; read straight from its .npz (no raw folder, no `derma prep`).
DERMAMNIST = DatasetDescriptor(
    name="dermamnist",
    title="DermaMNIST (MedMNIST v2)",
    labels=HAM10000_LABELS,
    grouping=None,
    modality="dermoscopic",
    split_policy="official",
    licence="CC BY-NC 4.0 (derived from HAM10000)",
    citation="Yang J. et al. MedMNIST v2 - a large-scale lightweight benchmark for 2D and 3D biomedical image "
             "classification. Sci. Data 10, 41 (2023). doi:10.1038/s41597-022-01721-8; and HAM10000's citation",
    url="https://zenodo.org/records/10519652",
    layout="dermamnist.npz or dermamnist_{64,128,224}.npz ({train,val,test}_{images,labels} arrays)",
    access="download dermamnist_64.npz (or _128, _224, or the 28 px dermamnist.npz) from "
           "https://zenodo.org/records/10519652 and run with -o data.source=dermamnist -o data.path=FILE",
    options=(DatasetOption("size", "28", ("28", "64", "128", "224"), "image side of the .npz file"),),
    class_counts=HAM10000.class_counts,
    downloader=_download_dermamnist,
    loader=dermamnist_dataset,
)

#: The built-in default: HAM10000's facts, generated on first use.
SYNTHETIC = replace(
    HAM10000, name="synthetic", title="synthetic HAM10000 (built-in default, drawn by derma)",
    licence="none needed: drawn by derma, not medical data", citation="", url="",
    access="nothing to download: generated on first use (`derma synth --like NAME` draws any dataset's layout)",
    downloader=None, loader=synthetic_dataset)


def own_descriptors() -> list[DatasetDescriptor]:
    """The built-in datasets registered here: the public ones, then synthetic, dermamnist, folder."""
    return [*builtin_descriptors(), SYNTHETIC, DERMAMNIST, foldermod.DESCRIPTOR]


def registered_descriptor(name: str) -> DatasetDescriptor | None:
    """The descriptor registered under ``name`` (built in, or by a plugin), else None."""
    for descriptor in own_descriptors():
        if descriptor.name == name:
            return descriptor
    from .. import plugins

    registration = plugins.datasets().get(name)
    if registration is not None and isinstance(registration.obj, DatasetDescriptor):
        return registration.obj
    return None


def registered_names() -> list[str]:
    from .. import plugins

    return sorted(plugins.datasets())


@hookimpl
def register_datasets(register):
    for descriptor in own_descriptors():
        register(descriptor.name, descriptor)


__all__ = ["cache_dir", "synthetic_dataset", "dermamnist_dataset", "registered_descriptor", "registered_names",
           "own_descriptors", "prepared_as", "DERMAMNIST", "SYNTHETIC", "PrepError"]
