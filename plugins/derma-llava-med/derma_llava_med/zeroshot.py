"""The ``llava_zeroshot`` backend: LLaVA-Med asked the original study's question about each image.

``answer_mode: generate`` reproduces the study (greedy answer, parsed by ``parser: seed`` --
HAM10000 only -- or ``strict``); ``answer_mode: score`` ranks the dataset's class codes by
likelihood (``</s>`` after the code included by default, ``inference.include_eos``), which is
never invalid and gives probabilities. The question and the codes are the dataset's label
set's (on HAM10000 exactly the study's). The predict loop -- batching, progress, partial-result resume in
``<work_dir>/llava_partial_<split>.jsonl``, sharding over torchrun ranks, the ``model_vqa.py``
answer files -- is :class:`derma_vlm.classifier.VlmClassifier`'s; this backend supplies the
LLaVA-Med loader (:func:`derma_llava_med.loading.load_llava`) and its chunked prompt codec.
"""

from __future__ import annotations

from pathlib import Path

from derma_core import hookimpl
from derma_vlm.classifier import ANSWER_MODES, VlmClassifier  # noqa: F401  (ANSWER_MODES: public)

PLUGIN_NAME = "llava_zeroshot"


class LlavaClassifier(VlmClassifier):
    """LLaVA(-Med) as a K-way classifier through VQA. ``fit`` is a no-op (zero-shot)."""

    name = PLUGIN_NAME
    partial_prefix = "llava"

    def load_base(self, config: dict, device: str):
        from .loading import load_llava

        return load_llava(config, device)

    def resolved_values(self, config: dict, device: str) -> dict:
        from .loading import model_image_size, resolve_model_name

        name = resolve_model_name(config)
        values = {**super().resolved_values(config, device), "model.name": name}
        size = model_image_size(name)
        if size is not None:  # what the model sees (pad to square, resize), not the prepared data's side
            values["model.image_size"] = size
        return values


def _factory(config: dict) -> LlavaClassifier:
    return LlavaClassifier(config)


@hookimpl
def register_classifiers(register):
    config = Path(__file__).resolve().parents[3] / "configs" / "llava_zeroshot.yaml"
    register(PLUGIN_NAME, _factory, config=str(config) if config.exists() else None)


@hookimpl
def register_commands(cli):
    from .commands import llava_group

    cli.add_command(llava_group)
