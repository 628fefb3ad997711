"""One prepared QLoRA training run of a few steps on a LLaVA-Med-v1.5-shaped model with random weights.

Prints the peak GPU memory and the seconds per optimizer step of derma's own llava_lora training
path (``load_llava`` with bitsandbytes 4-bit nf4 + double quantisation + bf16 compute,
``build_lora_model`` with r=128 on q/k/v/o/gate/up/down, the projector trained in full,
``prepare_model_for_kbit_training``, gradient checkpointing, derma_vlm's ``VlmLoraTrainer``), batch 2
of 576 image tokens + the p1 prompt + answer. Validation stays on, as in a real run: after the
last step the Trainer evaluates the val loss and label-scores a few val images under the model's
dtype policy (the path that crashed in bf16 when it was turned off here). The weights are random,
so only memory, speed and "it ran" mean anything.

    python benchmarks/gpu_lora_check.py                 # 7B-shaped, CUDA (about 2-3 min on an H100)
    python benchmarks/gpu_lora_check.py --quantization none   # bf16 LoRA (the original study's setting)
    python benchmarks/gpu_lora_check.py --tiny          # tiny shapes on the CPU (tests the script)

The model is written once to a temporary folder (about 15 GB for 7B in bf16) and loaded back
through ``load_llava`` so quantisation happens exactly as in a real run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "plugins" / "derma-llava-med"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

# LLaVA-Med v1.5: Mistral-7B language model, CLIP ViT-L/14 at 336 px (576 patch tokens).
TEXT_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-5,
               sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
               tie_word_embeddings=False)
VISION_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5)


def build_random_model(folder: Path, tiny: bool, device: str) -> dict:
    """Write a random-weight LLaVA (7B-shaped, or the tiny smoke model) with processor and tokenizer."""
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    from derma_llava_med.tiny import IMAGE_TOKEN, TINY_TEXT, TINY_VISION, make_processor, mistral_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(mistral_tokenizer_dir())
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text, vision = (TINY_TEXT, TINY_VISION) if tiny else (TEXT_7B, VISION_L14_336)
    n_patches = (vision["image_size"] // vision["patch_size"]) ** 2
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision),
                         text_config=MistralConfig(vocab_size=len(tokenizer), **text),
                         image_token_index=image_token_id, image_seq_length=n_patches, projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)
    started = time.perf_counter()
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="5GB")
    make_processor(tokenizer, vision["image_size"], vision["patch_size"]).save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"params": n_params, "image_tokens": n_patches, "build_seconds": time.perf_counter() - started}


def random_split(n: int, size: int, seed: int = 0):
    """A split of ``n`` random HAM10000-sized (450x600) images, labels cycling over HAM10000's
    classes (the check trains on the original study's p1 question, which names those seven)."""
    from derma_core.data.datasets.ham10000 import LABEL_SET
    from derma_core.interfaces import Split

    rng = np.random.default_rng(seed)
    codes = LABEL_SET.codes
    frame = pd.DataFrame({"id": [f"b{i}" for i in range(n)], "label": [codes[i % len(codes)] for i in range(n)],
                          "group_id": [f"L{i}" for i in range(n)], "image_path": [f"b{i}.jpg" for i in range(n)]})
    cache = rng.integers(0, 256, size=(n, size, int(size * 4 / 3), 3), dtype=np.uint8)
    return Split("bench", frame, Path("."), cache, label_set=LABEL_SET)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (tests this script)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (the first is warm-up, not timed)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--r", type=int, default=128)
    parser.add_argument("--quantization", choices=["4bit", "8bit", "none"], default="4bit")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument("--val", type=int, default=4, help="val images label-scored after the last step")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="compute dtype")
    parser.add_argument("--folder", help="reuse (or keep) the random model folder here instead of a temp dir")
    args = parser.parse_args(argv)

    import torch
    from transformers import TrainerCallback, TrainingArguments

    from derma_core.prompts import SEED_PROMPTS
    from derma_llava_med.loading import load_llava
    from derma_vlm.scoring import score_labels
    from derma_vlm.training import (LM_LINEAR_LAYERS, AnswerOnlyCollator, AnswerOnlyDataset, build_lora_model,
                                    make_trainer_class, trainable_summary)

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke version")
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    work = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="derma-gpu-lora-"))
    model_dir = work / "model"
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "shape": "tiny" if args.tiny else "llava-med-v1.5-7b (random weights)",
                    "quantization": args.quantization, "lora_r": args.r, "batch": args.batch,
                    "grad_accum": args.grad_accum, "gradient_checkpointing": not args.no_checkpointing,
                    "torch": torch.__version__}
    try:
        if not (model_dir / "config.json").exists():
            report.update(build_random_model(model_dir, args.tiny, device))
        quant = None if args.quantization == "none" else args.quantization
        started = time.perf_counter()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        loaded = load_llava({"model": {"name": str(model_dir)}, "precision": args.precision, "quantization": quant}, device)
        report["load_seconds"] = round(time.perf_counter() - started, 1)
        if device == "cuda":
            torch.cuda.synchronize()
            report["model_memory_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        model = build_lora_model(loaded.model, r=args.r, alpha=2 * args.r, dropout=0.05,
                                 target_modules=LM_LINEAR_LAYERS, quantized=quant is not None,
                                 gradient_checkpointing=not args.no_checkpointing, policy=loaded.policy)
        counts = trainable_summary(model)
        report["trainable_lora_params"] = counts["lora"]
        report["trainable_projector_params"] = counts["projector"]
        n = args.batch * args.grad_accum * args.steps
        split = random_split(n, 45 if args.tiny else 450)
        data = AnswerOnlyDataset(split, loaded.codec, SEED_PROMPTS["p1"], max_length=2048)
        val_split = random_split(args.val, 45 if args.tiny else 450, seed=1)
        val_data = AnswerOnlyDataset(val_split, loaded.codec, SEED_PROMPTS["p1"], max_length=2048)
        report["tokens_per_example"] = len(data[0]["input_ids"])

        def label_scorer(trained) -> dict:
            from peft import PeftModel

            inner = trained.base_model.model if isinstance(trained, PeftModel) else trained
            scoring = dataclasses.replace(loaded, model=inner)
            images = [val_split.load_image(i) for i in range(len(val_split))]
            scores = score_labels(scoring, images, SEED_PROMPTS["p1"], list(val_split.label_set.codes),
                                  batch_size=args.batch)
            return {"macro_f1": float(np.mean(scores.argmax(1) == val_split.y)), "finite_scores":
                    float(np.isfinite(scores).all())}

        class StepTimer(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_step_begin(self, a, state, control, **kw):
                if device == "cuda":
                    torch.cuda.synchronize()
                self._t = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                if device == "cuda":
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self._t)

        timer = StepTimer()
        targs = TrainingArguments(
            output_dir=str(work / "out"), max_steps=args.steps, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.grad_accum, learning_rate=2e-5, weight_decay=0.01,
            lr_scheduler_type="cosine", warmup_steps=0.03, **loaded.policy.trainer_flags(),
            activation_checkpointing=not args.no_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False}, save_strategy="no", eval_strategy="steps",
            eval_steps=args.steps,
            logging_steps=1, report_to="none", remove_unused_columns=False, label_names=["labels"],
            per_device_eval_batch_size=args.batch, prediction_loss_only=True,
            use_cpu=device == "cpu", disable_tqdm=True, dataloader_num_workers=0 if args.tiny else 2,
            optim="adamw_torch")
        Trainer = make_trainer_class()
        trainer = Trainer(model=model, args=targs, train_dataset=data, eval_dataset=val_data,
                          data_collator=AnswerOnlyCollator(loaded.codec.pad_token_id), callbacks=[timer],
                          projector_lr=2e-5, label_scorer=label_scorer, dtype_policy=loaded.policy)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        report["validation"] = {"ran": bool(evals), "val_loss": round(float(evals[-1]["eval_loss"]), 4) if evals
                                else None, "finite_label_scores": bool(evals and evals[-1]["eval_finite_scores"])}
        timed = timer.times[1:] or timer.times
        report.update({
            "steps": len(timer.times), "seconds_per_step": round(float(np.mean(timed)), 3),
            "seconds_first_step": round(timer.times[0], 3),
            "examples_per_second": round(args.batch * args.grad_accum / float(np.mean(timed)), 3),
            "losses": [round(float(x), 4) for x in losses], "finite_loss": bool(np.isfinite(losses).all()),
        })
        if device == "cuda":
            report["peak_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            report["peak_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    finally:
        if not args.folder:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
