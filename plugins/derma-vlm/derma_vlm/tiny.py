"""Tiny random image-text-to-text models of several architectures, built offline from their configs.

``model.name: auto`` on the synthetic data resolves to one of these (``tiny-gemma3``); tests build
all of them. Each is a folder that plain ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` load without a network: random weights (hidden size 32-64, one
or two layers, 32-56 px images), a byte-level BPE tokenizer trained at build time with the
``tokenizers`` library on derma's prompts and class names (so every prompt and label tokenises
without unknown pieces), the family's special tokens (image token, turn markers, end of turn)
and a chat template of the family's real shape (the structure of the published templates:
turn markers, roles, where the image goes, the generation prompt). Their predictions are noise;
they exist so that the generic VLM path (chat template, processor, scoring, LoRA) is exercised
per architecture in seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from derma_core.atomic import atomic_dir

#: Bumped whenever what a tiny folder holds changes (invalidates the cache).
_TINY_VERSION = "1"

# -- chat templates of each family's shape ------------------------------------------------------------
# Gemma 3 / MedGemma (google/gemma-3-4b-it, google/medgemma-4b-it): a system message is folded into
# the first user turn; the assistant role is called "model"; ``<end_of_turn>`` closes every turn.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct): ChatML with a default system prompt, the image as
# ``<|vision_start|><|image_pad|><|vision_end|>``, ``<|im_end|>`` closing every turn.
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf): ChatML without a default system prompt;
# the role is followed by a space, images first, then each text part on a new line.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Idefics3 / SmolVLM (HuggingFaceTB/SmolVLM-Instruct): ``<|im_start|>`` once, then ``User:`` /
# ``Assistant:`` turns closed by ``<end_of_utterance>``; the generation prompt is ``Assistant:``.
IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """One tiny architecture: its special tokens and how to build its config and processor."""

    name: str
    model_type: str
    chat_template: str
    special_tokens: dict[str, str]          # tokenizer attribute -> token text (bos/eos/pad/...)
    extra_tokens: tuple[str, ...]           # further special tokens (turn markers, vision markers)
    build_config: Callable[[Any], Any]      # tokenizer -> model config
    build_processor: Callable[[Any], Any]   # tokenizer -> processor
    extra_special: dict[str, str] = field(default_factory=dict)  # named extra special tokens


def _ids(tok, *names: str) -> list[int]:
    return [tok.convert_tokens_to_ids(n) for n in names]


# -- Gemma 3 ---------------------------------------------------------------------------------------
def _gemma3_config(tok, sizes: dict | None = None):
    """The tiny Gemma 3 config, or with ``sizes`` (an entry of :data:`SHAPES`) a real-sized one."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    sizes = sizes or {}
    boi, eoi, img = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text_kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                   sliding_window=64, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   layer_types=["sliding_attention", "full_attention"])
    vision_kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                     image_size=32, patch_size=8)
    text = Gemma3TextConfig(**{**text_kw, **sizes.get("text", {})})
    vision = SiglipVisionConfig(**{**vision_kw, **sizes.get("vision", {})})
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=sizes.get("image_tokens", 4),
                        boi_token_index=boi, eoi_token_index=eoi, image_token_index=img, tie_word_embeddings=True)


def _gemma3_processor(tok, sizes: dict | None = None):
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    sizes = sizes or {}
    side = sizes.get("vision", {}).get("image_size", 32)
    ip = Gemma3ImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                           image_seq_length=sizes.get("image_tokens", 4))


# -- Qwen2.5-VL ------------------------------------------------------------------------------------
def _qwen2_5_vl_config(tok):
    from transformers import Qwen2_5_VLConfig

    img, vid, vs, ve = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=img, video_token_id=vid,
                            vision_start_token_id=vs, vision_end_token_id=ve, tie_word_embeddings=False)


def _qwen2_5_vl_processor(tok):
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # 56 x 56 px at most: a 4 x 4 patch grid, merged 2 x 2 into 4 image tokens.
    size = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}
    ip = Qwen2VLImageProcessorPil(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    vp = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                               chat_template=QWEN2_5_VL_TEMPLATE)


