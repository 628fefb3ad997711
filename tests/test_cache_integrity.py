"""A damaged prepared cache is never trusted (issue 20, family 1).

``derma prep`` records the cache's size and a sha256 per chunk of rows in the manifest; a re-run
that would say "up to date" checks the size and a sample of chunks (``--verify``: every chunk)
and repairs what is damaged by resizing only the rows of the damaged chunks; a run
(:func:`load_prepared`) checks the size and a sample before it opens the cache and refuses in one
line naming the folder and the ``derma prep`` command to run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from derma_core.cli import cli
from derma_core.data import prepare as prepmod
from derma_core.data import resize as resizemod
from derma_core.data.prepare import CacheDamagedError, PrepParams, load_prepared, prepare
from derma_core.data.raw import PrepError
from derma_core.data.synthetic import generate
from derma_core.testing import as_prepared_by_an_earlier_derma

SIZE = 16
ROW = SIZE * SIZE * 3
CHUNK = 16  # rows per digest in these tests: 168 rows make 11 chunks
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("integrity") / "raw", n=168, seed=11, workers=1)


@pytest.fixture(scope="module")
def golden(raw, tmp_path_factory) -> Path:
    """A prepared folder with a 16-row chunk record (tests copy it before damaging it)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(resizemod, "CHUNK_ROWS", CHUNK)
    try:
        out = tmp_path_factory.mktemp("golden") / "prep"
        prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    finally:
        mp.undo()
    return out


@pytest.fixture()
def prepared(golden, tmp_path) -> Path:
    out = tmp_path / "prep"
    shutil.copytree(golden, out)
    return out


def _cache(out: Path) -> Path:
    return out / "cache" / "images.npy"


def _offset(out: Path) -> int:
    return resizemod.read_header(_cache(out))[3]


def _zero_rows(out: Path, lo: int, hi: int) -> None:
    with open(_cache(out), "r+b") as f:
        f.seek(_offset(out) + lo * ROW)
        f.write(b"\0" * ((hi - lo) * ROW))


def _flip_byte(out: Path, row: int) -> None:
    with open(_cache(out), "r+b") as f:
        f.seek(_offset(out) + row * ROW + 7)
        value = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([value ^ 0x55]))


def _truncate(out: Path) -> None:
    os.truncate(_cache(out), _cache(out).stat().st_size // 2)


def _zero_file(out: Path) -> None:
    size = _cache(out).stat().st_size
    _cache(out).write_bytes(b"\0" * size)


def _append(out: Path) -> None:
    with open(_cache(out), "ab") as f:
        f.write(b"\1" * 100)


def _zero_header(out: Path) -> None:
    with open(_cache(out), "r+b") as f:
        f.write(b"\0" * 64)


DAMAGE = {
    # damage, what the message says, rows resized again by the repair
    "truncated": (_truncate, "truncated", None),
    "zeros_everywhere": (_zero_file, "header is damaged", 168),
    "first_chunk_zeroed": (lambda out: _zero_rows(out, 0, 5), "do not match their recorded sha256", CHUNK),
    "one_bit_flipped_last_chunk": (lambda out: _flip_byte(out, 167), "do not match their recorded sha256", 168 % CHUNK),
    "bytes_appended": (_append, "expected", 0),
    "header_zeroed": (_zero_header, "header is damaged", 0),
}


def _resized(out: Path) -> int:
    return json.loads((out / "prep_report.json").read_text())["summary"]["images_resized"]


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_run_refuses_a_damaged_cache_in_one_line(raw, prepared, name):
    damage, needle, _ = DAMAGE[name]
    load_prepared(prepared)  # intact: opens
    damage(prepared)
    with pytest.raises(CacheDamagedError) as err:
        load_prepared(prepared)
    message = str(err.value)
    assert "\n" not in message and needle in message
    assert message.startswith(f"{prepared}: its image cache cache/images.npy is damaged")
    assert (f"run `derma prep --dataset ham10000 --raw {raw} --out {prepared} --size {SIZE} --split grouped` "
            "again to repair it") in message
    assert "--verify" in message


@pytest.mark.parametrize("name", list(DAMAGE))
def test_prep_repairs_only_the_damaged_chunks(raw, prepared, golden, name):
    damage, needle, redone = DAMAGE[name]
    damage(prepared)
    lines = []
    manifest = prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False,
                       log=lines.append)
    assert not any("up to date" in line for line in lines)
    assert any(line.startswith(f"warning: {_cache(prepared)} is damaged") and needle in line for line in lines)
    if redone is not None:
        assert _resized(prepared) == redone
    else:  # truncated to half: the chunks at or after the cut are redone, those before reused
        assert 0 < _resized(prepared) < 168
    assert _cache(prepared).read_bytes() == _cache(golden).read_bytes()
    assert manifest["digest"] == json.loads((golden / "manifest.json").read_text())["digest"]
    load_prepared(prepared)  # trusted again
    again = []
    prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False, log=again.append)
    assert any("up to date" in line for line in again)


