"""Batched greedy answers: one ``model.generate`` per batch of images, prompts left-padded."""

from __future__ import annotations

from typing import Any


def generate_answers(loaded, images: list, question: str | list[str], max_new_tokens: int = 64,
                     stop_at_eos: bool = True) -> list[str]:
    """Greedy answers for a batch of images: one question for all, or one per image (prompts of
    different lengths are left-padded). The codec's suppressed tokens (image placeholders) are
    never generated; generation stops at the end-of-turn token. ``stop_at_eos=False`` always
    generates ``max_new_tokens`` tokens (the benchmark's model of the original loop)."""
    import torch

    codec, policy, device = loaded.codec, loaded.policy, loaded.input_device
    questions = [question] * len(images) if isinstance(question, str) else list(question)
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions for {len(images)} images")
    inputs = policy.cast_inputs(codec.prompt_inputs(images, questions), device)
    kwargs: dict[str, Any] = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=codec.pad_token_id,
                                  temperature=None, top_p=None, top_k=None)
    if codec.suppress_token_ids:
        kwargs["suppress_tokens"] = list(codec.suppress_token_ids)
    if stop_at_eos:
        kwargs["eos_token_id"] = codec.end_of_turn_id
    else:
        kwargs["eos_token_id"] = None
        kwargs["min_new_tokens"] = max_new_tokens
    with torch.inference_mode(), policy.autocast(device):
        out = loaded.model.generate(**inputs, **kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in loaded.tokenizer.batch_decode(new, skip_special_tokens=True)]
