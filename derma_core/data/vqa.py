"""VQA exports of a prepared folder, in the original study's formats.

``model_vqa`` (what LLaVA-Med's ``llava/eval/model_vqa.py`` reads): one JSON object a line,
``{"question_id", "image", "text", "answer", "answer_id", "template_id"}``.

``llava`` (LLaVA's training conversations): a JSON list of
``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n<prompt>"}, {"from": "gpt", "value": label}]}``.

``image`` is the file name relative to the prepared folder's ``images/``. Prompts come from the
prompt-builder registry (``derma_core.plugins.get_prompt_builder``), built for the prepared
folder's label set (its manifest's); ``answer`` is a class code, ``answer_id`` its index in that
label set and ``template_id`` ``lesion_<K>way_v1`` for K classes (the study's ``lesion_7way_v1``
on HAM10000, whose files are byte for byte the study's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..answers.files import question_row, template_id
from ..labels import LabelSet
from .datasets.ham10000 import LABEL_SET as HAM10000
from ..atomic import write_text as atomic_write_text
from .splits import SPLITS

#: The study's template id, HAM10000's (``template_id(label_set)`` gives any dataset's).
TEMPLATE_ID = template_id(HAM10000)
FORMATS = ("model_vqa", "llava")


def question_records(frame: pd.DataFrame, prompt: str, label_set: LabelSet) -> list[dict]:
    """model_vqa question objects for a split table (keys in the original study's order), each
    built by :func:`derma_core.answers.files.question_row`, the one builder of a question line."""
    return [question_row(str(i), f"{i}.jpg", prompt, str(label), label_set=label_set)
            for i, label in zip(frame["id"], frame["label"])]


def conversation_records(frame: pd.DataFrame, prompt: str) -> list[dict]:
    """LLaVA training conversations for a split table (the answer is the class code, as the
    LoRA backends train)."""
    return [{"id": str(i), "image": f"{i}.jpg",
             "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": str(label)}]}
            for i, label in zip(frame["id"], frame["label"])]


def export_vqa(prepared: str | os.PathLike, prompt_name: str = "p1", split: str = "test", fmt: str = "model_vqa",
               out: str | os.PathLike | None = None) -> Path:
    """Write the ``fmt`` export of ``split`` (or ``all``) of a prepared folder; returns the file.
    The prompt and the answers are the folder's label set's (its manifest's).
    Default file: ``PREPARED/vqa/{split}_{prompt}.jsonl`` (model_vqa) or ``llava_{split}_{prompt}.json``."""
    from ..plugins import get_prompt_builder
    from .prepare import load_prepared

    prepared = Path(prepared)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    names = list(SPLITS) if split == "all" else [split]
    if any(s not in SPLITS for s in names):
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}, all")
    builder = get_prompt_builder(prompt_name)  # an unknown prompt is refused before the data is read
    dataset = load_prepared(prepared)
    frame = pd.concat([dataset[s].frame for s in names], ignore_index=True)
    prompt = builder(dataset.label_set)
    if fmt == "model_vqa":
        target = Path(out) if out else prepared / "vqa" / f"{split}_{prompt_name}.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in question_records(frame, prompt, dataset.label_set))
    else:
        target = Path(out) if out else prepared / "vqa" / f"llava_{split}_{prompt_name}.json"
        text = json.dumps(conversation_records(frame, prompt), indent=2) + "\n"
    atomic_write_text(target, text)
    return target
