"""GPU check of a 7B-sized LLaVA-Med configuration with random weights: memory and images/s.

Builds LLaVA-Med v1.5's architecture (CLIP ViT-L/14 at 336 px, 576 patch tokens; mlp2x_gelu
projector; Mistral-7B with rope_theta 1e6) with random bf16 weights directly on the GPU (no
download), then runs N images through
  * the original study's loop (one image at a time, 16 greedy tokens, no stop; a few images),
  * batched greedy generate (stops at </s>, max 16 new tokens),
  * label-likelihood scoring (score mode),
printing peak GPU memory and images/s per mode. Random weights give meaningless answers but
the same shapes and costs as the real model.

    python benchmarks/gpu_llava_check.py                 # 7B on cuda, ~1-2 minutes on an H100
    python benchmarks/gpu_llava_check.py --tiny          # tiny config on the CPU (tests the script)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

VISION_7B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=None,
               rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=False)


def build(tiny: bool, device: str, dtype):
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    from derma_llava_med.loading import Loaded
    from derma_llava_med.prompting import LlavaCodec, n_image_tokens_for
    from derma_llava_med.tiny import TINY_TEXT, TINY_VISION, make_processor, mistral_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer_dir())
    tokenizer.padding_side = "left"
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision, text = (TINY_VISION, TINY_TEXT) if tiny else (VISION_7B, TEXT_7B)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision),
                         text_config=MistralConfig(vocab_size=len(tokenizer), **text),
                         image_token_index=image_token_id, projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default")
    config.text_config._attn_implementation = "sdpa"
    config._attn_implementation = "sdpa"
    t = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # weights are created on the GPU directly, already in bf16
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {'tiny' if tiny else '7B-sized'} LLaVA ({n_params / 1e9:.2f} B parameters, {dtype}) on {device} "
          f"in {time.perf_counter() - t:.1f} s")
    processor = make_processor(tokenizer, vision["image_size"], vision["patch_size"])
    n_image_tokens = n_image_tokens_for(config)
    codec = LlavaCodec(tokenizer, processor.image_processor, image_token_id, n_image_tokens)
    return Loaded(model=model, processor=processor, tokenizer=tokenizer, codec=codec,
                  model_id="random-llava-med-shaped", device=device, dtype=dtype,
                  image_token_id=image_token_id, n_image_tokens=n_image_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU unless --device says otherwise)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=64, help="images for batched generate and score mode")
    ap.add_argument("--loop-images", type=int, default=8, help="images for the one-at-a-time original loop")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    import torch

    from derma_core.data.datasets.ham10000 import LABEL_SET
    from derma_core.prompts import SEED_PROMPTS
    from derma_vlm.generation import generate_answers
    from derma_vlm.scoring import score_labels

    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to test the script on the CPU")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    loaded = build(args.tiny, device, dtype)
    if cuda:
        torch.cuda.synchronize()
        print(f"weights: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated")
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)) for _ in range(args.images)]
    question = SEED_PROMPTS["p1"]  # the original study's question: HAM10000's seven classes
    labels = list(LABEL_SET.codes)
    bs = args.batch_size

    def loop():
        for im in images[:args.loop_images]:
            generate_answers(loaded, [im], question, max_new_tokens=args.new_tokens, stop_at_eos=False)
        return args.loop_images

    def batched():
        for i in range(0, len(images), bs):
            generate_answers(loaded, images[i:i + bs], question, max_new_tokens=args.new_tokens)
        return len(images)

    def score():
        scores = score_labels(loaded, images, question, labels, batch_size=bs)
        assert scores.shape == (len(images), len(labels)) and np.isfinite(scores).all()
        return len(images)

    # warm-up: kernels, allocator
    generate_answers(loaded, images[:2], question, max_new_tokens=2)
    score_labels(loaded, images[:2], question, labels, batch_size=2)
    rates = {}
    for name, fn in (("original loop (batch 1, 16 tokens, no stop)", loop),
                     (f"batched generate (batch {bs}, max {args.new_tokens} tokens)", batched),
                     (f"score mode (batch {bs})", score)):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        n = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        rates[name] = n / seconds
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:7.2f} GiB peak" if cuda else "(CPU: no peak memory)"
        print(f"{name:<48} {rates[name]:8.2f} images/s  {peak}  ({n} images, {seconds:.1f} s)")
    values = list(rates.values())
    print(f"score mode vs original loop: {values[2] / values[0]:.1f}x; vs batched generate: {values[2] / values[1]:.1f}x")


if __name__ == "__main__":
    main()
