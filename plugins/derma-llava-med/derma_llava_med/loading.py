"""Load LLaVA-Med (or any LLaVA) through transformers' native ``LlavaForConditionalGeneration``.

``model.name`` may be

* ``auto`` (the default): ``tiny-random`` on the built-in synthetic set, LLaVA-Med v1.5
  (``microsoft/llava-med-v1.5-mistral-7b``) on any other data (:func:`resolve_model_name`);
* ``tiny-random``: the smoke-test model of :mod:`derma_llava_med.tiny` (random weights);
* a folder or hub id of an HF-format LLaVA (``model_type: llava``);
* a folder or hub id of an *original* LLaVA-Med v1.5 checkpoint (``model_type: llava_mistral``,
  e.g. ``microsoft/llava-med-v1.5-mistral-7b``): converted once with
  :func:`derma_llava_med.convert.convert_checkpoint` and cached under
  ``~/.cache/derma/models`` (``DERMA_MODEL_CACHE``).

The processor is always the PIL-backend one, padding to square with the mean colour:
``AutoProcessor.from_pretrained`` alone would return the torchvision backend, whose pixels
differ from LLaVA-Med's by up to one uint8 level (SEED_FACTS, point 5).

Precision, quantisation, folder resolution and the dtype policy are derma_vlm's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derma_core.config import get_dotted as _cfg
from derma_vlm.loading import Loaded as VlmLoaded
from derma_vlm.loading import load_pretrained, resolve_model_folder
from derma_vlm.precision import resolve_dtype

from .prompting import IMAGE_TOKEN, LlavaCodec, n_image_tokens_for
from .tiny import TINY_NAME, build_tiny_random

log = logging.getLogger(__name__)

#: What ``model.name: auto`` resolves to on real data: the model of the original study.
LLAVA_MED = "microsoft/llava-med-v1.5-mistral-7b"
#: Modules never quantised: the vision tower and projector are small and precision-sensitive.
#: transformers matches these against full module names from the start (or as a suffix), so
#: they must carry the ``model.`` prefix to cover the Linear layers inside.
SKIP_QUANTIZATION = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


@dataclass
class Loaded(VlmLoaded):
    """derma_vlm's Loaded with what LLaVA's chunked prompt needs."""

    image_token_id: int = 0
    n_image_tokens: int = 0


def resolve_model_name(config: dict) -> str:
    """The model ``model.name`` means for this run's data.

    ``auto`` is ``tiny-random`` on the built-in synthetic set (``data.source: synthetic``) and
    LLaVA-Med v1.5 on anything else; ``tiny-random`` on other data is refused unless
    ``model.allow_random: true`` (random weights would give meaningless numbers that look like
    results); null is an error that says what to set."""
    name = _cfg(config, "model.name")
    source = _cfg(config, "data.source")
    if name is None or str(name).strip() == "":
        raise ValueError(f"model.name is not set: set it to auto, {TINY_NAME}, {LLAVA_MED} or a model folder "
                         "(-o model.name=auto)")
    name = str(name)
    if name == "auto":
        return TINY_NAME if source == "synthetic" else LLAVA_MED
    if name == TINY_NAME and source != "synthetic" and not _cfg(config, "model.allow_random", False):
        raise ValueError(f"model.name={TINY_NAME} has random weights and data.source={source!r} is not the "
                         "synthetic set: its predictions would mean nothing; set model.name (e.g. "
                         f"{LLAVA_MED}) or -o model.allow_random=true for a smoke test")
    return name


def model_image_size(name: str) -> int | None:
    """The side, in pixels, the model sees images at (its processor's crop size), where known
    without loading the model: tiny-random, LLaVA-Med v1.5 (CLIP ViT-L/14 at 336 px), or a local
    HF folder's ``vision_config``; None otherwise."""
    if name == TINY_NAME:
        from .tiny import TINY_VISION

        return int(TINY_VISION["image_size"])
    if name == LLAVA_MED:
        return 336
    config = Path(name).expanduser() / "config.json"
    if config.exists():
        size = (_read_json(config).get("vision_config") or {}).get("image_size")
        return int(size) if size else None
    return None


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

    Reads ``model.name`` (through :func:`resolve_model_name`), ``model.allow_random``,
    ``model.revision``, ``model.cache_dir``, ``model.device_map``, ``model.attn_implementation``,
    ``model.trust_remote_code``, ``model.vision_tower``, ``precision`` and ``quantization``.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    name = resolve_model_name(config)
    precision = _cfg(config, "precision", "auto") or "auto"
    quantization = _cfg(config, "quantization")
    dtype = resolve_dtype(precision, device)
    trust = bool(_cfg(config, "model.trust_remote_code", False))
    attn = _cfg(config, "model.attn_implementation", "sdpa") or "sdpa"
    device_map = _cfg(config, "model.device_map")
    info: dict[str, Any] = {"requested": _cfg(config, "model.name"), "resolved_name": name}

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

    model = load_pretrained(LlavaForConditionalGeneration, folder, dtype=dtype, device=device,
                            quantization=quantization, skip_quantization=SKIP_QUANTIZATION,
                            device_map=device_map, attn_implementation=attn, trust_remote_code=trust)

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
    n_image_tokens = n_image_tokens_for(model.config)
    codec = LlavaCodec(tokenizer, processor.image_processor, int(image_token_id), n_image_tokens)
    return Loaded(model=model, processor=processor, tokenizer=tokenizer, codec=codec, model_id=model_id,
                  device=str(device), dtype=dtype, folder=Path(folder), info=info,
                  image_token_id=int(image_token_id), n_image_tokens=n_image_tokens)
