"""Atomic writes: a file or folder appears whole under its name, or not at all.

Every writer derma has (prep's manifest and cache, checkpoints, feature caches, figures, tiny
model folders, downloads) writes to a temporary name beside the target, flushes it to disk and
renames it into place with ``os.replace`` (atomic on one filesystem). A crash, SIGKILL or full
disk leaves the previous complete file, never a torn one, and the temporary is removed on error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def _temp_beside(path: Path, suffix: str = ".tmp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a writer that removed its own file
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``savefig``,
    ``Image.save``); on a clean exit it is synced and renamed to ``path``, on an error removed.
    ``suffix`` keeps an extension a writer infers the format from (``.png``)."""
    path = Path(path)
    tmp = _temp_beside(path, suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """An open file that becomes ``path`` when the block ends without an error."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a new file: mode must contain 'w', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


@contextmanager
def atomic_dir(dst: str | os.PathLike, keep_existing: bool | Callable[[Path], bool] = False) -> Iterator[Path]:
    """A temporary folder beside ``dst`` to fill; on a clean exit it replaces ``dst``.

    ``keep_existing`` says whether a ``dst`` found at the end stands (another process finished the
    same work first: the temporary folder is dropped): True, False (an old ``dst`` is removed
    first), or a test of the folder (e.g. "its marker file says it is complete"). On an error the
    temporary folder is removed and ``dst`` is left as it was."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    def keep() -> bool:
        return dst.exists() and (keep_existing(dst) if callable(keep_existing) else bool(keep_existing))

    if keep():
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if dst.exists():
        shutil.rmtree(dst, ignore_errors=True)
    try:
        os.replace(tmp, dst)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not keep():  # another process won the race: theirs stands
            raise