def test_verify_checks_every_chunk_where_the_sample_may_miss_one(raw, prepared, golden, monkeypatch):
    # a sample of the first and last chunks only never looks at chunk 5
    monkeypatch.setattr(resizemod, "SAMPLE_CHUNKS", 2)
    _zero_rows(prepared, 5 * CHUNK, 5 * CHUNK + 3)
    lines = []
    prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False, log=lines.append)
    assert any("up to date" in line for line in lines)  # the sample missed it
    result = CliRunner().invoke(cli, ["prep", "--raw", str(raw), "--out", str(prepared), "--size", str(SIZE),
                                      "--split", "grouped", "--workers", "1", "-q", "--verify"])
    assert result.exit_code == 0, result.output
    assert f"rows {5 * CHUNK}-{6 * CHUNK - 1}" in result.output and "is damaged" in result.output
    assert _resized(prepared) == CHUNK
    assert _cache(prepared).read_bytes() == _cache(golden).read_bytes()
    clean = CliRunner().invoke(cli, ["prep", "--raw", str(raw), "--out", str(prepared), "--size", str(SIZE),
                                     "--split", "grouped", "--workers", "1", "-q", "--verify"])
    assert clean.exit_code == 0 and "every chunk checked" in clean.output and "up to date" in clean.output


def test_a_rebuild_does_not_reuse_damaged_rows(raw, prepared, golden, tmp_path):
    """A re-run with changed inputs copies unchanged rows from the old cache: only rows that still
    match the record."""
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    _zero_rows(prepared, 0, CHUNK)
    # a new --name changes the fingerprint, not the rows: everything is reused but chunk 0
    prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, name="renamed", **QUIET)
    summary = json.loads((prepared / "prep_report.json").read_text())["summary"]
    assert summary["images_resized"] == CHUNK and summary["images_reused"] == 168 - CHUNK
    assert _cache(prepared).read_bytes() == _cache(golden).read_bytes()


def test_a_folder_without_a_record_is_checked_and_recorded_once(raw, prepared, golden):
    """Folders prepared before the record existed: a run checks the size and that sampled rows
    are not all zeros; the next prep checks every row once, reuses them and writes the record."""
    as_prepared_by_an_earlier_derma(prepared)
    load_prepared(prepared)  # intact: opens
    _zero_rows(prepared, 0, 2)
    with pytest.raises(CacheDamagedError, match="2 rows are all zeros"):
        load_prepared(prepared)
    lines = []
    new = prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False, log=lines.append)
    assert _resized(prepared) == 2  # the blank rows; the synthetic JPEGs are reused
    assert new["cache"]["integrity"]["chunks"]
    assert _cache(prepared).read_bytes() == _cache(golden).read_bytes()


def test_a_damaged_read_only_folder_says_so_in_one_line(raw, prepared, monkeypatch):
    import contextlib
    import errno

    @contextlib.contextmanager
    def read_only_lock(folder):  # what flock on a read-only folder gives (chmod does not stop root)
        raise PermissionError(errno.EACCES, "Permission denied", str(folder / ".lock"))
        yield

    monkeypatch.setattr(prepmod, "folder_lock", read_only_lock)
    lines = []
    prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False, log=lines.append)
    assert any("up to date" in line for line in lines)  # intact and read-only: fine, as before
    _zero_rows(prepared, 0, 1)
    before = _cache(prepared).read_bytes()
    with pytest.raises(PrepError) as err:
        prepare(raw, prepared, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    assert len(str(err.value).splitlines()) == 1
    assert "is damaged" in str(err.value) and "read-only" in str(err.value) and "run the same command" in str(err.value)
    assert _cache(prepared).read_bytes() == before  # nothing touched


def test_the_run_source_refuses_before_any_mlflow_run(prepared):
    """The dataset is loaded (and its cache checked) before the runner creates an MLflow run."""
    from derma_core import runner

    _truncate(prepared)
    config = {"data": {"source": "ham10000", "dir": str(prepared)}}
    with pytest.raises(ValueError, match="is damaged .* again to repair it"):
        runner.load_dataset(config)


def test_record_is_cheap_and_chunked(golden):
    info = json.loads((golden / "manifest.json").read_text())["cache"]
    record = info["integrity"]
    assert record["chunk_rows"] == CHUNK and len(record["chunks"]) == -(-168 // CHUNK)
    assert record["bytes"] == _cache(golden).stat().st_size == record["offset"] + 168 * ROW
    assert resizemod.cache_record(_cache(golden), 168, SIZE, CHUNK) == record
    assert not resizemod.check_cache(_cache(golden), info["shape"], record, full=True).damaged
    assert np.load(_cache(golden)).shape == (168, SIZE, SIZE, 3)
