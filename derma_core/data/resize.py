"""Resizing: one image (:func:`resize_image`) and many in parallel into a uint8 ``.npy`` cache
(:func:`resize_into_cache`).

JPEGs are decoded in draft mode (libjpeg's DCT scaling decodes straight to 1/2, 1/4 or 1/8 size,
never smaller than needed) and then resized with a Lanczos-3 filter: by ``cykooz-resizer`` (the
SIMD ``fast_image_resize`` library, within 2 grey levels of Pillow's Lanczos and about 5x faster)
where it is installed, else by Pillow. :func:`resampler` names the one in use; prepared folders
record it. Modes:

``squash``  stretch to size x size, ignoring the aspect ratio (the original study's ``.resize``)
``pad``     pad to a square with the CLIP mean colour, then resize (what LLaVA does)
``crop``    centre-crop the largest square, then resize
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..lifetime import die_with_parent

RESIZE_MODES = ("squash", "pad", "crop")
#: LLaVA's pad colour: int(x * 255) of CLIP's image_mean (truncated, as the original does).
PAD_COLOUR = (122, 116, 104)
JPEG_QUALITY = 95


def _draft_request(width: int, height: int, size: int, mode: str) -> tuple[int, int]:
    """The smallest decode size that still leaves at least ``size`` pixels where they are needed."""
    if mode == "squash":
        return size, size
    if mode == "pad":  # the long side becomes ``size``
        scale = size / max(width, height)
    else:  # crop: the short side becomes ``size``
        scale = size / min(width, height)
    return max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale)))


def resize_image(image, size: int, mode: str = "squash"):
    """A PIL image resized to ``size`` x ``size`` RGB by ``mode`` (see the module docstring).
    Call ``image.draft`` before this (as :func:`load_resized` does) to decode JPEGs faster."""
    from PIL import Image, ImageOps

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}")
    if image.getexif().get(0x0112, 1) != 1:  # an EXIF orientation: turn the pixels upright
        image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    if mode == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), PAD_COLOUR)
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    elif mode == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return _lanczos(image, size)


@functools.cache
def _fast_resizer():
    """(cykooz_resizer.Resizer, its Lanczos-3 options), or None where it is not installed."""
    try:
        import cykooz_resizer as cz
    except Exception:  # not installed, or no wheel for this platform: Pillow does it
        return None
    return cz.Resizer(), cz.ResizeOptions(resize_alg=cz.ResizeAlg.convolution(cz.FilterType.lanczos3))


def _lanczos(image, size: int):
    """``image`` (RGB) resized to ``size`` x ``size`` with a Lanczos-3 filter."""
    from PIL import Image

    fast = _fast_resizer()
    if fast is None:
        return image.resize((size, size), Image.LANCZOS, reducing_gap=None)
    resizer, options = fast
    out = Image.new("RGB", (size, size), None)  # no fill: every pixel is written
    resizer.resize_pil(image, out, options)
    return out


def resampler() -> str:
    """The resampling filter and library in use, e.g. ``lanczos3 (cykooz-resizer 4.0.1)``;
    recorded by prepared folders, whose cache rebuilds when it changes."""
    from importlib.metadata import PackageNotFoundError, version

    if _fast_resizer() is not None:
        try:
            return f"lanczos3 (cykooz-resizer {version('cykooz-resizer')})"
        except PackageNotFoundError:  # pragma: no cover - imported from a source tree
            return "lanczos3 (cykooz-resizer)"
    import PIL

    return f"lanczos (pillow {PIL.__version__})"


def load_resized(data: bytes | str | os.PathLike, size: int, mode: str = "squash"):
    """Decode an image file (or its bytes) at reduced size and resize it; raises OSError or
    PIL.UnidentifiedImageError for empty, truncated or undecodable files."""
    from PIL import Image

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(source) as im:
        im.draft("RGB", _draft_request(*im.size, size, mode))
        im.load()  # decode now, inside the with: truncation errors surface here
        return resize_image(im, size, mode)


# one job: (row in the cache, source path, destination for the resized JPEG or None)
Job = tuple[int, str, str | None]


def _work(cache_path: str, jobs: list[Job], size: int, mode: str) -> list[tuple[int, str | None, str | None]]:
    """Resize ``jobs`` into rows of the ``.npy`` file at ``cache_path``; per job (row, sha256, error).

    Rows are written with plain file writes at their offsets (no memory map: its page faults and
    ``msync`` cost more than the resize); nothing is fsynced, so a row that a power cut lost is
    all zeros, which :func:`missing_rows` finds on resume."""
    offset, row_bytes = cache_layout(cache_path, size)
    results = []
    with open(cache_path, "r+b") as cache:
        for row, src, dst in jobs:
            try:
                data = Path(src).read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if not data:
                    raise OSError("the file is empty (0 bytes)")
                image = load_resized(data, size, mode)
                pixels = image.tobytes()
                if len(pixels) != row_bytes:  # pragma: no cover - resize_image always gives size x size RGB
                    raise ValueError(f"resized to {image.size} {image.mode}, expected {size}x{size} RGB")
            except Exception as exc:  # one bad file must not stop the others; it is reported
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                results.append((row, None, message))
                continue
            # writing is outside the try: a full disk or a read-only folder is not a bad image, it
            # stops the preparation (the rows done so far are kept for the rerun)
            if dst is not None:
                encoded = io.BytesIO()
                image.save(encoded, format="JPEG", quality=JPEG_QUALITY)
                tmp = f"{dst}.tmp{os.getpid()}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(encoded.getbuffer())
                    os.replace(tmp, dst)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            cache.seek(offset + row * row_bytes)
            cache.write(pixels)
            results.append((row, digest, None))
    return results


def cache_layout(cache_path: str | os.PathLike, size: int) -> tuple[int, int]:
    """(byte offset of row 0, bytes per row) of the uint8 (N, size, size, 3) ``.npy`` file."""
    cache = np.load(cache_path, mmap_mode="r")
    try:
        if cache.dtype != np.uint8 or not cache.flags.c_contiguous or cache.shape[1:] != (size, size, 3):
            raise ValueError(f"{cache_path}: expected a C-ordered uint8 (N, {size}, {size}, 3) array, "
                             f"found {cache.dtype} {cache.shape}; delete it to rebuild")
        return int(cache.offset), size * size * 3
    finally:
        del cache


def missing_rows(cache_path: str | os.PathLike, rows: Iterable[int], batch: int = 256) -> list[int]:
    """Those of ``rows`` that are all zeros in the cache (never written, or lost in a crash)."""
    rows = sorted(rows)
    cache = np.load(cache_path, mmap_mode="r")
    missing = []
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        blank = ~cache[part].reshape(len(part), -1).any(axis=1)
        missing.extend(r for r, b in zip(part, blank) if b)
    del cache
    return missing


def mp_context():
    """Workers start with forkserver (spawn where missing): forking a process whose torch
    thread pools are running can deadlock."""
    import multiprocessing as mp

    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers exit when this process dies, however it dies (SIGKILL
    included): a killed `derma prep` leaves no forkserver worker behind."""
    return ProcessPoolExecutor(workers, mp_context=mp_context(), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


def resize_into_cache(cache_path: str | os.PathLike, jobs: Iterable[Job], size: int, mode: str,
                      workers: int | None = None, chunk: int = 32,
                      on_done: Callable[[list[tuple[int, str | None, str | None]]], None] | None = None,
                      progress: bool = False) -> list[tuple[int, str | None, str | None]]:
    """Resize every job into the existing ``.npy`` file at ``cache_path`` using ``workers``
    processes; ``on_done`` is called with each finished chunk's results (for resumable
    bookkeeping). Returns (row, sha256, error) for every job."""
    from ..progress import progress as tqdm  # tqdm on a terminal, whole lines in a log file

    jobs = list(jobs)
    workers = workers or default_workers()
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    results: list[tuple[int, str | None, str | None]] = []
    bar = tqdm(total=len(jobs), desc=f"resizing to {size}px ({mode})", disable=not progress, leave=False,
               dynamic_ncols=True)

    def record(done: list[tuple[int, str | None, str | None]]) -> None:
        results.extend(done)
        if on_done:
            on_done(done)
        bar.update(len(done))

    try:
        if workers <= 1 or len(jobs) <= chunk:
            for part in chunks:
                record(_work(str(cache_path), part, size, mode))
        else:
            finished: set[int] = set()
            try:
                with worker_pool(workers) as pool:
                    futures = {pool.submit(_work, str(cache_path), part, size, mode): k for k, part in enumerate(chunks)}
                    for fut in as_completed(futures):
                        done = fut.result()
                        finished.add(futures[fut])
                        record(done)
            except BrokenProcessPool:
                # worker processes could not start (e.g. a script read from stdin, which they
                # cannot re-import): finish in this process rather than fail
                warnings.warn("resize worker processes failed to start; resizing in one process", RuntimeWarning,
                              stacklevel=2)
                for k, part in enumerate(chunks):
                    if k not in finished:
                        record(_work(str(cache_path), part, size, mode))
    finally:
        bar.close()
    return results
