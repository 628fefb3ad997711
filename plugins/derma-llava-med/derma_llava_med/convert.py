"""Convert an original LLaVA-Med v1.5 checkpoint into a native transformers LLaVA folder.

The original checkpoint (``config.json`` with ``model_type: llava_mistral``) keeps Mistral's
keys (``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``), the projector
as ``model.mm_projector.0/2`` and, optionally, a copy of the CLIP tower under
``model.vision_tower.vision_tower.*``. The native ``LlavaForConditionalGeneration`` wants
``model.language_model.*``, ``model.multi_modal_projector.linear_1/2`` and
``model.vision_tower.*``, an ``<image>`` token in the vocabulary (embedding and ``lm_head``
resized), and config fields carried over exactly (SEED_FACTS, "Porting LLaVA-Med v1.5
faithfully"): ``rope_theta``, ``rms_norm_eps``, ``sliding_window``, head counts,
``vision_feature_layer`` -2 with the CLS token dropped, exact-GELU projector.

Vision weights come, like the original loader's, from the CLIP model ``mm_vision_tower`` names
(``vision_source: named``); the checkpoint's own copy is used when that model is not available
(``auto``) or when asked (``checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derma_core.atomic import atomic_dir

from .prompting import CHAT_TEMPLATE, IMAGE_TOKEN
from .tiny import default_cache_dir, make_processor, mistral_tokenizer_file

CONVERTER_VERSION = "1"
#: The config of openai/clip-vit-large-patch14-336 (LLaVA-Med v1.5's tower), for converting a
#: checkpoint that carries the tower's weights when that model's config is not available offline.
CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5)
KNOWN_TOWERS = {"openai/clip-vit-large-patch14-336": CLIP_L14_336}
_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "sliding_window",
              "bos_token_id", "eos_token_id", "initializer_range", "attention_dropout")


class ConversionError(ValueError):
    """The source is not a convertible LLaVA-Med checkpoint; the message says what is wrong."""


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{src}: no config.json; pass the folder of an original LLaVA-Med checkpoint") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc.msg})") from None


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight shards: ``*.safetensors``, else ``pytorch_model*.bin`` / ``model*.bin``."""
    st = sorted(src.glob("*.safetensors"))
    if st:
        return st
    bins = sorted(p for p in src.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if not bins:
        raise ConversionError(f"{src}: no weights (*.safetensors or pytorch_model*.bin)")
    return bins


def load_weights(files: list[Path]) -> dict[str, Any]:
    """All tensors of the shards (``.bin`` through ``torch.load(weights_only=True)``)."""
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in files:
        if f.suffix == ".safetensors":
            out.update(load_file(str(f)))
        else:
            out.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return out


def map_text_key(key: str) -> str | None:
    """Original language-model/projector key -> native key (None for keys handled elsewhere)."""
    if key.startswith("model.vision_tower."):
        return None
    if key.startswith("model.mm_projector.0."):
        return "model.multi_modal_projector.linear_1." + key[len("model.mm_projector.0."):]
    if key.startswith("model.mm_projector.2."):
        return "model.multi_modal_projector.linear_2." + key[len("model.mm_projector.2."):]
    if key.startswith("lm_head."):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    raise ConversionError(f"unexpected key {key!r} in the checkpoint (not a llava_mistral layout?)")


def checkpoint_vision_weights(weights: dict) -> dict:
    """The vision tower copy inside the checkpoint, with native CLIPVisionModel key names."""
    out = {}
    prefix = "model.vision_tower.vision_tower."
    for key, value in weights.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            rest = rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
            out[rest] = value
    return out


def _tower_folder(name: str, src: Path) -> Path | None:
    """The local folder of the CLIP tower ``name`` (a path as the original resolved it, against the
    current directory, or the checkpoint folder; or a hub id in the HF cache / downloadable)."""
    for candidate in (Path(name).expanduser(), src / name):
        if candidate.exists():
            return candidate
    if name.count("/") == 1:
        from derma_vlm.loading import resolve_model_folder

        try:
            return resolve_model_folder(name)
        except FileNotFoundError:
            return None
    return None


def _tokenizer(src: Path, vocab_size: int):
    """The checkpoint's tokenizer (its ``tokenizer.model`` with SEED_FACTS' settings), ``<image>`` added."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        sp = src / "tokenizer.model"
        if sp.exists() or not (src / "tokenizer.json").exists():
            if not sp.exists():
                if vocab_size != 32000:
                    raise ConversionError(f"{src}: no tokenizer files and vocab_size {vocab_size} is not Mistral's 32000")
                sp = mistral_tokenizer_file()  # same vocabulary as LLaVA-Med v1.5
            shutil.copy(sp, Path(tmp) / "tokenizer.model")
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
                "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 32768}))
            tok = AutoTokenizer.from_pretrained(tmp)
        else:
            tok = AutoTokenizer.from_pretrained(src)
    if len(tok) != vocab_size:
        raise ConversionError(f"{src}: tokenizer has {len(tok)} pieces but the model's vocab_size is {vocab_size}")
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _resize_rows(weight, rows: int):
    """``weight`` with rows appended up to ``rows``, initialised to the mean row (as HF's LLaVA
    conversion does). Only the ``<image>`` row is added: its embedding is always replaced by image
    features, and scoring/generation exclude it from the output vocabulary."""
    import torch

    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, vision_tower: str | None = None,
                       vision_source: str = "auto", overwrite: bool = False) -> Path:
    """Convert the original checkpoint folder ``src`` into the HF folder ``dst`` (written atomically)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise ConversionError(f"{dst} exists and is not empty; choose another folder or pass --force")
    if vision_source not in ("auto", "named", "checkpoint"):
        raise ConversionError(f"vision_source must be auto, named or checkpoint, got {vision_source!r}")
    cfg = _read_config(src)
    model_type = cfg.get("model_type")
    if model_type not in ("llava_mistral", "llava_llama", "llava"):
        raise ConversionError(f"{src}/config.json: model_type {model_type!r} is not an original LLaVA checkpoint "
                              "(expected llava_mistral)")
    if cfg.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise ConversionError(f"{src}/config.json: mm_projector_type {cfg.get('mm_projector_type')!r} is not "
                              "supported (LLaVA-Med v1.5 uses mlp2x_gelu)")
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ConversionError(f"{src}/config.json: mm_vision_select_feature {select!r} is not supported")
    tower_name = vision_tower or cfg.get("mm_vision_tower")
    if not tower_name:
        raise ConversionError(f"{src}/config.json has no mm_vision_tower; pass --vision-tower")

    weights = load_weights(weight_files(src))
    vocab = int(cfg.get("vocab_size", weights["model.embed_tokens.weight"].shape[0]))
    dtype = weights["model.embed_tokens.weight"].dtype
    vision = _vision_part(src, tower_name, weights, vision_source, dtype)
    tokenizer = _tokenizer(src, vocab)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    new_vocab = max(vocab, image_token_id + 1)
    config = _llava_config(cfg, vision.config, select, image_token_id, new_vocab, dtype)
    state = _native_state(src, weights, vision.state, config, new_vocab, dtype)
    record = {"source": str(src.resolve()), "converter_version": CONVERTER_VERSION, "vision_weights": vision.used,
              "vision_tower": tower_name, "image_token_id": image_token_id, "original_vocab_size": vocab}
    _write_folder(dst, state, config, tokenizer, vision, cfg, record)
    return dst


@dataclass
class _Vision:
    """The vision tower of a conversion: its config and weights, which weights were used (for
    derma_convert.json), its preprocessing config and crop size."""

    config: Any
    state: dict
    used: str
    pre: dict
    crop: int


def _vision_part(src: Path, tower_name: str, weights: dict, vision_source: str, dtype) -> _Vision:
    """The vision tower's config, weights (the named CLIP model's, or the checkpoint's copy) and
    preprocessing."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower_dir = _tower_folder(tower_name, src)
    if tower_dir is not None and (tower_dir / "config.json").exists():
        vision_config = CLIPVisionConfig.from_pretrained(tower_dir)
    elif tower_name in KNOWN_TOWERS:
        vision_config = CLIPVisionConfig(**KNOWN_TOWERS[tower_name])
    else:
        raise ConversionError(f"vision tower {tower_name!r} (mm_vision_tower) is not available locally; download "
                              "it or pass --vision-tower with a CLIP folder")
    copy = checkpoint_vision_weights(weights)
    named_has_weights = tower_dir is not None and (any(tower_dir.glob("*.safetensors")) or any(tower_dir.glob("*.bin")))
    if vision_source == "named" or (vision_source == "auto" and named_has_weights):
        if not named_has_weights:
            raise ConversionError(f"vision tower {tower_name!r} has no weights locally (vision_source named)")
        vision_sd = CLIPVisionModel.from_pretrained(tower_dir, dtype=dtype).state_dict()
        used = f"named:{tower_name}"
    elif copy:
        vision_sd = copy
        used = "checkpoint"
    else:
        raise ConversionError(f"no vision weights: {tower_name!r} is not available locally and the checkpoint "
                              "carries no model.vision_tower.vision_tower.* copy")
    pre = {}
    if tower_dir is not None and (tower_dir / "preprocessor_config.json").exists():
        pre = json.loads((tower_dir / "preprocessor_config.json").read_text())
    crop = pre.get("crop_size", vision_config.image_size)
    crop = crop.get("height", vision_config.image_size) if isinstance(crop, dict) else int(crop)
    return _Vision(vision_config, vision_sd, used, pre, crop)


def _llava_config(cfg: dict, vision_config, select: str, image_token_id: int, new_vocab: int, dtype):
    """The native LlavaConfig, with the text model's fields carried over exactly."""
    from transformers import LlamaConfig, LlavaConfig, MistralConfig

    text_kwargs = {k: cfg[k] for k in _TEXT_KEYS if k in cfg}
    text_kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))}
    text_cls = LlamaConfig if cfg.get("model_type") == "llava_llama" else MistralConfig
    if text_cls is MistralConfig:
        text_kwargs.setdefault("sliding_window", None)
    text_config = text_cls(vocab_size=new_vocab, tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                           **text_kwargs)
    n_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                         image_seq_length=n_patches + (1 if select == "cls_patch" else 0),
                         projector_hidden_act="gelu", vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
                         vision_feature_select_strategy="full" if select == "cls_patch" else "default",
                         multimodal_projector_bias=True, tie_word_embeddings=False)
    config.dtype = dtype
    return config


def _native_state(src: Path, weights: dict, vision_sd: dict, config, new_vocab: int, dtype) -> dict[str, Any]:
    """The native state dict (keys mapped, embedding and lm_head resized for ``<image>``),
    checked key by key and shape by shape against the architecture."""
    import torch
    from transformers import LlavaForConditionalGeneration

    state: dict[str, Any] = {}
    for key, value in weights.items():
        new = map_text_key(key)
        if new is not None:
            state[new] = value
    for key, value in vision_sd.items():
        state["model.vision_tower." + key] = value.to(dtype)
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key not in state:
            raise ConversionError(f"{src}: missing {key.replace('model.language_model.', 'model.')}")
        state[key] = _resize_rows(state[key], new_vocab)
    with torch.device("meta"):
        expected = LlavaForConditionalGeneration(config).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"{src}: weights do not match the architecture: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]} ({len(missing)} / {len(unexpected)})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(f"{src}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    return state


def _write_folder(dst: Path, state: dict, config, tokenizer, vision: _Vision, cfg: dict, record: dict) -> None:
    """The HF folder, atomically: safetensors shards, config, generation config, processor and
    derma_convert.json (``record``)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    with atomic_dir(dst, keep_existing=False) as tmp:
        split = split_torch_state_dict_into_shards(state, max_shard_size="5GB")
        for filename, keys in split.filename_to_tensors.items():
            save_file({k: state[k].contiguous() for k in keys}, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {}, "weight_map": split.tensor_to_filename}, indent=2))
        config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id, do_sample=False).save_pretrained(tmp)
        processor = make_processor(tokenizer, vision.crop, vision.config.patch_size, vision.pre.get("image_mean"),
                                   vision.pre.get("image_std"))
        processor.chat_template = CHAT_TEMPLATE
        processor.tokenizer.chat_template = CHAT_TEMPLATE
        if not cfg.get("image_aspect_ratio", "pad") == "pad":
            processor.image_processor.do_pad = False
        processor.save_pretrained(tmp)
        (tmp / "derma_convert.json").write_text(json.dumps(record, indent=2))


def _source_key(src: Path, vision_tower: str | None) -> str:
    h = hashlib.sha256(f"{src.resolve()}|{vision_tower}|{CONVERTER_VERSION}".encode())
    for f in sorted(src.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def cached_conversion(src: str | os.PathLike, vision_tower: str | None = None) -> Path:
    """The converted folder for ``src``, converting on first use (cached by source content)."""
    src = Path(src)
    dst = default_cache_dir() / "converted" / f"{src.resolve().name}-{_source_key(src, vision_tower)}"
    if (dst / "derma_convert.json").exists():
        return dst
    return convert_checkpoint(src, dst, vision_tower=vision_tower)
