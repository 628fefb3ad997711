"""Load LLaVA-Med (or any LLaVA) through transformers' native ``LlavaForConditionalGeneration``.

``model.name`` may be

* ``tiny-random``: the smoke-test model of :mod:`derma_llava_med.tiny` (random weights);
* a folder or hub id of an HF-format LLaVA (``model_type: llava``);
* a folder or hub id of an *original* LLaVA-Med v1.5 checkpoint (``model_type: llava_mistral``,
  e.g. ``microsoft/llava-med-v1.5-mistral-7b``): converted once with
  :func:`derma_llava_med.convert.convert_checkpoint` and cached under
  ``~/.cache/derma/models`` (``DERMA_MODEL_CACHE``).

The processor is always the PIL-backend one, padding to square with the mean colour:
``AutoProcessor.from_pretrained`` alone would return the torchvision backend, whose pixels
differ from LLaVA-Med's by up to one uint8 level (SEED_FACTS, point 5).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derma_core.config import get_dotted as _cfg

from .prompting import IMAGE_TOKEN, n_image_tokens_for
from .tiny import TINY_NAME, build_tiny_random

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = (None, "4bit", "8bit")
#: Modules never quantised: the vision tower and projector are small and precision-sensitive.
#: transformers matches these against full module names from the start (or as a suffix), so
#: they must carry the ``model.`` prefix to cover the Linear layers inside.
SKIP_QUANTIZATION = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


@dataclass
class Loaded:
    """A ready model: eval mode, on its device, with what encoding prompts needs."""

    model: Any
    processor: Any
    tokenizer: Any
    image_token_id: int
    model_id: str
    n_image_tokens: int = 0
    device: str = "cpu"
    dtype: Any = None
    folder: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_device(self):
        """Where input tensors go (the embedding's device under a ``device_map``)."""
        return self.model.get_input_embeddings().weight.device


def resolve_dtype(precision: str, device: str):
    """torch dtype for ``precision``; ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def quantization_config(quantization: str | None, compute_dtype):
    """A BitsAndBytesConfig for ``4bit`` (nf4, double quantisation) or ``8bit``; None for none."""
    if quantization in (None, "", "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=SKIP_QUANTIZATION)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANTIZATION)
    raise ValueError(f"quantization must be null, 4bit or 8bit, got {quantization!r}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read model config ({exc}); is this a model folder?") from None


def is_original_checkpoint(folder: Path) -> bool:
    """True for an original LLaVA(-Med) checkpoint (``model_type: llava_mistral`` or ``llava``
    with ``mm_vision_tower``) that transformers cannot load natively."""
    cfg = _read_json(folder / "config.json")
    return cfg.get("model_type") in {"llava_mistral", "llava_llama"} or (
        "mm_vision_tower" in cfg and "vision_config" not in cfg)


def resolve_model_folder(name: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder for ``name``: the folder itself, or the hub snapshot (downloaded when the
    network allows, else taken from the local HF cache)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.name {name!r} is a folder without config.json: not a model folder")
        return path
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"model.name {name!r} is neither an existing folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.bin", "tokenizer.model", "*.jinja", "*.txt"]
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as online_error:  # offline or hub unreachable: fall back to the local cache
        try:
            return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                          local_files_only=True))
        except Exception:
            raise FileNotFoundError(
                f"model {name!r} is not in the local Hugging Face cache and could not be downloaded "
                f"({type(online_error).__name__}); download it on a machine with internet "
                f"(`huggingface-cli download {name}`) or set model.name to a local folder") from None


def pil_processor(folder: Path, trust_remote_code: bool = False):
    """The folder's processor with its image processor forced to the PIL backend (exact LLaVA pixels)."""
    from transformers import AutoProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    processor = AutoProcessor.from_pretrained(folder, backend="pil", trust_remote_code=trust_remote_code)
    ip = processor.image_processor
    if not isinstance(ip, LlavaImageProcessorPil):
        # Rebuild from the saved settings; the torchvision backend would change the pixels.
        settings = {k: getattr(ip, k) for k in ("size", "crop_size", "image_mean", "image_std", "do_pad",
                                                 "do_center_crop", "do_resize", "rescale_factor", "resample")
                    if getattr(ip, k, None) is not None}
        processor.image_processor = LlavaImageProcessorPil(**settings)
    return processor


def load_llava(config: dict, device: str = "cpu") -> Loaded:
    """Load the model ``config['model']['name']`` names, ready for inference.

    Reads ``model.name``, ``model.revision``, ``model.cache_dir``, ``model.device_map``,
    ``model.attn_implementation``, ``model.trust_remote_code``, ``model.vision_tower``,
    ``precision`` and ``quantization``.
    """
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    name = str(_cfg(config, "model.name") or TINY_NAME)
    precision = _cfg(config, "precision", "auto") or "auto"
    quantization = _cfg(config, "quantization")
    dtype = resolve_dtype(precision, device)
    trust = bool(_cfg(config, "model.trust_remote_code", False))
    attn = _cfg(config, "model.attn_implementation", "sdpa") or "sdpa"
    device_map = _cfg(config, "model.device_map")
    info: dict[str, Any] = {"requested": name}

    if name == TINY_NAME:
        folder = build_tiny_random()
        model_id = "tiny-random-llava (random weights; smoke test only)"
    else:
        folder = resolve_model_folder(name, _cfg(config, "model.revision"), _cfg(config, "model.cache_dir"))
        model_id = name
        if is_original_checkpoint(folder):
            from .convert import cached_conversion

            info["converted_from"] = str(folder)
            folder = cached_conversion(folder, vision_tower=_cfg(config, "model.vision_tower"))
    info["folder"] = str(folder)

    qconfig = quantization_config(quantization, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn, "trust_remote_code": trust}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or {"": device}
    elif device_map:
        kwargs["device_map"] = device_map
    model = LlavaForConditionalGeneration.from_pretrained(folder, **kwargs)
    if qconfig is None and not device_map:
        model.to(device)
    model.eval()

    processor = pil_processor(folder, trust)
    tokenizer = processor.tokenizer if getattr(processor, "tokenizer", None) is not None else \
        AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
    tokenizer.padding_side = "left"
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"{folder}: the tokenizer has no {IMAGE_TOKEN!r} token; convert the checkpoint with "
                         "`derma llava convert`")
    if image_token_id != model.config.image_token_id:
        raise ValueError(f"{folder}: tokenizer {IMAGE_TOKEN!r} id {image_token_id} differs from the model's "
                         f"image_token_id {model.config.image_token_id}")
    return Loaded(model=model, processor=processor, tokenizer=tokenizer, image_token_id=int(image_token_id),
                  model_id=model_id, n_image_tokens=n_image_tokens_for(model.config), device=str(device),
                  dtype=dtype, folder=Path(folder), info=info)


def pixel_values(loaded: Loaded, images: list) -> "torch.Tensor":  # noqa: F821
    """Preprocess PIL images (pad to square, resize, normalise) into the model's dtype and device."""
    batch = loaded.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    vision_dtype = next(loaded.model.model.vision_tower.parameters()).dtype
    return batch.to(loaded.input_device, dtype=vision_dtype if vision_dtype.is_floating_point else loaded.dtype)
