"""One GPU acceptance command: the product's own CLI (`derma ...` subprocesses), not a harness.

Steps, in order, each one `derma` command:
  convert        `derma llava convert` of a random checkpoint written in the ORIGINAL llava_mistral
                 layout (named CLIP tower folder, Mistral keys, mm_projector, embedded tower copy,
                 SentencePiece tokenizer); 7B-shaped by default, --size picks a smaller
                 Mistral-shaped one (named in the output)
  zs-generate    `derma run --plugin llava_zeroshot` answer_mode=generate on the converted model
  zs-score       the same, answer_mode=score
  lora-bf16      `derma run --plugin llava_lora` precision=bf16, per-epoch validation on, 1 epoch
                 on a small synthetic train split
  lora-4bit      the same with quantization=4bit (QLoRA)
  merge          `derma run --plugin llava_lora` with lora.adapter=<lora-bf16's adapter> merge=true
  resnet18-amp   `derma run --plugin resnet18` (bf16 autocast on CUDA) on the synthetic set's
                 prepared cache; its training images/s beside the same network's pure compute
                 (random tensors, same batch, size, precision and layout) measured here
  vlm-score      `derma run --plugin vlm_zeroshot` answer_mode=score precision=bf16, if that backend
                 is installed, on a random Gemma 3 4B-shaped model (google/medgemma-4b-it's sizes:
                 text, SigLIP tower at 896 px, 262k vocabulary) built here with derma_vlm.tiny's
                 builder, created on the GPU in bf16 and saved with safetensors (~8.6 GB under
                 --work); --tiny uses the tiny shape of the same family (tiny-gemma3)

It prints one table (step, status, seconds, images/s, peak GPU memory of the step's process tree
sampled with nvidia-smi) and exits non-zero when any step fails. Random weights: the answers and
metrics mean nothing; the point is that every path runs in the configuration users run.

    python benchmarks/gpu_acceptance.py                # one CUDA GPU, within 8 minutes on an H100/H200
    python benchmarks/gpu_acceptance.py --size 3b      # smaller Mistral-shaped model if 7B does not fit
    python benchmarks/gpu_acceptance.py --tiny         # the same steps on the CPU with tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Mistral-shaped text configs (LLaVA-Med v1.5 is Mistral-7B; smaller ones keep its shape rules).
TEXT_SIZES = {
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=26, num_attention_heads=24,
               num_key_value_heads=8),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8),
    # derma_llava_med.tiny's tiny-random sizes (multiples of bitsandbytes' 64-value 4-bit blocks)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
#: CLIP ViT-L/14 at 336 px (LLaVA-Med's tower) and a tiny one.
VISION_SIZES = {
    "full": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                 patch_size=8, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
}
RUN_ID = re.compile(r"MLflow run id: (\w+)")
#: The vlm-score step's family (a derma_vlm.tiny name) and its real-sized shape (a key of SHAPES).
VLM_FAMILY, VLM_SHAPE = "tiny-gemma3", "4b"


def write_original_checkpoint(root: Path, text_size: str, vision_size: str, device: str) -> Path:
    """A random LLaVA-Med v1.5 checkpoint in the original llava_mistral layout (as released)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

    from derma_llava_med import tiny as tiny_mod

    vision, text = VISION_SIZES[vision_size], TEXT_SIZES[text_size]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            clip = CLIPVisionModel(CLIPVisionConfig(**vision))
            mistral = MistralForCausalLM(MistralConfig(
                vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=None,
                hidden_act="silu", tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, **text))
    finally:
        torch.set_default_dtype(previous)
    clip_dir = root / "clip-tower"
    clip.save_pretrained(clip_dir)
    side = vision["image_size"]
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(clip_dir)
    hidden, mm_hidden = text["hidden_size"], vision["hidden_size"]
    with torch.device(device):
        proj = {"model.mm_projector.0.weight": torch.randn(hidden, mm_hidden, dtype=dtype) * 0.02,
                "model.mm_projector.0.bias": torch.zeros(hidden, dtype=dtype),
                "model.mm_projector.2.weight": torch.randn(hidden, hidden, dtype=dtype) * 0.02,
                "model.mm_projector.2.bias": torch.zeros(hidden, dtype=dtype)}
    tower = {"model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model."): v
             for k, v in clip.state_dict().items()}
    state = {**mistral.state_dict(), **proj, **tower}
    ckpt = root / "llava-med-original"
    ckpt.mkdir(parents=True, exist_ok=True)
    # shards of ~2 GB, as the release (model-0000i-of-0000n.safetensors)
    shards, current, size = [], {}, 0
    for key in sorted(state):
        tensor = state[key]
        current[key] = tensor
        size += tensor.numel() * tensor.element_size()
        if size > 2e9:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    for i, shard in enumerate(shards, 1):
        save_file({k: v.detach().to("cpu").contiguous() for k, v in shard.items()},
                  str(ckpt / f"model-{i:05d}-of-{len(shards):05d}.safetensors"))
    del state, shards, current, mistral, clip
    cfg = {"model_type": "llava_mistral", "architectures": ["LlavaMistralForCausalLM"], "vocab_size": 32000,
           **text, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1_000_000.0,
           "sliding_window": None, "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2, "torch_dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
           "mm_vision_tower": str(clip_dir), "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": "patch", "mm_hidden_size": mm_hidden, "image_aspect_ratio": "pad",
           "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tokenizer_padding_side": "right"}
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=1))
    shutil.copy(tiny_mod.mistral_tokenizer_file(), ckpt / "tokenizer.model")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                            "legacy": True, "tokenizer_class": "LlamaTokenizer"}))
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return ckpt


