"""What differs between model families, and the one chat-template codec every generic model uses.

Any model that ``AutoModelForImageTextToText`` and ``AutoProcessor`` load gets a
:class:`ChatTemplateCodec` (a :class:`~derma_vlm.codec.PromptCodec`): the prompt is rendered
through the processor's own chat template (optional system prompt, one image plus the question
as the user turn, the generation prompt added), the processor expands the image placeholder and
makes the pixels, and an answer is tokenised exactly as the template renders the assistant turn
after that generation prompt (``mel`` after ``<start_of_turn>model\\n``, `` mel`` after
SmolVLM's ``Assistant:``), closed by the family's end-of-turn token.

A :class:`Family` holds only what the template itself does not say: which token ends the
assistant's turn, which tokens are image placeholders (never generated, left out of the
softmax), whether the template takes a system message, and any extra inputs a continuation
from the KV cache needs (Qwen2.5-VL's 3-D ``mrope`` positions). Adding a family is one
:func:`register_family` call; a model type with no entry gets :data:`DEFAULT_FAMILY` (the
tokenizer's EOS ends the turn), which is right for most chat templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


class ChatTemplateMissing(ValueError):
    """The processor has no chat template, so the prompt cannot be rendered."""


@dataclass(frozen=True)
class Family:
    """How one model family differs from the default behaviour of :class:`ChatTemplateCodec`."""

    name: str
    #: ``config.model_type`` values this family covers.
    model_types: tuple[str, ...]
    #: Token text closing the assistant turn; None: the tokenizer's EOS token.
    end_of_turn: str | None = None
    #: Placeholder tokens (tokenizer attributes or literal token texts) never generated or scored.
    placeholder_tokens: tuple[str, ...] = ("image_token", "video_token")
    #: False where the template has no system role: the system prompt is prefixed to the question.
    system_role: bool = True
    #: Nest images one list per prompt when calling the processor (Gemma 3 takes a list per sample).
    nest_images: bool = False
    #: ``(model, prefill_inputs, prompt_len, n_new, repeats) -> dict`` of extra forward kwargs for a
    #: continuation of ``n_new`` tokens from a prefill's cache repeated ``repeats`` times per row.
    continuation_kwargs: Callable[..., dict] | None = None
    #: Image-processor backend to load (``pil`` / ``torchvision``); None: transformers' default
    #: (torchvision when installed). LLaVA-Med's pixels are the PIL ones.
    processor_backend: str | None = None
    #: Hub ids this family was written for (documentation).
    examples: tuple[str, ...] = ()


def _qwen_vl_continuation(model, inputs: dict, prompt_len: int, n_new: int, repeats: int) -> dict:
    """Qwen2-VL / Qwen2.5-VL: text positions after the prompt are ``t + rope_deltas`` on all three
    mrope axes; the model only derives them itself inside ``generate``, so a plain forward from a
    (repeated) cache gets them explicitly."""
    import torch

    inner = getattr(model, "model", model)
    deltas = getattr(inner, "rope_deltas", None)
    b = inputs["input_ids"].shape[0]
    device = inputs["input_ids"].device
    if deltas is None:
        deltas = torch.zeros((b, 1), dtype=torch.long, device=device)
    pos = torch.arange(prompt_len, prompt_len + n_new, device=device).view(1, 1, -1)
    pos = pos + deltas.to(device).view(1, -1, 1)                 # (1, b, n_new)
    pos = pos.repeat_interleave(repeats, dim=1).expand(3, -1, -1)  # (3, b * repeats, n_new)
    return {"position_ids": pos.contiguous()}


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family; every model type it lists resolves to it."""
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


DEFAULT_FAMILY = Family("default", ())

register_family(Family("gemma3", ("gemma3", "gemma3n", "paligemma"), end_of_turn="<end_of_turn>",
                       placeholder_tokens=("image_token", "boi_token", "eoi_token"), nest_images=True,
                       examples=("google/medgemma-4b-it", "google/gemma-3-4b-it")))
register_family(Family("qwen_vl", ("qwen2_vl", "qwen2_5_vl"), end_of_turn="<|im_end|>",
                       placeholder_tokens=("image_token", "video_token", "<|vision_start|>", "<|vision_end|>"),
                       continuation_kwargs=_qwen_vl_continuation,
                       examples=("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct")))
register_family(Family("llava_onevision", ("llava_onevision", "llava_next"), end_of_turn="<|im_end|>",
                       examples=("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")))
register_family(Family("idefics3", ("idefics3", "smolvlm"), end_of_turn="<end_of_utterance>",
                       placeholder_tokens=("image_token", "fake_image_token", "global_image_token"),
                       examples=("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3")))
register_family(Family("llava", ("llava",), processor_backend="pil",
                       examples=("a folder written by `derma llava convert`", "llava-hf/llava-1.5-7b-hf")))


def family_for(model_config) -> Family:
    """The :class:`Family` of a model config (by ``model_type``), else :data:`DEFAULT_FAMILY`."""
    return FAMILIES.get(getattr(model_config, "model_type", None), DEFAULT_FAMILY)


def require_chat_template(processor, where: str = "the model") -> str:
    """The processor's chat template, or one line saying what to pass when it has none."""
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None),
                                                                     "chat_template", None)
    if not template:
        raise ChatTemplateMissing(
            f"{where}: the processor has no chat template, so derma cannot render the prompt; pass one with "
            "`-o model.chat_template=FILE` (a Jinja file of the model's chat format)")
    return template


