"""What a model family supplies: a :class:`PromptCodec`.

Everything else in derma_vlm (scoring, generation, answer-only training, resume) works from
these few members, for any ``AutoModelForImageTextToText``-style model whose forward takes the
processor's outputs (``model(**inputs, use_cache=True)``) and continues from its KV cache
(``model(input_ids=..., attention_mask=..., cache=cache)``).

Input dicts follow the processor's conventions: ``input_ids`` and ``attention_mask`` of shape
``(batch, length)``, left-padded when prompts differ in length; any other tensor of that same
shape (e.g. ``token_type_ids``) is *per token* and is extended with zeros when answer tokens are
appended; every remaining tensor (``pixel_values``, ``image_sizes``, ``image_grid_thw`` ...) is
*per image* and is concatenated along dim 0 when examples are batched.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

IGNORE_INDEX = -100
TOKEN_KEYS = ("input_ids", "attention_mask")


@runtime_checkable
class PromptCodec(Protocol):
    """How one model family turns (images, question) into inputs and an answer into tokens."""

    #: The token that ends the assistant's answer (``</s>`` for LLaVA-Med, ``<end_of_turn>`` ...).
    end_of_turn_id: int
    #: Padding id for input_ids (left padding of prompts, right padding of training examples).
    pad_token_id: int
    #: Ids never generated and left out of the softmax when scoring (image placeholders).
    suppress_token_ids: tuple[int, ...]

    def prompt_inputs(self, images: list, questions: Sequence[str]) -> dict[str, Any]:
        """Processor inputs (CPU tensors) for one image + question per row: the user turn and the
        generation prompt, ready for the answer's first token; left-padded when lengths differ."""

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's token ids exactly as the model would emit them after the generation
        prompt, without the end-of-turn token."""

    # Optional: ``continuation_kwargs(model, prompt_inputs, prompt_len, n_new, k) -> dict`` -- extra
    # forward arguments for the scorer's continuation from a cache repeated ``k`` times (Qwen2.5-VL
    # needs its mrope positions there); read with getattr, so a codec may leave it out.


def per_token_keys(inputs: dict) -> list[str]:
    """Keys of ``inputs`` other than input_ids/attention_mask holding one value per token."""
    import torch

    shape = tuple(inputs["input_ids"].shape)
    return [k for k, v in inputs.items() if k not in TOKEN_KEYS and isinstance(v, torch.Tensor)
            and tuple(v.shape[:2]) == shape]


def image_keys(inputs: dict) -> list[str]:
    """Keys of ``inputs`` holding per-image tensors (everything that is not per token)."""
    import torch

    tokens = set(TOKEN_KEYS) | set(per_token_keys(inputs))
    return [k for k, v in inputs.items() if k not in tokens and isinstance(v, torch.Tensor)]


def append_tokens(inputs: dict, tokens: Sequence[int]) -> dict:
    """A one-row ``inputs`` with ``tokens`` appended (mask 1, per-token extras 0)."""
    import torch

    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError("append_tokens takes a one-row input dict")
    add = torch.tensor([list(tokens)], dtype=ids.dtype)
    out = dict(inputs)
    out["input_ids"] = torch.cat([ids, add], dim=1)
    mask = inputs.get("attention_mask")
    out["attention_mask"] = torch.cat([mask if mask is not None else torch.ones_like(ids), torch.ones_like(add)],
                                      dim=1)
    for k in per_token_keys(inputs):
        out[k] = torch.cat([inputs[k], torch.zeros((1, len(tokens)), dtype=inputs[k].dtype)], dim=1)
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of token rows left-padded to one length."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask
