"""The smoke-test model: a tiny, seeded, randomly initialised LLaVA with the real Mistral tokenizer.

``model.name: tiny-random`` builds it (a few MB, seconds on a CPU). Its answers are noise:
it exists so that tests, benchmarks and the README's VLM smoke example exercise the real code
path (processor, chat template, tokenizer, splice of image features, generation, scoring)
without downloading 14 GB. Nothing it predicts means anything.

The tokenizer is the Mistral-7B v0.1 SentencePiece model that ships inside the PyPI package
``mistral-common`` (``mistral_common/data/tokenizer.model.v1``) -- the same 32,000 pieces as
LLaVA-Med v1.5 -- with ``<image>`` added as id 32000.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from derma_core.atomic import atomic_dir

from .prompting import CHAT_TEMPLATE, IMAGE_TOKEN

#: What ``model.name`` says to get the smoke-test model.
TINY_NAME = "tiny-random"

# Tiny architecture: CLIP 32 px / patch 8 -> 16 patch tokens per image; a 2-layer Mistral.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                   image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                 tie_word_embeddings=False)
_TINY_VERSION = "2"  # 2: the faithful chat template (a space after <image>)


def default_cache_dir() -> Path:
    """Where derma caches built and converted models (``DERMA_MODEL_CACHE`` overrides)."""
    env = os.environ.get("DERMA_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "derma" / "models"


def mistral_tokenizer_file() -> Path:
    """The Mistral-7B v0.1 SentencePiece model shipped inside ``mistral-common``."""
    try:
        import mistral_common
    except ImportError:  # pragma: no cover - declared dependency
        raise RuntimeError("the tiny-random model needs the real Mistral tokenizer: pip install mistral-common") from None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.exists():  # pragma: no cover
        raise RuntimeError(f"{path} is missing: reinstall mistral-common (it ships the Mistral v0.1 tokenizer)")
    return path


def mistral_tokenizer_dir(dst: str | os.PathLike | None = None) -> Path:
    """A transformers tokenizer folder for the Mistral v0.1 tokenizer with ``<image>`` added (id 32000).

    Loading from the SentencePiece file converts it (about 10 s); the result is saved as a fast
    ``tokenizer.json`` so later loads are instant. Cached: an existing complete folder is reused.
    """
    dst = Path(dst) if dst is not None else default_cache_dir() / "mistral-v0.1-tokenizer-image"
    if (dst / "tokenizer.json").exists() and (dst / "derma_tokenizer.json").exists():
        return dst
    from transformers import AutoTokenizer

    with atomic_dir(dst, keep_existing=True) as tmp:
        src = tmp / "sp"
        src.mkdir()
        shutil.copy(mistral_tokenizer_file(), src / "tokenizer.model")
        # The tokenizer_config SEED_FACTS documents; LlamaTokenizer(vocab_file=...) directly would
        # silently give a 3-token vocabulary in transformers 5.
        (src / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 32768,
        }))
        tok = AutoTokenizer.from_pretrained(src)
        if len(tok) != 32000:
            raise RuntimeError(f"the Mistral tokenizer loaded with {len(tok)} pieces, expected 32000")
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
        tok.padding_side = "left"
        tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(tmp)
        shutil.rmtree(src)
        (tmp / "derma_tokenizer.json").write_text(json.dumps({"source": "mistral_common/data/tokenizer.model.v1",
                                                              "image_token": IMAGE_TOKEN}))
    return dst


def make_processor(tokenizer, image_size: int, patch_size: int, image_mean=None, image_std=None):
    """A LlavaProcessor with the PIL-backend image processor that pads to square with the mean
    colour (exactly LLaVA-Med's ``image_aspect_ratio: pad``), resize + centre crop to ``image_size``."""
    from transformers import LlavaProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    image_processor = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=list(image_mean or OPENAI_CLIP_MEAN), image_std=list(image_std or OPENAI_CLIP_STD))
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def tiny_config(image_token_id: int = 32000, vocab_size: int = 32001):
    """The LlavaConfig of the tiny-random model (Mistral text model, CLIP vision tower)."""
    from transformers import CLIPVisionConfig, LlavaConfig, MistralConfig

    return LlavaConfig(vision_config=CLIPVisionConfig(**TINY_VISION),
                       text_config=MistralConfig(vocab_size=vocab_size, **TINY_TEXT),
                       image_token_index=image_token_id, image_seq_length=16, projector_hidden_act="gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       tie_word_embeddings=False)


def build_tiny_random(dst: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """An HF folder holding a tiny, seeded, random ``LlavaForConditionalGeneration``, its processor
    and the real Mistral tokenizer. Cached by content: same seed and version, same folder, reused."""
    import torch

    key = hashlib.sha256(json.dumps([_TINY_VERSION, seed, TINY_VISION, TINY_TEXT], sort_keys=True).encode()).hexdigest()[:12]
    dst = Path(dst) if dst is not None else default_cache_dir() / f"tiny-random-llava-{key}"
    marker = dst / "derma_tiny.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return dst
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    tok_dir = mistral_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = tiny_config(image_token_id, len(tokenizer))
    config.text_config.pad_token_id = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        # Larger than the 0.02 default init so the random model's outputs differ visibly
        # between images and labels (tests of batching and scoring need non-flat logits).
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.2)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    with atomic_dir(dst, keep_existing=True) as tmp:
        model.save_pretrained(tmp)
        processor = make_processor(tokenizer, TINY_VISION["image_size"], TINY_VISION["patch_size"])
        processor.save_pretrained(tmp)
        (tmp / "derma_tiny.json").write_text(json.dumps({
            "key": key, "seed": seed, "what": "tiny random LLaVA for smoke tests; its predictions are meaningless"}))
    return dst
