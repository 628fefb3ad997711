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

Decoding (:func:`to_rgb`) goes by the image's mode: 16-bit greyscale (``I;16``, ``I;16B``, PNG's
16-bit grey) is scaled by its bit depth (``v * 255 / 65535``), 32-bit integer (``I``) likewise when
its values fit 16 bits and by its actual min..max range otherwise, float (``F``) by 255 when it lies
in 0..1 and by its actual range otherwise; palette images (``P``) through their palette;
transparency (``RGBA``, ``LA``, ``PA``, a palette or single-colour transparency) is composited on
white (what image viewers show); CMYK is converted and the EXIF orientation applied as always.
An image with a side under ``min_side`` pixels, or over Pillow's decompression-bomb limit, is
refused (:class:`ImageRefused`); every warning the decoder gives is handed back, not printed.

The cache carries an integrity record (:func:`cache_record`: its size, header length and a sha256
per :data:`CHUNK_ROWS` rows) that :func:`check_cache` checks, in full or by a sample of chunks.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import warnings
from dataclasses import dataclass, field
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..atomic import atomic_open
from ..lifetime import die_with_parent

RESIZE_MODES = ("squash", "pad", "crop")
#: LLaVA's pad colour: int(x * 255) of CLIP's image_mean (truncated, as the original does).
PAD_COLOUR = (122, 116, 104)
JPEG_QUALITY = 95
#: Bumped when the same file decodes to different pixels (2: decoding by mode, see :func:`to_rgb`);
#: prepared folders record it, and rows of non-JPEG images decoded by an older one are redone.
DECODE_VERSION = 2
#: The smallest image side ``derma prep`` accepts by default (``--min-side``).
DEFAULT_MIN_SIDE = 16
#: The colour transparent pixels are composited on.
BACKGROUND = (255, 255, 255)
#: Rows per digest in the cache's integrity record; chunks checked when a cache is opened.
CHUNK_ROWS = 256
SAMPLE_CHUNKS = 3


class ImageRefused(ValueError):
    """An image ``derma prep`` will not use; ``code`` is its problem code in the prep report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    image = to_rgb(image)
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


def _to_8bit(image):
    """A one-channel integer or float image (``I;16*``, ``I``, ``F``) as an 8-bit ``L`` image,
    scaled by its bit depth where it has one and by its actual range otherwise (module docstring)."""
    from PIL import Image

    values = np.asarray(image)
    if values.size == 0:
        raise ImageRefused("undecodable_image", f"mode {image.mode} image without pixels")
    if image.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if values.dtype.kind == "f" and 0.0 <= vmin and vmax <= 1.0:
            lo, hi = 0.0, 1.0
        elif values.dtype.kind != "f" and 0 <= vmin and vmax <= 65535:
            lo, hi = 0.0, 65535.0 if vmax > 255 else 255.0
        else:
            lo, hi = vmin, vmax
    scaled = (np.nan_to_num(values.astype(np.float64), nan=lo) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image, background: tuple[int, int, int] = BACKGROUND):
    """``image`` as 8-bit RGB, decoded by its mode (see the module docstring); transparency is
    composited on ``background``."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _to_8bit(image).convert("RGB")
    if mode in ("P", "PA", "LA", "La", "RGBa", "RGBA") or (
            mode in ("L", "RGB", "1") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] == 255:  # fully opaque
            return rgba.convert("RGB")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    try:
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, ...
    except (ValueError, OSError) as exc:
        raise ImageRefused("undecodable_image", f"image mode {mode} cannot be turned into RGB ({exc})") from None


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


