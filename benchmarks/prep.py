"""Benchmark derma's resize step against the original study's loop.

Generates N full-size 600x450 JPEGs (the synthetic generator), then times on the same files:

* the original study's loop, one process:
  ``Image.open(src).convert("RGB").resize((224, 224))`` then ``save(dst, quality=95)``
* derma's resize step (``derma_core.data.resize.resize_into_cache``): JPEG draft-mode decoding,
  Lanczos resize, the resized JPEG (quality 95) plus the uint8 memmap cache row, in
  ``--workers`` processes (and, for reference, in one process)

and prints the speed-up. Usage: ``python benchmarks/prep.py --n 400 --workers 2``.
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

from derma_core.data.resize import default_workers, resize_into_cache
from derma_core.data.synthetic import generate


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images (at least 168)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=1, help="best of R runs of each")
    parser.add_argument("--dir", help="work folder (default: a temporary one, deleted afterwards)")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="derma-bench-"))
    try:
        raw = work / "raw"
        t0 = time.perf_counter()
        generate(raw, n=max(args.n, 168), seed=0, workers=args.workers)
        files = sorted(raw.glob("HAM10000_images_part_*/*.jpg"))[: args.n]
        print(f"generated {len(files)} 600x450 JPEGs in {time.perf_counter() - t0:.1f} s ({work})")
        for f in files:  # warm the page cache so both sides read from memory
            f.read_bytes()

        def best(fn, *a):
            times = []
            for r in range(args.repeats):
                dst = work / f"out-{fn.__name__}-{r}-{a[-1]}"
                times.append(fn(files, dst, *a))
                shutil.rmtree(dst, ignore_errors=True)
            return min(times)

        seed = best(original_loop, args.size)
        one = best(derma_step, args.size, 1)
        many = best(derma_step, args.size, args.workers)
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        print(f"original loop (1 process):        {seed:7.2f} s  {len(files) / seed:7.1f} img/s")
        print(f"derma resize, 1 process:          {one:7.2f} s  {len(files) / one:7.1f} img/s  "
              f"({seed / one:.2f}x: draft decoding)")
        print(f"derma resize, {args.workers} processes:        {many:7.2f} s  {len(files) / many:7.1f} img/s")
        print(f"speed-up vs the original loop: {seed / many:.2f}x  (cores: {os.cpu_count()}, "
              f"load average {', '.join(f'{v:.1f}' for v in load)})")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
