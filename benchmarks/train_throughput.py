"""Training throughput of the resnet18 plugin: derma's loop vs the original study's loop vs pure compute.

For each image size (default 128 and 224 px), with the same model (ResNet-18 + dropout 0.2, a
head over the synthetic set's classes: HAM10000's seven), batch size, optimizer (AdamW) and thread count, it measures training images/s of

  (a) derma's loop end to end on prepared data: batches gathered from the uint8 memory-mapped
      prep cache, batched augmentation, the resolved precision (autocast) and memory layout,
      the plugin's own epoch function (derma_resnet18.training._train_epoch);
  (b) the original study's style of loop: a Dataset that opens each prepared JPEG with PIL and
      applies torchvision v1 transforms per sample (RandomRotation(10), RandomAffine(translate
      0.05), ColorJitter(brightness 0.05), RandomHorizontalFlip, ToTensor, Normalize), fp32, NCHW;
  (c) the model's pure compute (forward, backward, optimizer step) on random tensors already in
      memory, in derma's precision and layout;

and prints a/b (derma vs the original) and a/c (how well the data path hides behind compute).
The data is the built-in synthetic generator, prepared into a temporary folder.

  python benchmarks/train_throughput.py                       # CPU, 128 and 224 px
  python benchmarks/train_throughput.py --device cuda --batch-size 128 --images 2048
  python benchmarks/train_throughput.py --sizes 64 --images 256 --threads 2   # a quick check

Run it on a quiet machine; it prints the load average and settings with the results, and keeps
the best of ``--rounds`` interleaved measurements of each loop.
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
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--images", type=int, default=320, help="synthetic images generated (about 70%% train)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--channels-last", default=None, choices=["true", "false"],
                   help="derma's layout (default: the plugin's automatic choice)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for (a) and (b) (default: the plugin's automatic choice for (a), 0 for (b))")
    p.add_argument("--warmup", type=int, default=2, help="batches run before timing")
    p.add_argument("--rounds", type=int, default=2,
                   help="measure (a), (b), (c) in turn this many times and keep each one's best "
                        "(interference from other processes only ever slows a measurement down)")
    p.add_argument("--json", dest="json_path", help="also write the results to this JSON file")
    p.add_argument("--data-dir", help="reuse/keep the generated data here instead of a temp folder")
    return p.parse_args(argv)


def prepared_split(root: Path, n: int, size: int):
    """The train split of ``n`` synthetic images prepared at ``size`` px (cache + resized JPEGs)."""
    from derma_core.data import synthetic
    from derma_core.data.prepare import PrepParams, load_prepared, prepare

    raw = root / f"raw-{n}"
    if not (raw / "HAM10000_metadata.csv").exists():
        synthetic.generate(raw, n=n, seed=0, progress=False)
    out = root / f"prepared-{n}-{size}"
    if not (out / "manifest.json").exists():
        prepare(raw, out, PrepParams(size=size, split="grouped", seed=42, resize="squash"), name="bench",
                synthetic=True, progress=False, log=lambda m: None)
    return load_prepared(out)["train"]


class _Ctx:
    """The bits of RunContext the epoch function uses."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def progress(self, iterable, total=None, desc=""):
        return iterable


class _Limited:
    """A loader view yielding at most ``limit`` batches (keeps ``sampler`` for set_epoch)."""

    def __init__(self, loader, limit: int) -> None:
        self.loader, self.limit, self.sampler = loader, limit, loader.sampler

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.limit:
                break
            yield batch


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_derma(split, size, args, rt, recipe):
    """(a): the plugin's own epoch function over the prep cache."""
    import torch

    from derma_resnet18.augment import BatchAugment
    from derma_resnet18.data import SplitImages, train_loader
    from derma_resnet18.model import DermaResNet18
    from derma_resnet18.recipe import class_weights
    from derma_resnet18.training import _train_epoch, build_optimizer

    torch.manual_seed(0)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    k = len(split.label_set)
    model = DermaResNet18(k, 0.2).to(rt.device, memory_format=fmt)
    opt = build_optimizer(model, recipe)
    weight = torch.tensor(class_weights(split.y, "capped", 3.0, num_classes=k), dtype=torch.float32,
                          device=rt.device)
    crit = torch.nn.CrossEntropyLoss(weight=weight)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    loader = train_loader(SplitImages(split, size), args.batch_size, "none", 0, 0, 1, rt.num_workers, rt.pin_memory)
    full = len(loader)
    aug, gen = BatchAugment(recipe.augmentation), torch.Generator()
    _train_epoch(model, model, _Limited(loader, args.warmup), opt, None, scaler, crit, aug, gen, rt, _Ctx(), 1,
                 recipe, size)
    _sync(rt.device)
    m = _train_epoch(model, model, loader, opt, None, scaler, crit, aug, gen, rt, _Ctx(), 2, recipe, size)
    return m["images_per_second"], full