def load_resized(data: bytes | str | os.PathLike, size: int, mode: str = "squash", *, min_side: int = 1,
                 caught: list[str] | None = None, info: dict | None = None):
    """Decode an image file (or its bytes) at reduced size and resize it; raises OSError or
    PIL.UnidentifiedImageError for empty, truncated or undecodable files and
    :class:`ImageRefused` for one with a side under ``min_side`` or over Pillow's
    decompression-bomb limit. With ``caught``, every warning the decoder gives is appended to it
    (``Category: message``) instead of being printed; ``info`` receives the image's size ("wh")."""
    from PIL import Image

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            with Image.open(source) as im:
                w, h = im.size
                if info is not None:
                    info["wh"] = [w, h]
                if min(w, h) < min_side:
                    raise ImageRefused("image_too_small", f"{w}x{h} pixels, smaller than the minimum side of "
                                                          f"{min_side} pixels (--min-side)")
                im.draft("RGB", _draft_request(w, h, size, mode))
                im.load()  # decode now, inside the with: truncation errors surface here
                out = resize_image(im, size, mode)
        except Image.DecompressionBombError as exc:
            raise ImageRefused("image_too_large", f"{str(exc).splitlines()[0].rstrip('.')}") from None
    for warned in seen:
        text = str(warned.message).splitlines()[0].strip().rstrip(".") if str(warned.message).strip() else ""
        if caught is not None:
            caught.append(f"{warned.category.__name__}: {text}" if text else warned.category.__name__)
        else:
            warnings.warn_explicit(warned.message, warned.category, warned.filename, warned.lineno)
    return out


# one job: (row in the cache, source path, destination for the resized JPEG or None)
Job = tuple[int, str, str | None]
#: one result: (row, sha256 of the source or None, error or None, {"wh": [w, h], "warnings": [...]})
Result = tuple[int, "str | None", "str | None", dict]


def refusal(code: str, message: str) -> str:
    """An error text that names its problem code (:func:`error_code` reads it back)."""
    return f"[{code}] {message}"


def error_code(error: str) -> tuple[str, str]:
    """(problem code, message) of a resize error."""
    if error.startswith("[") and "] " in error:
        code, _, message = error[1:].partition("] ")
        if code.replace("_", "").isalnum():
            return code, message
    low = error.lower()
    kind = "truncated_image" if "truncated" in low else ("empty_image" if "empty" in low else "undecodable_image")
    return kind, error


def _work(cache_path: str, jobs: list[Job], size: int, mode: str, min_side: int = 1) -> list[Result]:
    """Resize ``jobs`` into rows of the ``.npy`` file at ``cache_path``; per job (row, sha256,
    error, info): info holds the image's size and the decoder's warnings.

    Rows are written with plain file writes at their offsets (no memory map: its page faults and
    ``msync`` cost more than the resize); nothing is fsynced, so a row that a power cut lost is
    all zeros, which :func:`missing_rows` finds on resume."""
    offset, row_bytes = cache_layout(cache_path, size)
    results = []
    with open(cache_path, "r+b") as cache:
        for row, src, dst in jobs:
            info: dict = {}
            caught: list[str] = []
            try:
                try:
                    data = Path(src).read_bytes()
                except OSError as exc:  # a dangling link, no permission: not a decoding problem
                    why = exc.strerror or str(exc)
                    if os.path.islink(src) and not os.path.exists(src):
                        why = f"a symbolic link to {os.readlink(src)}, which does not exist"
                    raise ImageRefused("unreadable_image", f"cannot be read ({why})") from None
                digest = hashlib.sha256(data).hexdigest()
                if not data:
                    raise OSError("the file is empty (0 bytes)")
                image = load_resized(data, size, mode, min_side=min_side, caught=caught, info=info)
                pixels = image.tobytes()
                if len(pixels) != row_bytes:  # pragma: no cover - resize_image always gives size x size RGB
                    raise ValueError(f"resized to {image.size} {image.mode}, expected {size}x{size} RGB")
            except ImageRefused as exc:
                results.append((row, None, refusal(exc.code, str(exc).splitlines()[0]), info))
                continue
            except Exception as exc:  # one bad file must not stop the others; it is reported
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                results.append((row, None, message, info))
                continue
            if caught:
                info["warnings"] = caught
            # writing is outside the try: a full disk or a read-only folder is not a bad image, it
            # stops the preparation (the rows done so far are kept for the rerun)
            if dst is not None:
                encoded = io.BytesIO()
                image.save(encoded, format="JPEG", quality=JPEG_QUALITY)
                with atomic_open(dst, "wb") as f:
                    f.write(encoded.getbuffer())
            cache.seek(offset + row * row_bytes)
            cache.write(pixels)
            results.append((row, digest, None, info))
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


# ---------------------------------------------------------------- the cache's integrity record

