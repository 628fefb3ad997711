"""Checkpoints: atomic writes, weights_only loading, RNG states round-trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from derma_resnet18 import checkpoint as C


def test_roundtrip_is_weights_only_loadable(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = C.save_checkpoint(tmp_path / "checkpoint.pt", {
        "epoch": 2, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": C.rng_state(),
        "config": {"train": {"lr": 1e-3, "optimizer": "adamw"}, "seed": 1, "data": {"dir": None}},
        "history": [{"epoch": 1.0, "val_macro_f1": 0.5}],
    })
    # the raw file loads with weights_only=True: no pickled objects inside
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == C.FORMAT and raw["epoch"] == 2
    ck = C.load_checkpoint(path)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(ck["optimizer"])
    assert ck["config"]["train"]["optimizer"] == "adamw"


def test_rng_states_roundtrip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = C.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    C.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    C.save_checkpoint(path, {"epoch": 1})

    def crash(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert C.load_checkpoint(path)["epoch"] == 1  # the previous checkpoint survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(C.CheckpointError, match="cannot be read") as info:
        C.load_checkpoint(bad)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(C.CheckpointError, match="format"):
        C.load_checkpoint(other)


def test_checkpoints_record_their_label_set(tmp_path):
    """A checkpoint's ``labels`` round-trip under weights_only; a /1 checkpoint (before label
    sets) holds HAM10000's seven classes; a mismatch is one line naming both class lists."""
    from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
    from derma_core.labels import LabelSet

    three = LabelSet(codes=("a", "b", "c"), names=("A", "B", "C"), synonyms={"a": ("alpha",)})
    path = C.save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1, "labels": three.to_dict()})
    ck = C.load_checkpoint(path)
    assert C.checkpoint_labels(ck) == three
    assert C.require_same_labels(ck, LabelSet(codes=("a", "b", "c")), "ck", "do X") == three  # names may differ
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": C.LEGACY_FORMAT, "epoch": 3}, legacy)
    assert C.checkpoint_labels(C.load_checkpoint(legacy)) == HAM
    with pytest.raises(ValueError) as info:
        C.require_same_labels(C.load_checkpoint(legacy), three, f"checkpoint {legacy}", "do X")
    message = str(info.value)
    assert "\n" not in message and ", ".join(HAM.codes) in message and "a, b, c" in message
    with pytest.raises(C.CheckpointError, match="records no label set"):
        C.require_same_labels({"format": C.FORMAT}, three, "ck", "do X")