def _token_id(tokenizer, text_or_attr: str) -> int | None:
    text = getattr(tokenizer, text_or_attr, None) if not text_or_attr.startswith("<") else text_or_attr
    if not isinstance(text, str):
        return None
    tid = tokenizer.convert_tokens_to_ids(text)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return int(tid)


class ChatTemplateCodec:
    """A :class:`~derma_vlm.codec.PromptCodec` for any processor with a chat template."""

    def __init__(self, processor, model_config, system_prompt: str | None = None,
                 chat_template: str | None = None, where: str = "the model") -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if chat_template:
            processor.chat_template = chat_template
        self.template = require_chat_template(processor, where)
        self.family = family_for(model_config)
        self.system_prompt = system_prompt or None
        tok = self.tokenizer
        eot_text = self.family.end_of_turn or tok.eos_token
        eot = _token_id(tok, eot_text) if eot_text else None
        if eot is None:
            raise ValueError(f"{where}: the tokenizer has no end-of-turn token {eot_text!r} "
                             f"(family {self.family.name}); register a Family naming it")
        self.end_of_turn_text = eot_text
        self.end_of_turn_id = eot
        if tok.pad_token_id is None:  # left padding of batched prompts needs one (masked out anyway)
            tok.pad_token = tok.eos_token if tok.eos_token is not None else eot_text
        self.pad_token_id = int(tok.pad_token_id)
        ids = {_token_id(tok, t) for t in self.family.placeholder_tokens}
        ids |= {getattr(model_config, k, None) for k in ("image_token_id", "image_token_index", "video_token_id",
                                                          "video_token_index")}
        self.suppress_token_ids = tuple(sorted(int(i) for i in ids if isinstance(i, int) and i >= 0))
        self._answers: dict[str, list[int]] = {}

    # -- rendering --------------------------------------------------------------------------------
    def messages(self, question: str, answer: str | None = None) -> list[dict]:
        """The conversation: optional system turn, the image + question user turn, optional answer."""
        msgs: list[dict] = []
        text = question
        if self.system_prompt:
            if self.family.system_role:
                msgs.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
            else:
                text = f"{self.system_prompt}\n\n{question}"
        msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        if answer is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return msgs

    def render_prompt(self, question: str) -> str:
        """The prompt text up to and including the generation prompt (image placeholder unexpanded)."""
        return self.processor.apply_chat_template(self.messages(question), tokenize=False,
                                                  add_generation_prompt=True)

    def render_answer(self, question: str, answer: str) -> str:
        """The assistant's text as the template renders it after the generation prompt, up to and
        without the end-of-turn token. Templates whose answer turn does not extend the generation
        prompt (LLaVA-OneVision writes ``assistant \\n`` there but ``assistant\\n`` as the
        generation prompt) get the answer as is: that is what the model emits after the prompt."""
        prompt = self.render_prompt(question)
        full = self.processor.apply_chat_template(self.messages(question, answer), tokenize=False)
        if full.startswith(prompt):
            rest = full[len(prompt):]
            cut = rest.find(self.end_of_turn_text)
            if cut >= 0:
                return rest[:cut]
        return answer

    # -- PromptCodec --------------------------------------------------------------------------------
    def _images_arg(self, images: list):
        return [[im] for im in images] if self.family.nest_images else list(images)

    def prompt_inputs(self, images: list, questions: Sequence[str]) -> dict[str, Any]:
        if len(images) != len(questions):
            raise ValueError(f"{len(questions)} questions for {len(images)} images")
        texts = [self.render_prompt(q) for q in questions]
        rgb = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        # A template that renders BOS itself (Gemma, SmolVLM) must not get a second one from the
        # tokenizer; one that leaves it to the tokenizer (Mistral / LLaVA-Med) gets it there.
        bos = self.tokenizer.bos_token
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        out = self.processor(text=texts, images=self._images_arg(rgb), return_tensors="pt", padding=True,
                             add_special_tokens=add_special)
        return {k: v for k, v in dict(out).items() if v is not None}

    def answer_ids(self, answer: str, question: str = "?") -> list[int]:
        """The answer's ids as emitted after the generation prompt (tokenised in context, so a
        merge across the prompt boundary would be caught), end-of-turn not included."""
        if answer in self._answers:
            return list(self._answers[answer])
        tok = self.tokenizer
        prompt = self.render_prompt(question)
        text = self.render_answer(question, answer)
        head = tok(prompt, add_special_tokens=False)["input_ids"]
        whole = tok(prompt + text, add_special_tokens=False)["input_ids"]
        if whole[:len(head)] == head:
            ids = list(whole[len(head):])
        else:  # the answer merged into the prompt's last token: tokenise it on its own
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
        self._answers[answer] = ids
        return list(ids)

    def continuation_kwargs(self, model, inputs: dict, prompt_len: int, n_new: int, repeats: int) -> dict:
        """Extra forward kwargs for continuing from a prefill's cache (family-specific; usually none)."""
        fn = self.family.continuation_kwargs
        return fn(model, inputs, prompt_len, n_new, repeats) if fn is not None else {}

    def training_example(self, image, question: str, answer: str) -> tuple[dict, list[int]]:
        """``(prompt_inputs, target_ids)`` for one answer-only training example: the target is the
        assistant turn as rendered by the template, then the end-of-turn token."""
        return self.prompt_inputs([image], [question]), self.answer_ids(answer, question) + [self.end_of_turn_id]