# -- LLaVA-OneVision -------------------------------------------------------------------------------
def _llava_onevision_config(tok):
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    img, vid = _ids(tok, "<image>", "<video>")
    text = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                image_size=32, patch_size=8, vision_use_head=False)
    return LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=img, video_token_index=vid,
                                image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], vision_feature_layer=-1,
                                vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                tie_word_embeddings=False)


def _llava_onevision_processor(tok):
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    grid = [[32, 32], [32, 64], [64, 32]]
    ip = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=grid,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vp = LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    return LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, num_image_tokens=16,
                                   vision_feature_select_strategy="full", chat_template=LLAVA_ONEVISION_TEMPLATE,
                                   image_token="<image>", video_token="<video>", vision_aspect_ratio="anyres_max_9")


# -- Idefics3 / SmolVLM ----------------------------------------------------------------------------
def _idefics3_config(tok):
    from transformers import Idefics3Config, Idefics3VisionConfig, LlamaConfig

    (img,) = _ids(tok, "<image>")
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  image_size=32, patch_size=8)
    return Idefics3Config(text_config=text, vision_config=vision, image_token_id=img, scale_factor=2,
                          tie_word_embeddings=False, pad_token_id=tok.pad_token_id)


def _idefics3_processor(tok):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                   do_image_splitting=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)


SPECS: dict[str, TinySpec] = {
    "tiny-gemma3": TinySpec(
        "tiny-gemma3", "gemma3", GEMMA3_TEMPLATE,
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        _gemma3_config, _gemma3_processor,
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}),
    "tiny-qwen2_5_vl": TinySpec(
        "tiny-qwen2_5_vl", "qwen2_5_vl", QWEN2_5_VL_TEMPLATE,
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        _qwen2_5_vl_config, _qwen2_5_vl_processor,
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
         "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}),
    "tiny-llava_onevision": TinySpec(
        "tiny-llava_onevision", "llava_onevision", LLAVA_ONEVISION_TEMPLATE,
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ("<|im_start|>", "<image>", "<video>"),
        _llava_onevision_config, _llava_onevision_processor,
        {"image_token": "<image>", "video_token": "<video>"}),
    "tiny-idefics3": TinySpec(
        "tiny-idefics3", "idefics3", IDEFICS3_TEMPLATE,
        {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"},
        ("<image>", "<fake_token_around_image>", "<global-img>"),
        _idefics3_config, _idefics3_processor,
        {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
         "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}),
}
#: What ``model.name: auto`` resolves to on the synthetic data.
DEFAULT_TINY = "tiny-gemma3"

#: Published sizes of real models, per tiny family: ``build_tiny(name, shape=...)`` builds a random
#: model of that size with the same tokenizer and chat template (the embedding padded to the
#: published vocabulary, so the parameter count and the logits' width are the real ones).
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny-gemma3": {
        # google/gemma-3-4b-it = google/medgemma-4b-it: Gemma 3 4B text, SigLIP So400m/14 at 896 px,
        # 256 image tokens; 4.3 B parameters.
        "4b": {"label": "Gemma 3 4B (google/medgemma-4b-it shape)",
               "text": dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                            sliding_window=1024, max_position_embeddings=131072, layer_types=None,
                            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                "rope_theta": 1_000_000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
               "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                              image_size=896, patch_size=14, vision_use_head=False),
               "image_tokens": 256},
        # The 4B's widths with few layers and a small vocabulary (a CPU check of the sized code path).
        "small": {"label": "Gemma 3 4B widths, 4 text / 4 vision layers",
                  "text": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=4,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                               sliding_window=1024, layer_types=None),
                  "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=4,
                                 num_attention_heads=16, image_size=224, patch_size=14, vision_use_head=False),
                  "image_tokens": 64},
    },
}


