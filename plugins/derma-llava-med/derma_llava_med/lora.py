"""The ``llava_lora`` backend: LoRA / QLoRA fine-tuning of LLaVA-Med, evaluated like zero-shot.

The training loop, best-epoch selection, early stopping, resume after a kill, adapter saving
and merge are :class:`derma_vlm.lora.VlmLoraClassifier`'s. LLaVA-Med supplies its loader, its
template -- ``[INST] <image>\\n{question} [/INST] {answer}</s>``, tokenised in chunks exactly
as inference tokenises the prompt, loss on the answer and ``</s>`` only -- and what trains: LoRA
on the Mistral decoder's linear layers (q, k, v, o, gate, up, down; never the CLIP vision
tower) plus a fully trained copy of ``multi_modal_projector``. Training defaults are the
original study's (``configs/llava_lora.yaml``). ``quantization: 4bit`` is QLoRA.
"""

from __future__ import annotations

from pathlib import Path

from derma_core import hookimpl
from derma_vlm.lora import (ADAPTER_DIR, ADAPTER_INFO, CHECKPOINT_DIR, MERGED_DIR, TAG_ADAPTER,  # noqa: F401
                            TAG_BASE_MODEL, VlmLoraClassifier, adapter_checksum)

from .zeroshot import LlavaClassifier

PLUGIN_NAME = "llava_lora"


class LoraClassifier(VlmLoraClassifier, LlavaClassifier):
    """LLaVA-Med + a LoRA adapter trained in ``fit``; ``predict`` is the zero-shot one."""

    name = PLUGIN_NAME
    trainable_modules = ("multi_modal_projector",)
    template = "[INST] <image>\\n{question} [/INST] {answer}</s>"


def _factory(config: dict) -> LoraClassifier:
    return LoraClassifier(config)


@hookimpl
def register_classifiers(register):
    config = Path(__file__).resolve().parents[3] / "configs" / "llava_lora.yaml"
    register(PLUGIN_NAME, _factory, config=str(config) if config.exists() else None)
