"""Feature extraction for linear probes: derma's extraction vs the model's pure forward, and the feature cache.

With one frozen encoder (default: a timm ViT-S/16 with random weights, so it runs offline;
``--model`` takes any linear_probe ``model.name``), batch size, precision and thread count, it
measures images/s of

  (a) derma's extraction end to end on prepared data (derma_foundation.features.extract):
      batches gathered from the uint8 memory-mapped prep cache (the next one in a background
      thread), the model's own preprocessing on the device, the forward pass, features to numpy;
  (b) the same model's pure forward on random, already preprocessed tensors on the device;

and prints a/b (goal: at least 0.9, the data path hiding behind compute). Then it times
``split_features`` twice on a fresh feature cache: the first call extracts and writes the cache,
the second reads it; it prints both times and their ratio.

  python benchmarks/probe.py                                   # CPU, ViT-S/16 at 224 px
  python benchmarks/probe.py --device cuda --batch-size 256 --images 4096
  python benchmarks/probe.py --model timm:convnext_atto --size 128 --images 256 --threads 2

Run it on a quiet machine; it prints the load average and settings with the results, and keeps
the best of ``--rounds`` interleaved measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="timm:vit_small_patch16_224", help="a linear_probe model.name")
    p.add_argument("--pretrained", default="none", help="model.pretrained (default none: random weights, offline)")
    p.add_argument("--size", type=int, default=224, help="prepared image side (px)")
    p.add_argument("--images", type=int, default=320, help="synthetic images generated (about 70%% train)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--rounds", type=int, default=2, help="interleaved measurements of (a) and (b); the best is kept")
    p.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    p.add_argument("--data-dir", help="reuse/keep the generated data here instead of a temp folder")
    return p.parse_args(argv)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_extract(encoder, split, device, precision, batch_size) -> float:
    """(a): images/s of derma's extraction over the prep cache."""
    from derma_foundation.features import extract

    _sync(device)
    t0 = time.perf_counter()
    feats = extract(encoder, split, device, precision, batch_size)
    _sync(device)
    assert len(feats) == len(split)
    return len(split) / (time.perf_counter() - t0)


def bench_forward(encoder, n, device, precision, batch_size) -> float:
    """(b): images/s of the model's forward alone on preprocessed random tensors (same batches)."""
    import torch

    from derma_foundation.features import _autocast

    side = encoder.preprocess.size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(batch_size, n - lo), 3, side, side, generator=gen).to(device)
               for lo in range(0, n, batch_size)]
    _sync(device)
    t0 = time.perf_counter()
    for x in batches:
        with _autocast(device, precision):
            out = encoder.encode(x)
        out.float().cpu()
    _sync(device)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import prepared_split  # the same prepared synthetic data as the CNN benchmark

    from derma_foundation.encoders import build_encoder
    from derma_foundation.features import resolve_precision, split_features

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory(prefix="derma-probe-bench-") as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        split = prepared_split(root, args.images, args.size)
        config = {"data": {"source": "synthetic", "cache_dir": str(root / "cache")}, "seed": 0,
                  "model": {"name": args.model, "pretrained": args.pretrained, "kwargs": {}, "image_size": None},
                  "features": {"batch_size": args.batch_size, "cache": True}, "precision": precision}
        encoder = build_encoder(config).to(device)
        # warm-up (allocator, oneDNN/cuDNN kernels)
        bench_forward(encoder, min(len(split), args.batch_size), device, precision, args.batch_size)
        best_a = best_b = 0.0
        for _ in range(args.rounds):
            best_a = max(best_a, bench_extract(encoder, split, device, precision, args.batch_size))
            best_b = max(best_b, bench_forward(encoder, len(split), device, precision, args.batch_size))
        # the feature cache (beside the prep cache; extract() above never writes it): the first
        # call extracts and writes, the second reads
        import shutil

        shutil.rmtree(Path(split.root) / "features", ignore_errors=True)
        t0 = time.perf_counter()
        _, hit1 = split_features(encoder, split, config, device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, hit2 = split_features(encoder, split, config, device)
        second = time.perf_counter() - t0
        assert not hit1 and hit2
    result = {
        "model": args.model, "pretrained": args.pretrained, "device": str(device), "precision": precision,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "images": len(split),
        "prepared_size": args.size, "input_size": encoder.preprocess.size,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "extract_images_per_s": round(best_a, 2), "pure_forward_images_per_s": round(best_b, 2),
        "extract_over_forward": round(best_a / best_b, 3),
        "first_run_s": round(first, 3), "cached_run_s": round(second, 4),
        "cached_over_first": round(second / first, 5),
    }
    print(f"encoder {args.model} ({args.pretrained}) on {device}, {precision}, {result['threads']} threads, "
          f"batch {args.batch_size}, {len(split)} images at {args.size} px -> input {encoder.preprocess.size} px; "
          f"load average {result['load_average']}")
    print(f"  (a) derma extraction   {best_a:9.1f} images/s")
    print(f"  (b) pure forward       {best_b:9.1f} images/s")
    print(f"  a/b                    {best_a / best_b:9.3f}   (goal >= 0.9)")
    print(f"  feature cache: first run {first:.2f} s (extract + write), second run {second * 1000:.1f} ms "
          f"(read): {second / first:.4f} of the first")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