def bench_original(split, size, args, device, workers):
    """(b): PIL decode + torchvision v1 transforms per sample, fp32, NCHW (the original's loop)."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from derma_resnet18.model import IMAGENET_MEAN, IMAGENET_STD, DermaResNet18

    tf = T.Compose([T.RandomRotation(10), T.RandomAffine(degrees=0, translate=(0.05, 0.05)),
                    T.ColorJitter(brightness=0.05), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    paths = [split.image_path(i) for i in range(len(split))]
    labels = split.y.tolist()

    class JpegDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as im:
                img = im.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size))
            return tf(img), labels[i]

    loader = torch.utils.data.DataLoader(JpegDataset(), batch_size=args.batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = DermaResNet18(len(split.label_set), 0.2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    model.train()

    def run(limit=None):
        seen, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device), y.to(device)
            loss = crit(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
        _sync(device)
        return seen / (time.perf_counter() - t0)

    run(args.warmup)
    return run()


def bench_compute(size, args, rt, batches: int, num_classes: int):
    """(c): forward + backward + step on random tensors in derma's precision and layout."""
    import torch

    from derma_resnet18.model import DermaResNet18
    from derma_resnet18.training import train_step

    torch.manual_seed(0)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    model = DermaResNet18(num_classes, 0.2).to(rt.device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    x = torch.randn(args.batch_size, 3, size, size, device=rt.device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (args.batch_size,), device=rt.device)
    model.train()

    def step():
        train_step(model, x, y, crit, opt, scaler, rt)

    for _ in range(args.warmup):
        step()
    _sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(rt.device)
    return batches * args.batch_size / (time.perf_counter() - t0)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from derma_resnet18.recipe import (Recipe, resolve_channels_last, resolve_num_workers, resolve_precision)
    from derma_resnet18.training import Runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, args.device)
    cl = None if args.channels_last is None else args.channels_last == "true"
    rt = Runtime(device=device, precision=precision, channels_last=resolve_channels_last(cl, args.device, precision),
                 num_workers=resolve_num_workers(args.workers, args.device, cached=True))
    recipe = Recipe(batch_size=args.batch_size)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device {device} | threads {torch.get_num_threads()} | batch {args.batch_size} | derma: {precision}, "
          f"{'channels_last' if rt.channels_last else 'NCHW'}, workers {rt.num_workers} | original: fp32, NCHW, "
          f"workers {args.workers or 0} | load average before {load}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            split = prepared_split(root, args.images, size)
            rounds = []
            for _ in range(max(1, args.rounds)):
                a, batches = bench_derma(split, size, args, rt, recipe)
                b = bench_original(split, size, args, device, args.workers or 0)
                c = bench_compute(size, args, rt, batches, len(split.label_set))
                rounds.append((a, b, c))
            a, b, c = (max(r[i] for r in rounds) for i in range(3))
            row = {"size": size, "images": len(split), "derma_a": a, "original_b": b, "compute_c": c,
                   "a_over_b": a / b, "a_over_c": a / c, "rounds": rounds}
            results.append(row)
            print(f"{size:>4} px  (a) derma {a:7.1f} img/s   (b) original {b:7.1f} img/s   (c) compute {c:7.1f} img/s"
                  f"   a/b {a / b:5.2f}x (goal >= 2.5)   a/c {a / c:5.2f} (goal >= 0.9)", flush=True)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after {load_after}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                                    "precision": precision, "channels_last": rt.channels_last,
                                                    "load_before": load, "load_after": load_after,
                                                    "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
