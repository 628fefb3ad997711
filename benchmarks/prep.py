"""Benchmark derma's resize step against the original study's loop.

Generates N full-size 600x450 JPEGs (the synthetic generator), then times on the same files:

* the original study's loop, one process:
  ``Image.open(src).convert("RGB").resize((224, 224))`` then ``save(dst, quality=95)``
* derma's resize step (``derma_core.data.resize.resize_into_cache``): JPEG draft-mode decoding,
  Lanczos-3 resize (``resampler()`` names the library), the resized JPEG (quality 95) plus the
  uint8 cache row, in ``--workers`` processes (and, for reference, in one process)

and prints the speed-up. Usage: ``python benchmarks/prep.py --n 2000 --repeats 3``.
Each run writes to a fresh folder after ``sync`` (so no run pays for the previous one's disk
write-back), the three are interleaved ``--repeats`` times and the best of each is compared.
The load average is printed too: other work on the machine lowers the parallel figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from derma_core.data.resize import default_workers, resampler, resize_into_cache

# the resize workers re-import this script (forkserver): keep its imports as light as `derma prep`'s,
# so heavy modules (the synthetic generator pulls in pandas) are imported inside main() only


def original_loop(files: list[Path], out: Path, size: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for src in files:
        img = Image.open(src).convert("RGB").resize((size, size))
        img.save(out / src.name, quality=95)
    return time.perf_counter() - start


def derma_step(files: list[Path], out: Path, size: int, workers: int) -> float:
    (out / "images").mkdir(parents=True, exist_ok=True)
    cache = out / "cache.npy"
    start = time.perf_counter()
    np.lib.format.open_memmap(cache, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)).flush()
    jobs = [(i, str(src), str(out / "images" / src.name)) for i, src in enumerate(files)]
    results = resize_into_cache(cache, jobs, size, "squash", workers=workers)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r[2]]
    if failed:
        raise SystemExit(f"derma's resize failed on {len(failed)} files, e.g. {failed[0]}")
    return elapsed


def create_cost(work: Path, n: int = 200) -> float:
    """Seconds to create one empty file in ``work`` (some file systems take 1 ms, most 0.03)."""
    probe = work / "probe"
    probe.mkdir()
    start = time.perf_counter()
    for i in range(n):
        (probe / f"{i}.jpg").touch()
    elapsed = (time.perf_counter() - start) / n
    shutil.rmtree(probe)
    return elapsed


def settle() -> None:
    """Flush dirty pages left by the previous run (derma's cache alone is N x 147 KB), so the
    kernel's write-back does not compete with the next timed run for the CPU."""
    if hasattr(os, "sync"):
        os.sync()
    time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images (at least 168)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3, help="best of R interleaved runs of each")
    parser.add_argument("--dir", help="work folder (default: a temporary one, deleted afterwards)")
    args = parser.parse_args()

    from derma_core.data.synthetic import generate

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="derma-bench-"))
    try:
        raw = work / "raw"
        t0 = time.perf_counter()
        generate(raw, n=max(args.n, 168), seed=0, workers=args.workers)
        files = sorted(raw.glob("HAM10000_images_part_*/*.jpg"))[: args.n]
        print(f"generated {len(files)} 600x450 JPEGs in {time.perf_counter() - t0:.1f} s ({work})")
        for f in files:  # warm the page cache so both sides read from memory
            f.read_bytes()
        print(f"creating one file in {work} takes {create_cost(work) * 1000:.2f} ms (both sides create N files; "
              "on a slow file system that shared cost lowers the ratio)")

        runs = {"seed": (original_loop, (args.size,)), "one": (derma_step, (args.size, 1)),
                "many": (derma_step, (args.size, args.workers))}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.repeats):  # interleaved, so a slow spell of the machine hits all three
            for key, (fn, extra) in runs.items():
                settle()
                times[key].append(fn(files, work / f"out-{key}-{r}", *extra))
            for key in runs:  # outputs are kept until a round ends: deleting costs disk time too
                shutil.rmtree(work / f"out-{key}-{r}", ignore_errors=True)
        seed, one, many = (min(times[k]) for k in runs)
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        print(f"original loop (1 process):        {seed:7.2f} s  {len(files) / seed:7.1f} img/s")
        print(f"derma resize, 1 process:          {one:7.2f} s  {len(files) / one:7.1f} img/s  "
              f"({seed / one:.2f}x)")
        print(f"derma resize, {args.workers} processes:        {many:7.2f} s  {len(files) / many:7.1f} img/s")
        print(f"resampler: {resampler()}; best of {args.repeats} runs each")
        print(f"speed-up vs the original loop: {seed / many:.2f}x  (cores: {os.cpu_count()}, "
              f"load average {', '.join(f'{v:.1f}' for v in load)})")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
