"""LLaVA-Med v1.5's ``mistral_instruct`` template and its exact tokenisation.

The original code (``llava/mm_utils.py: tokenizer_image_token``) splits the rendered prompt
at ``<image>``, tokenises each piece on its own (SentencePiece adds its dummy-prefix ``▁`` to
both) and joins them around the image placeholder. The result,
``[1, 733, 16289, 28793, 28705, <image>, 28705, 13, ...]``, has a ``▁`` (28705) on both sides
of the image; tokenising the whole prompt with ``<image>`` as a special token loses the second
one and shifts every logit. :func:`encode_prompt` reproduces the chunked form, with the single
placeholder repeated once per image patch as the native transformers model expects.
"""

from __future__ import annotations

from typing import Sequence

from derma_vlm.codec import IGNORE_INDEX, left_pad

IMAGE_TOKEN = "<image>"

#: The chat template saved with a converted folder and with the tiny-random folder, faithful for
#: plain transformers users (vLLM, lmms-eval, vlm_zeroshot): ``[INST] <image> \n{question} [/INST]``. The space after ``<image>``
#: makes the whole rendered prompt tokenise (BOS added by the tokenizer, as LLaVA-Med's own code
#: does; a BOS rendered by the template would lose the ``▁`` of ``▁[INST]``) to exactly
#: LLaVA-Med's chunked ids ``1, 733, 16289, 28793, 28705, <image>, 28705, 13 ...``; without the
#: space the ``▁`` after the image is lost. An assistant turn appends
#: `` {answer}</s>``. (The pixels: transformers 5 picks the image processor's backend at load time,
#: torchvision whenever it is installed, and no saved file can choose it, so the PIL pixels of
#: LLaVA-Med need ``AutoProcessor.from_pretrained(folder, backend="pil")``; derma passes it.)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image> \n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ ' ' + part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


def render_prompt(question: str) -> str:
    """The inference prompt: ``[INST] <image>\\n{question} [/INST]`` (BOS comes from the tokenizer)."""
    return f"[INST] {IMAGE_TOKEN}\n{question} [/INST]"


def render_training_turn(question: str, answer: str) -> str:
    """A training turn: ``[INST] <image>\\n{question} [/INST] {answer}</s>``."""
    return f"{render_prompt(question)} {answer}</s>"


def _ids(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_prompt(tokenizer, question: str, image_token_id: int, n_image_tokens: int) -> list[int]:
    """Token ids of the inference prompt, tokenised in chunks as LLaVA-Med does, with
    ``n_image_tokens`` copies of ``image_token_id`` where ``<image>`` stands."""
    if IMAGE_TOKEN in question:
        raise ValueError(f"the question must not contain {IMAGE_TOKEN!r} itself: the template places the image")
    before, after = render_prompt(question).split(IMAGE_TOKEN)
    head = _ids(tokenizer, before)
    tail = _ids(tokenizer, after)
    bos = tokenizer.bos_token_id
    if bos is not None and tail and tail[0] == bos:  # only the first chunk keeps its BOS
        tail = tail[1:]
    return head + [image_token_id] * n_image_tokens + tail


def encode_answer(tokenizer, answer: str, add_eos: bool = False) -> list[int]:
    """Token ids of an answer as it follows ``[/INST]`` (SentencePiece's ``▁`` prefix included)."""
    ids = _ids(tokenizer, answer, add_special_tokens=False)
    if add_eos:
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_training_example(tokenizer, question: str, answer: str, image_token_id: int,
                            n_image_tokens: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for ``[INST] <image>\\n{q} [/INST] {answer}</s>``: only the answer
    tokens and EOS carry loss (labels are -100 everywhere else)."""
    prompt = encode_prompt(tokenizer, question, image_token_id, n_image_tokens)
    target = encode_answer(tokenizer, answer, add_eos=True)
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def n_image_tokens_for(model_config) -> int:
    """Image placeholder tokens per image for a LlavaConfig (576 for CLIP ViT-L/14 at 336 px)."""
    vision = model_config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + (1 if model_config.vision_feature_select_strategy == "full" else 0)


class LlavaCodec:
    """LLaVA-Med's :class:`derma_vlm.codec.PromptCodec`: the chunked ``mistral_instruct`` prompt,
    the answer after ``[/INST]``, ``</s>`` as end of turn, ``<image>`` never emitted, pixels from
    the PIL-backend image processor (pad to square with the mean colour)."""

    def __init__(self, tokenizer, image_processor, image_token_id: int, n_image_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.n_image_tokens = int(n_image_tokens)
        self.end_of_turn_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.suppress_token_ids = (self.image_token_id,)
        self._prompts: dict[str, list[int]] = {}

    def prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompts:
            self._prompts[question] = encode_prompt(self.tokenizer, question, self.image_token_id,
                                                    self.n_image_tokens)
        return self._prompts[question]

    def prompt_inputs(self, images: list, questions: Sequence[str]) -> dict:
        if len(images) != len(questions):
            raise ValueError(f"{len(questions)} questions for {len(images)} images")
        input_ids, attention_mask = left_pad([self.prompt_ids(q) for q in questions], self.pad_token_id)
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}

    def answer_ids(self, answer: str) -> list[int]:
        return encode_answer(self.tokenizer, answer)