def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, byte offset of the data) from a ``.npy`` header; ValueError
    (or OSError) where it cannot be read."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(shape), bool(fortran), dtype, f.tell()


def _header_length(shape: tuple[int, ...]) -> int:
    """The header length numpy writes for a C-ordered uint8 array of ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return len(buf.getvalue())


def _chunk_digest(f, start: int, length: int, block: int = 8 << 20) -> tuple[str, int]:
    """(sha256 of ``length`` bytes from ``start``, bytes actually read)."""
    h = hashlib.sha256()
    f.seek(start)
    done = 0
    while done < length:
        data = f.read(min(block, length - done))
        if not data:
            break
        h.update(data)
        done += len(data)
    return h.hexdigest(), done


def cache_record(path: str | os.PathLike, rows: int, size: int, chunk_rows: int | None = None) -> dict:
    """What a finished cache holds, for :func:`check_cache`: its size in bytes, its header length
    and the sha256 of every ``chunk_rows`` (default :data:`CHUNK_ROWS`) rows (one read of the file)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    _, _, _, offset = read_header(path)
    row_bytes = size * size * 3
    digests = []
    with open(path, "rb") as f:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            digests.append(_chunk_digest(f, offset + start * row_bytes, n * row_bytes)[0])
    return {"bytes": os.path.getsize(path), "offset": offset, "chunk_rows": chunk_rows, "algorithm": "sha256",
            "chunks": digests}


@dataclass
class CacheCheck:
    """What :func:`check_cache` found: ``problems`` with the file as a whole (missing,
    truncated, a damaged header) and the ``bad_rows`` whose content does not match the record
    (or, without a record, that are all zeros)."""

    path: Path
    rows: int
    problems: list[str] = field(default_factory=list)
    bad_rows: list[int] = field(default_factory=list)
    bad_chunks: int = 0
    chunks_checked: int = 0
    chunks: int = 0
    recorded: bool = True
    offset: int = 0
    readable_rows: int = 0
    full: bool = False
    chunk_rows: int = CHUNK_ROWS
    cut_from: int = 0  # rows from here on are (partly) cut off a truncated file

    @property
    def damaged(self) -> bool:
        return bool(self.problems or self.bad_rows)

    def reason(self) -> str:
        """One phrase: what is wrong."""
        parts = list(self.problems)
        cut = [r for r in self.bad_rows if r >= self.cut_from]
        bad = [r for r in self.bad_rows if r < self.cut_from]
        if cut:
            parts.append(f"the chunks holding rows {cut[0]}-{cut[-1]} are cut off" if len(cut) > 1
                         else f"the chunk holding row {cut[0]} is cut off")
        if bad:
            rows = f"row {bad[0]}" if len(bad) == 1 else f"rows {bad[0]}-{bad[-1]}"
            if self.recorded:
                parts.append(f"{self.bad_chunks} of {self.chunks} chunks of {self.chunk_rows} rows do not match their "
                             f"recorded sha256 ({len(bad)} rows, {rows})")
            else:
                parts.append(f"{len(bad)} rows are all zeros ({rows})")
        return "; ".join(parts)


