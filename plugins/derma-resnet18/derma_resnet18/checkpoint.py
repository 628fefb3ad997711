"""Per-epoch training checkpoints: atomic, loadable with ``torch.load(weights_only=True)``.

One file, ``<work_dir>/checkpoint.pt``, rewritten after every epoch (temp file + fsync +
``os.replace``: a crash or SIGKILL leaves the previous complete checkpoint, never a torn one).
It holds plain tensors, numbers, strings, lists and dicts only: model and best-epoch weights,
optimizer, scheduler and grad-scaler states, every RNG state (as tensors), the epoch, the
metric history, the early-stopping state, the config and the label set the model was trained on
(``labels``: :meth:`~derma_core.labels.LabelSet.to_dict`). A checkpoint is only ever loaded on
a dataset with the same classes (:func:`require_same_labels`); checkpoints of format ``/1``
predate label sets and hold HAM10000's seven classes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from derma_core.atomic import atomic_open
from derma_core.labels import LabelSet

FORMAT = "derma-resnet18-checkpoint/2"
#: The format before checkpoints recorded their label set (every one was trained on HAM10000).
LEGACY_FORMAT = "derma-resnet18-checkpoint/1"
FORMATS = (FORMAT, LEGACY_FORMAT)
FILENAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or of another format."""


def checkpoint_path(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / FILENAME


def rng_state() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) RNG states as tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_cached": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if kind != "MT19937":  # pragma: no cover - numpy's legacy global RNG is always MT19937
        raise CheckpointError(f"unexpected numpy RNG kind {kind!r}")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"].tolist()
    gauss = state["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss[0] if gauss else None))
    pos, has_gauss = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss),
                         float(state["numpy_cached"].item())))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) atomically to ``path``."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, **payload}, fh)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first}); it is damaged or not a "
                              "derma-resnet18 checkpoint") from None
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r}")
    return data


def checkpoint_labels(data: dict[str, Any]) -> LabelSet | None:
    """The label set a derma checkpoint (or a file holding one) was trained on: its ``labels``;
    HAM10000's for a ``/1`` checkpoint (they predate label sets); None for anything else."""
    if not isinstance(data, dict):
        return None
    if data.get("labels") is not None:
        try:
            return LabelSet.from_dict(data["labels"])
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint: its recorded label set is unreadable ({exc})") from None
    if data.get("format") == LEGACY_FORMAT:
        from derma_core.data.datasets.ham10000 import LABEL_SET

        return LABEL_SET
    return None


def require_same_labels(data: dict[str, Any], label_set: LabelSet, what: str, where: str) -> LabelSet:
    """The checkpoint's label set, which must have ``label_set``'s classes in the same order;
    otherwise one line naming both class lists (``what`` names the file, ``where`` what to do)."""
    trained = checkpoint_labels(data)
    if trained is None:
        raise CheckpointError(f"{what} records no label set, so it cannot be checked against the dataset's "
                              f"classes ({', '.join(label_set.codes)}); {where}")
    label_set.require_same(trained, what, where)
    return trained
