"""VQA exports of a prepared folder, in the original study's formats.

``model_vqa`` (what LLaVA-Med's ``llava/eval/model_vqa.py`` reads): one JSON object a line,
``{"question_id", "image", "text", "answer", "answer_id", "template_id"}``.

``llava`` (LLaVA's training conversations): a JSON list of
``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n<prompt>"}, {"from": "gpt", "value": label}]}``.

``image`` is the file name relative to the prepared folder's ``images/``. Prompts come from the
prompt-builder registry (``derma_core.plugins.get_prompt_builder``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..labels import LABEL_TO_INDEX, LABELS
from .prepare import atomic_write_text
from .splits import SPLITS

TEMPLATE_ID = "lesion_7way_v1"
FORMATS = ("model_vqa", "llava")


def question_records(frame: pd.DataFrame, prompt: str) -> list[dict]:
    """model_vqa question objects for a split table (keys in the original study's order)."""
    return [{"question_id": str(i), "image": f"{i}.jpg", "text": prompt, "answer": str(label),
             "answer_id": LABEL_TO_INDEX[str(label)], "template_id": TEMPLATE_ID}
            for i, label in zip(frame["id"], frame["label"])]


def conversation_records(frame: pd.DataFrame, prompt: str) -> list[dict]:
    """LLaVA training conversations for a split table."""
    return [{"id": str(i), "image": f"{i}.jpg",
             "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": str(label)}]}
            for i, label in zip(frame["id"], frame["label"])]


def export_vqa(prepared: str | os.PathLike, prompt_name: str = "p1", split: str = "test", fmt: str = "model_vqa",
               out: str | os.PathLike | None = None) -> Path:
    """Write the ``fmt`` export of ``split`` (or ``all``) of a prepared folder; returns the file.
    Default file: ``PREPARED/vqa/{split}_{prompt}.jsonl`` (model_vqa) or ``llava_{split}_{prompt}.json``."""
    from ..plugins import get_prompt_builder

    prepared = Path(prepared)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    names = list(SPLITS) if split == "all" else [split]
    if any(s not in SPLITS for s in names):
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}, all")
    frames = []
    for s in names:
        path = prepared / "splits" / f"{s}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: --prepared must be a folder written by `derma prep`")
        frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
    frame = pd.concat(frames, ignore_index=True)
    unknown = sorted(set(frame["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"{prepared}: unknown labels {unknown}; re-run `derma prep`")
    prompt = get_prompt_builder(prompt_name)(LABELS)
    if fmt == "model_vqa":
        target = Path(out) if out else prepared / "vqa" / f"{split}_{prompt_name}.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in question_records(frame, prompt))
    else:
        target = Path(out) if out else prepared / "vqa" / f"llava_{split}_{prompt_name}.json"
        text = json.dumps(conversation_records(frame, prompt), indent=2) + "\n"
    atomic_write_text(target, text)
    return target
