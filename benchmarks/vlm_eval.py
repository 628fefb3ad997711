"""Images/s of LLaVA answer modes on the tiny-random model with the real tokenizer (CPU).

Compares
  * the original study's loop: one image at a time, greedy generate of 16 new tokens with no
    stop (the typical length of LLaVA-Med's answers there),
  * batched greedy generate (left padding, stops at </s>, max 16 new tokens),
  * label-likelihood scoring (one prefill per image shared by all 7 labels),
and prints both ratios (goal: score mode >= 5x the original loop).

    python benchmarks/vlm_eval.py [--images 32] [--batch-size 8] [--threads 2]

The tiny model makes the comparison about the inference procedure (number of forward passes
and their batching), not about a 7B model's arithmetic; benchmarks/gpu_llava_check.py
measures a 7B-sized configuration on a GPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings per mode")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from derma_core.prompts import SEED_PROMPTS
    from derma_llava_med.loading import load_llava
    from derma_llava_med.scoring import score_labels
    from derma_llava_med.zeroshot import generate_answers

    torch.set_num_threads(args.threads)
    loaded = load_llava({"model": {"name": "tiny-random"}, "precision": "fp32"}, "cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)) for _ in range(args.images)]
    question = SEED_PROMPTS["p1"]
    bs = args.batch_size

    def original_loop():
        for im in images:
            generate_answers(loaded, [im], question, max_new_tokens=args.new_tokens, stop_at_eos=False)

    def batched_generate():
        for i in range(0, len(images), bs):
            generate_answers(loaded, images[i:i + bs], question, max_new_tokens=args.new_tokens)

    def score():
        score_labels(loaded, images, question, batch_size=bs)

    score()  # warm-up (first calls allocate)
    results = {}
    for name, fn in (("original loop (1 image, 16 tokens, no stop)", original_loop),
                     (f"batched generate (batch {bs}, stop at </s>)", batched_generate),
                     (f"score mode (batch {bs})", score)):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        results[name] = len(images) / best
        print(f"{name:<46} {results[name]:8.2f} images/s")
    orig, batched, scored = results.values()
    print(f"score mode vs original loop:     {scored / orig:6.1f}x  (goal >= 5x)")
    print(f"score mode vs batched generate:  {scored / batched:6.1f}x")
    print(f"batched generate vs original:    {batched / orig:6.1f}x")
    print(f"({args.images} images of 600x450, tiny-random model, {args.threads} CPU threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
