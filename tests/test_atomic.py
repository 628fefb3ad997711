"""derma_core.atomic: a file or folder appears whole under its name, or not at all."""

from __future__ import annotations

import json

import pytest

from derma_core import atomic


class Boom(RuntimeError):
    pass


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_appears_whole_and_an_error_keeps_the_old_one(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    with pytest.raises(Boom):
        with atomic.atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write('{"x": 2')  # half written
            raise Boom()
    assert json.loads(path.read_text()) == {"x": 1}  # the previous complete file stands
    assert _leftovers(path.parent) == []  # and no temporary is left behind


def test_atomic_path_keeps_the_suffix_a_writer_needs(tmp_path):
    with atomic.atomic_path(tmp_path / "f.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and not (tmp_path / "f.png").exists()
        tmp.write_bytes(b"png")
    assert (tmp_path / "f.png").read_bytes() == b"png" and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_open(tmp_path / "g", "a"):
            pass


def test_a_folder_replaces_an_old_one_only_when_complete(tmp_path):
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with pytest.raises(Boom):
        with atomic.atomic_dir(dst) as tmp:
            (tmp / "new.txt").write_text("new")
            raise Boom()
    assert sorted(p.name for p in dst.iterdir()) == ["old.txt"] and _leftovers(tmp_path) == []
    with atomic.atomic_dir(dst) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"] and _leftovers(tmp_path) == []


def test_a_folder_another_process_finished_first_stands(tmp_path):
    dst = tmp_path / "tiny"
    with atomic.atomic_dir(dst, keep_existing=lambda d: (d / "marker").exists()) as tmp:
        (tmp / "mine").write_text("mine")
        dst.mkdir()  # meanwhile another process completes the same folder
        (dst / "marker").write_text("theirs")
    assert sorted(p.name for p in dst.iterdir()) == ["marker"] and _leftovers(tmp_path) == []
    # an incomplete folder (no marker) is replaced
    (dst / "marker").unlink()
    with atomic.atomic_dir(dst, keep_existing=lambda d: (d / "marker").exists()) as tmp:
        (tmp / "marker").write_text("mine")
    assert (dst / "marker").read_text() == "mine"