def _corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: HAM10000's class codes and names and the study's
    prompts (any other label set's text is covered by the byte-level alphabet; keeping this corpus
    fixed keeps the tiny tokenizers, and so every tiny-model figure, what they were)."""
    from derma_core import plugins
    from derma_core.data.datasets.ham10000 import LABEL_SET

    texts = list(LABEL_SET.codes) + list(LABEL_SET.names)
    for name in ("p0", "p1", "p2", "p4"):
        try:
            texts.append(plugins.get_prompt_builder(name)(LABEL_SET))
        except Exception:  # a prompt a colleague removed: the byte alphabet still covers it
            continue
    texts += ["You are a helpful assistant.", "user", "assistant", "model", "system", "User", "Assistant",
              "Picture 1:", "The lesion is", "melanocytic"]
    return texts * 3


def build_tokenizer(spec: TinySpec):
    """A byte-level BPE tokenizer (~400 pieces) with the family's special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = list(dict.fromkeys([*spec.special_tokens.values(), *spec.extra_tokens]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **spec.special_tokens,
                                   extra_special_tokens=dict(spec.extra_special) or None,
                                   additional_special_tokens=[t for t in spec.extra_tokens
                                                              if t not in spec.extra_special.values()])
    # No post-processor: as in the real models, the chat template renders BOS where the family has
    # one (Gemma, SmolVLM), and the codec then tokenises without adding another.
    fast.chat_template = spec.chat_template
    return fast


def _randomise(model, seed: int) -> None:
    """Larger-than-default random weights so logits differ visibly between images and labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def default_cache_dir() -> Path:
    """Where derma caches built models (``DERMA_MODEL_CACHE`` overrides)."""
    env = os.environ.get("DERMA_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "derma" / "models"


def build_tiny(name: str = DEFAULT_TINY, dst: str | os.PathLike | None = None, seed: int = 0,
               shape: str | None = None, dtype: str = "float32", device: str = "cpu") -> Path:
    """The folder of tiny model ``name`` (a key of :data:`SPECS`), built on first use and cached by
    content (same name, seed and version: the same folder, reused). Written atomically.

    ``shape`` (a key of ``SHAPES[name]``) builds the same family at published sizes instead, created
    directly on ``device`` in ``dtype`` with the config's own initialiser (std 0.02: the tiny models'
    0.2 would saturate every softmax at real width); its marker records ``params``, the count."""
    if name not in SPECS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(SPECS)}")
    sizes = None
    if shape is not None:
        if shape not in SHAPES.get(name, {}):
            known = ", ".join(SHAPES.get(name, {})) or "(none)"
            raise ValueError(f"no shape {shape!r} for {name}; choose one of {known}")
        sizes = SHAPES[name][shape]
    import torch
    from transformers import AutoModelForImageTextToText

    spec = SPECS[name]
    # The tokenizer is trained on the registered prompts: a changed prompt gives a new folder.
    key_parts = [_TINY_VERSION, name, seed, _corpus()] + ([shape, dtype, sizes] if sizes else [])
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:12]
    folder = f"{name}-{key}" if sizes is None else f"{name.removeprefix('tiny-')}-{shape}-random-{key}"
    dst = Path(dst) if dst is not None else default_cache_dir() / folder
    marker = dst / "derma_tiny.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return dst
    tok = build_tokenizer(spec)
    config = spec.build_config(tok) if sizes is None else spec.build_config(tok, sizes)
    if sizes is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForImageTextToText.from_config(config)
        _randomise(model, seed)
    else:
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = spec.build_processor(tok) if sizes is None else spec.build_processor(tok, sizes)
    extra = {} if sizes is None else {"shape": shape, "label": sizes.get("label", shape), "dtype": dtype,
                                      "params": sum(p.numel() for p in model.parameters())}
    # a folder whose marker exists was finished by another process meanwhile: theirs stands; an
    # incomplete or outdated one is replaced
    with atomic_dir(dst, keep_existing=lambda folder: (folder / "derma_tiny.json").exists()) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "derma_tiny.json").write_text(json.dumps({
            "key": key, "name": name, "seed": seed,
            "what": f"tiny random {spec.model_type} for tests and smoke runs; its predictions are meaningless",
            **extra}))
        del model
    return dst
