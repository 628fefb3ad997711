"""Images/s of the VLM answer modes on tiny random models (CPU): LLaVA-Med and the generic path.

For each model it compares
  * the original study's loop: one image at a time, greedy generate of 16 new tokens with no
    stop (the typical length of LLaVA-Med's answers there),
  * batched greedy generate (left padding, stops at the end-of-turn token, max 16 new tokens),
  * label-likelihood scoring (one prefill per image shared by all of HAM10000's seven labels, the
    classes the original study's p1 question names; end-of-turn included),
and prints the ratios measured in the same process (goal: score mode >= 5x the original loop).

    python benchmarks/vlm_eval.py [--models llava,tiny-gemma3] [--images 32] [--batch-size 8] [--threads 2]

``llava`` is llava_zeroshot's tiny-random model (real Mistral tokenizer, chunked prompt);
``tiny-gemma3``, ``tiny-qwen2_5_vl``, ``tiny-llava_onevision``, ``tiny-idefics3`` go through
vlm_zeroshot's loader and chat-template codec (``all`` runs every one). The tiny models make the
comparison about the inference procedure (number of forward passes and their batching), not
about a 7B model's arithmetic; benchmarks/gpu_llava_check.py measures a 7B-sized configuration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

GENERIC = ("tiny-gemma3", "tiny-qwen2_5_vl", "tiny-llava_onevision", "tiny-idefics3")


def load(name: str):
    if name == "llava":
        from derma_llava_med.loading import load_llava

        return load_llava({"model": {"name": "tiny-random", "allow_random": True}, "precision": "fp32",
                           "data": {"source": "synthetic"}}, "cpu")
    from derma_vlm.generic import load_generic

    return load_generic({"model": {"name": name}, "precision": "fp32", "data": {"source": "synthetic"}}, "cpu")


def bench(name: str, images: list, question: str, labels: list[str], bs: int, new_tokens: int,
          repeats: int) -> dict[str, float]:
    from derma_vlm.generation import generate_answers
    from derma_vlm.scoring import score_labels

    loaded = load(name)

    def original_loop():
        for im in images:
            generate_answers(loaded, [im], question, max_new_tokens=new_tokens, stop_at_eos=False)

    def batched_generate():
        for i in range(0, len(images), bs):
            generate_answers(loaded, images[i:i + bs], question, max_new_tokens=new_tokens)

    def score():
        score_labels(loaded, images, question, labels, batch_size=bs)

    score()  # warm-up (first calls allocate)
    results = {}
    for mode, fn in (("original", original_loop), ("batched", batched_generate), ("score", score)):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        results[mode] = len(images) / best
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llava,tiny-gemma3",
                    help=f"comma-separated: llava, {', '.join(GENERIC)}, or all")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings per mode")
    args = ap.parse_args()
    models = ["llava", *GENERIC] if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m != "llava" and m not in GENERIC]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from llava, {', '.join(GENERIC)}, all")

    import torch
    from PIL import Image

    from derma_core.data.datasets.ham10000 import LABEL_SET
    from derma_core.prompts import SEED_PROMPTS

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)) for _ in range(args.images)]
    question = SEED_PROMPTS["p1"]
    bs = args.batch_size
    print(f"{'model':<22} {'original loop':>14} {'batched gen':>12} {'score':>10}   score/original  score/batched"
          "  batched/original   (images/s)")
    for name in models:
        r = bench(name, images, question, list(LABEL_SET.codes), bs, args.new_tokens, args.repeats)
        print(f"{name:<22} {r['original']:14.2f} {r['batched']:12.2f} {r['score']:10.2f}   "
              f"{r['score'] / r['original']:13.1f}x {r['score'] / r['batched']:13.1f}x {r['batched'] / r['original']:16.1f}x")
    print(f"(goal: score >= 5x the original loop; original = 1 image, {args.new_tokens} tokens, no stop; "
          f"batched and score: batch {bs}; {args.images} images of 600x450, {args.threads} CPU threads, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