class GpuMemory:
    """Peak GPU memory (MiB) of the processes a step starts, sampled with nvidia-smi."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak = max(self.peak, sum(float(x) for x in out.split() if x.strip()))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass

    def __enter__(self):
        self.peak = 0.0
        if self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def text(self) -> str:
        return f"{self.peak / 1024:.1f} GiB" if self.enabled and self.peak else "-"


class Acceptance:
    def __init__(self, args, work: Path) -> None:
        self.args = args
        self.work = work
        self.rows: list[dict] = []
        self.env = dict(os.environ, DERMA_MLRUNS=str(work / "mlruns"), DERMA_CACHE_DIR=str(work / "cache"),
                        MPLBACKEND="Agg")
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.derma = [sys.executable, "-m", "derma_core.cli"]
        self.memory = GpuMemory(not args.tiny)

    def common(self) -> list[str]:
        a = self.args
        return ["-q", "--device", a.device, "-o", f"data.synthetic_n={a.images}", "-o", "evaluation.bootstrap=0",
                "-o", f"output.work_dir={self.work / 'work'}", "-o", "tracking.log_model=false",
                "-o", f"data.cache_dir={self.work / 'cache'}"]

    def step(self, name: str, cmd: list[str], images: int | None = None, note: str = "") -> dict:
        print(f"[{name}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with self.memory:
            proc = subprocess.run(cmd, cwd=self.work, env=self.env, capture_output=True, text=True,
                                  timeout=self.args.step_timeout)
        seconds = time.perf_counter() - t0
        row = {"step": name, "status": "ok" if proc.returncode == 0 else "FAILED", "seconds": seconds,
               "images_per_s": (images / seconds) if images and proc.returncode == 0 else None,
               "peak_gpu": self.memory.text(), "note": note}
        found = RUN_ID.findall(proc.stdout)
        row["run_id"] = found[-1] if found else None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            row["note"] = f"{note} {tail}".strip()[:300]
            print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", file=sys.stderr)
        self.rows.append(row)
        return row

    def metric(self, run_id: str | None, key: str) -> float | None:
        if not run_id:
            return None
        from derma_core.tracking import last_metric

        return last_metric(run_id, key, f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}")

    def dataset(self):
        """The synthetic set the steps use (generated once into the work folder's cache)."""
        if getattr(self, "_dataset", None) is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from derma_core.config import resolve_config
            from derma_core.runner import load_dataset

            os.environ["DERMA_CACHE_DIR"] = str(self.work / "cache")
            config = resolve_config("resnet18", values={"data.synthetic_n": self.args.images, "quiet": True,
                                                        "data.cache_dir": str(self.work / "cache")})
            self._dataset = load_dataset(config)
        return self._dataset

    def split_size(self, name: str) -> int:
        """Rows of one split of the synthetic set the steps use (images/s counts them)."""
        return len(self.dataset()[name])


def pure_compute(batch: int, size: int, device: str, precision: str, steps: int, label_set) -> float:
    """images/s of forward + backward + step of the resnet18 plugin's network (its head over
    ``label_set``, the trained run's classes) on random tensors, with derma's own train_step,
    precision and layout (no data loading, no augmentation)."""
    import torch

    from derma_resnet18.model import build_model
    from derma_resnet18.recipe import resolve_channels_last
    from derma_resnet18.training import Runtime, train_step

    rt = Runtime(device=torch.device(device), precision=precision,
                 channels_last=resolve_channels_last(None, device, precision), num_workers=0)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model("none", 0.2, label_set, progress=False, image_size=size).to(rt.device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(rt.device.type, enabled=precision == "fp16")
    x = torch.randn(batch, 3, size, size, device=rt.device).contiguous(memory_format=fmt)
    y = torch.randint(0, len(label_set), (batch,), device=rt.device)
    model.train()

    def sync():
        if rt.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        train_step(model, x, y, crit, opt, scaler, rt)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, crit, opt, scaler, rt)
    sync()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (what the test runs)")
    ap.add_argument("--size", choices=["7b", "3b", "1b"], default="7b", help="Mistral-shaped text model size")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    ap.add_argument("--images", type=int, default=None, help="synthetic set size (default 300; 175 with --tiny)")
    ap.add_argument("--resnet-size", type=int, default=None, help="resnet18 image side (default 224; 32 --tiny)")
    ap.add_argument("--step-timeout", type=float, default=900)
    ap.add_argument("--work", default=None, help="folder for checkpoints and the MLflow store (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep --work / the temp dir")
    args = ap.parse_args(argv)
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.images = args.images or (175 if args.tiny else 300)
    resnet_size = args.resnet_size or (32 if args.tiny else 224)
    text_size = "tiny" if args.tiny else args.size
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("gpu_acceptance: no CUDA GPU here; run with --tiny for the CPU version", file=sys.stderr)
            return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="derma-gpu-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    acc = Acceptance(args, work)
    t_all = time.perf_counter()
    try:
        run_all(acc, args, work, text_size, resnet_size)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_all
    model = f"Mistral-shaped {text_size} text model" + ("" if args.tiny else " + CLIP ViT-L/14-336")
    print(f"\nderma GPU acceptance on {args.device} ({model}; {args.images} synthetic images), "
          f"{total:.0f} s in all")
    print(f"{'step':<14} {'status':<7} {'seconds':>8} {'images/s':>10} {'peak GPU':>10}  note")
    for row in acc.rows:
        ips = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "-"
        print(f"{row['step']:<14} {row['status']:<7} {row['seconds']:>8.1f} {ips:>10} {row['peak_gpu']:>10}  "
              f"{row['note']}")
    failed = [r["step"] for r in acc.rows if r["status"] != "ok"]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def run_all(acc: Acceptance, args, work: Path, text_size: str, resnet_size: int) -> None:
    derma, common = acc.derma, acc.common()
    n_test = acc.split_size("test")

    t0 = time.perf_counter()
    src = write_original_checkpoint(work / "original", text_size, "tiny" if args.tiny else "full",
                                    "cpu" if args.tiny else args.device)
    print(f"[write] original-layout checkpoint ({text_size}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    dst = work / "converted"
    convert = acc.step("convert", [*derma, "llava", "convert", str(src), str(dst), "--force"],
                       note=f"{text_size} llava_mistral -> native")
    if convert["status"] != "ok":
        return
    model = ["-o", f"model.name={dst}", "-o", "inference.max_new_tokens=16"]
    acc.step("zs-generate", [*derma, "run", "--plugin", "llava_zeroshot", *common, *model, "-o", "answer_mode=generate"],
             images=n_test)
    acc.step("zs-score", [*derma, "run", "--plugin", "llava_zeroshot", *common, *model, "-o", "answer_mode=score"],
             images=n_test)
    lora = [*model, "-o", "train.epochs=1", "-o", "train.grad_accum=1", "-o", "train.eval_at_start=false",
            "-o", "lora.r=8", "-o", "lora.alpha=16", "-o", "answer_mode=score", "-o", "train.num_workers=0"]
    bf16 = acc.step("lora-bf16", [*derma, "run", "--plugin", "llava_lora", *common, *lora, "-o", "precision=bf16"],
                    note="1 epoch, val after it")
    acc.step("lora-4bit", [*derma, "run", "--plugin", "llava_lora", *common, *lora, "-o", "precision=bf16",
                           "-o", "quantization=4bit"], note="QLoRA nf4, 1 epoch, val after it")
    adapter = work / "work" / str(bf16.get("run_id")) / "adapter"
    if bf16["status"] == "ok" and adapter.is_dir():
        acc.step("merge", [*derma, "run", "--plugin", "llava_lora", *common, *lora, "-o", "precision=bf16",
                           "-o", f"lora.adapter={adapter}", "-o", "merge=true"], images=n_test,
                 note="base + adapter merged")
    else:
        acc.rows.append({"step": "merge", "status": "FAILED", "seconds": 0.0, "images_per_s": None, "peak_gpu": "-",
                         "note": f"no adapter from lora-bf16 at {adapter}"})

    precision = "fp32" if args.tiny else "bf16"
    r18 = acc.step("resnet18-amp", [*derma, "run", "--plugin", "resnet18", *common, "-o", f"data.size={resnet_size}",
                                    "-o", "train.epochs=2", "-o", f"precision={precision}"])
    if r18["status"] == "ok":
        train_ips = acc.metric(r18["run_id"], "images_per_second")
        compute = pure_compute(32, resnet_size, args.device, precision, 5 if args.tiny else 50,
                               acc.dataset().label_set)
        r18["images_per_s"] = train_ips
        r18["note"] = (f"{precision}, {resnet_size} px: training {train_ips or float('nan'):.0f} img/s vs pure "
                       f"compute {compute:.0f} img/s ({(train_ips or 0) / compute:.2f}x)")

    from derma_core import plugins

    plugins.load_plugins()
    if "vlm_zeroshot" in plugins.classifiers():
        vlm_score(acc, args, work, n_test)


def vlm_score(acc: Acceptance, args, work: Path, n_test: int) -> None:
    """``vlm_zeroshot`` in score mode on a random model of one family: real-sized on the GPU, the
    family's tiny shape with --tiny. The build's seconds are reported in the note, not the step's."""
    from derma_vlm import tiny as vlm_tiny

    shape = None if args.tiny else VLM_SHAPE
    t0 = time.perf_counter()
    try:
        folder = vlm_tiny.build_tiny(VLM_FAMILY, dst=None if args.tiny else work / f"vlm-{VLM_SHAPE}", shape=shape,
                                     dtype="float32" if args.tiny else "bfloat16",
                                     device="cpu" if args.tiny else args.device)
    except Exception as exc:  # a failed build is this step's failure, not the script's
        acc.rows.append({"step": "vlm-score", "status": "FAILED", "seconds": time.perf_counter() - t0,
                         "images_per_s": None, "peak_gpu": "-",
                         "note": f"building {VLM_FAMILY} {shape}: {exc}"[:300]})
        return
    build_s = time.perf_counter() - t0
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the build's memory, before the step's process loads the folder
    with torch.device("meta"):  # count the parameters without allocating them
        params = sum(p.numel() for p in
                     AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder)).parameters())
    count = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
    label = vlm_tiny.SHAPES[VLM_FAMILY][shape]["label"] if shape else "Gemma 3 family, tiny shape (tiny-gemma3)"
    precision = [] if args.tiny else ["-o", "precision=bf16"]
    acc.step("vlm-score", [*acc.derma, "run", "--plugin", "vlm_zeroshot", *acc.common(), "-o", f"model.name={folder}",
                           "-o", "model.allow_random=true", "-o", "answer_mode=score", *precision],
             images=n_test, note=f"{label}, {count} params, random; built in {build_s:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