def check_cache(path: str | os.PathLike, shape, record: dict | None, full: bool = False,
                sample: int | None = None) -> CacheCheck:
    """Check the cache at ``path`` (uint8 ``shape``) against its integrity ``record`` (from
    :func:`cache_record`): the file's size and header always; the digests of every chunk with
    ``full``, else of ``sample`` (default :data:`SAMPLE_CHUNKS`) chunks: the first, the last and
    others at random. Without a record (a folder prepared before records existed), rows that are
    all zeros count as damaged."""
    path = Path(path)
    sample = max(2, sample or SAMPLE_CHUNKS)
    rows, size = int(shape[0]), int(shape[1])
    row_bytes = size * size * 3
    chunk_rows = int((record or {}).get("chunk_rows") or CHUNK_ROWS)
    n_chunks = -(-rows // chunk_rows)
    check = CacheCheck(path, rows, chunks=n_chunks, recorded=record is not None, chunk_rows=chunk_rows,
                       cut_from=rows)
    try:
        actual = path.stat().st_size
    except OSError as exc:
        check.problems.append(f"it cannot be read ({exc.strerror or exc})")
        check.bad_rows = list(range(rows))
        check.cut_from = 0
        return check
    offset = None
    try:
        found, fortran, dtype, header_end = read_header(path)
        if found != tuple(shape) or fortran or dtype != np.uint8:
            check.problems.append(f"its header says {dtype} {found}, expected uint8 {tuple(shape)}")
        else:
            offset = header_end
    except (ValueError, OSError, EOFError):
        check.problems.append("its header is damaged")
    if record is not None:
        if offset is not None and offset != record.get("offset"):
            check.problems.append(f"its header is {offset} bytes, {record.get('offset')} recorded")
        offset = int(record.get("offset", offset or _header_length(shape)))
    elif offset is None:
        offset = _header_length(shape)
    expected = offset + rows * row_bytes
    if actual < expected:
        check.problems.append(f"it is truncated ({actual} of {expected} bytes)")
    elif actual > expected:
        check.problems.append(f"it is {actual} bytes, {expected} expected")
    check.offset = offset
    check.readable_rows = readable = max(0, min(rows, (actual - offset) // row_bytes))
    check.full = full or n_chunks <= sample
    if check.full:
        chosen = list(range(n_chunks))
    else:
        middle = list(range(1, n_chunks - 1))
        chosen = sorted({0, n_chunks - 1} | set(random.Random().sample(middle, min(len(middle), sample - 2))))
    digests = (record or {}).get("chunks") or []
    bad: set[int] = set()
    with open(path, "rb") as f:
        for c in range(n_chunks):
            lo, hi = c * chunk_rows, min(rows, (c + 1) * chunk_rows)
            if hi > readable:  # (partly) cut off: nothing to check, the chunk is redone
                bad.update(range(lo, hi))
                check.cut_from = min(check.cut_from, lo)
                continue
            if c not in chosen:
                continue
            check.chunks_checked += 1
            if record is not None:
                digest, _ = _chunk_digest(f, offset + lo * row_bytes, (hi - lo) * row_bytes)
                if c >= len(digests) or digest != digests[c]:
                    bad.update(range(lo, hi))
                    check.bad_chunks += 1
            else:
                f.seek(offset + lo * row_bytes)
                block = np.frombuffer(f.read((hi - lo) * row_bytes), dtype=np.uint8).reshape(hi - lo, row_bytes)
                blank = np.flatnonzero(~block.any(axis=1))
                if len(blank):
                    bad.update(lo + int(r) for r in blank)
                    check.bad_chunks += 1
    check.bad_rows = sorted(bad)
    return check


def open_rows(check: CacheCheck, size: int):
    """A read-only memory map of the rows of a checked cache that the file still holds (its
    header is not needed: a damaged one is skipped), or None where it holds none."""
    if not check.readable_rows:
        return None
    return np.memmap(check.path, dtype=np.uint8, mode="r", offset=check.offset,
                     shape=(check.readable_rows, size, size, 3))


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
                      on_done: Callable[[list[Result]], None] | None = None,
                      progress: bool = False, min_side: int = 1) -> list[Result]:
    """Resize every job into the existing ``.npy`` file at ``cache_path`` using ``workers``
    processes; ``on_done`` is called with each finished chunk's results (for resumable
    bookkeeping). Returns (row, sha256, error, info) for every job (see :data:`Result`)."""
    from ..progress import progress as tqdm  # tqdm on a terminal, whole lines in a log file

    jobs = list(jobs)
    workers = workers or default_workers()
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    results: list[Result] = []
    bar = tqdm(total=len(jobs), desc=f"resizing to {size}px ({mode})", disable=not progress, leave=False,
               dynamic_ncols=True)

    def record(done: list[Result]) -> None:
        results.extend(done)
        if on_done:
            on_done(done)
        bar.update(len(done))

    try:
        if workers <= 1 or len(jobs) <= chunk:
            for part in chunks:
                record(_work(str(cache_path), part, size, mode, min_side))
        else:
            finished: set[int] = set()
            try:
                with worker_pool(workers) as pool:
                    futures = {pool.submit(_work, str(cache_path), part, size, mode, min_side): k
                               for k, part in enumerate(chunks)}
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
                        record(_work(str(cache_path), part, size, mode, min_side))
    finally:
        bar.close()
    return results
