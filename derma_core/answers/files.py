"""LLaVA-Med's ``llava/eval/model_vqa.py`` files: the question file it reads and the answer file
it writes, one JSON object a line.

Readers report malformed lines by number (and refuse a question id given twice with different
content) instead of crashing; writers are atomic. :func:`question_row` is the one builder of a
question line (``derma vqa`` and the VLM backends both write through it).
"""

from __future__ import annotations

import json
import os
import secrets
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..labels import LabelSet
from ..textio import TextEncodingError, open_text


class AnswerFileError(ValueError):
    """A question or answer file cannot be used at all (missing, or no valid line)."""


@dataclass
class JsonlRead:
    """Rows of a JSONL file plus the problems found: ``(line_number, message)``."""

    rows: list[dict]
    problems: list[tuple[int, str]] = field(default_factory=list)


def _read_jsonl(path: str | os.PathLike, required: dict[str, type | tuple], encoding: str = "utf-8") -> JsonlRead:
    path = Path(path)
    if not path.exists():
        raise AnswerFileError(f"{path} does not exist")
    rows: list[dict] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, tuple[int, dict]] = {}
    try:  # a byte the encoding cannot decode: one line naming the line and offset, and --encoding
        stream = open_text(path, encoding)
    except TextEncodingError as exc:
        raise AnswerFileError(str(exc)) from None
    with stream as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append((n, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                problems.append((n, "not a JSON object"))
                continue
            bad = [f"{k} (expected {getattr(t, '__name__', 'str or int')})" for k, t in required.items()
                   if not isinstance(obj.get(k), t)]
            if bad:
                problems.append((n, f"missing or wrong field(s): {', '.join(bad)}"))
                continue
            qid = str(obj["question_id"])
            if qid in seen:
                first_line, first = seen[qid]
                differs = [k for k in ("text", "answer", "image") if first.get(k) != obj.get(k)]
                if differs:  # which one is right is the user's call, not derma's: stop
                    raise AnswerFileError(
                        f"{path} line {n}: question_id {qid!r} again, with a different {' and '.join(differs)} "
                        f"than line {first_line}; keep one line per question and run again")
                problems.append((n, f"duplicate question_id {qid!r}, identical to line {first_line} (first kept)"))
                continue
            seen[qid] = (n, obj)
            obj["question_id"] = qid
            rows.append(obj)
    return JsonlRead(rows, problems)


def read_questions(path: str | os.PathLike, encoding: str = "utf-8") -> JsonlRead:
    """A ``model_vqa.py`` question file: question_id, image, text (and answer, the true label),
    in ``encoding`` (``--encoding``; UTF-8 by default)."""
    return _read_jsonl(path, {"question_id": (str, int), "image": str, "text": str}, encoding)


def read_answers(path: str | os.PathLike, encoding: str = "utf-8") -> JsonlRead:
    """A ``model_vqa.py`` answer file: question_id, prompt, text, answer_id, model_id, metadata,
    in ``encoding`` (``--encoding``; UTF-8 by default)."""
    return _read_jsonl(path, {"question_id": (str, int), "text": str}, encoding)


def _write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def template_id(label_set: LabelSet) -> str:
    """The ``template_id`` of a question file: ``lesion_<K>way_v1`` (the study's
    ``lesion_7way_v1`` on HAM10000)."""
    return f"lesion_{len(label_set)}way_v1"


def question_row(qid: str, image: str, prompt: str, answer: str | None = None, *, label_set: LabelSet) -> dict:
    """One line of a ``model_vqa.py`` question file (keys in the original study's order); with
    ``answer`` (a class code of ``label_set``) its ``answer_id`` is the class index."""
    row: dict[str, Any] = {"question_id": qid, "image": image, "text": prompt}
    if answer is not None:
        row["answer"] = answer
        row["answer_id"] = label_set.index(answer)
    row["template_id"] = template_id(label_set)
    return row


_ALPHABET = string.ascii_letters + string.digits


def answer_row(qid: str, prompt: str, text: str, model_id: str, metadata: dict | None = None) -> dict:
    """One line of a ``model_vqa.py`` answer file (answer_id a random 22-char id like shortuuid's)."""
    return {"question_id": qid, "prompt": prompt, "text": text,
            "answer_id": "".join(secrets.choice(_ALPHABET) for _ in range(22)),
            "model_id": model_id, "metadata": metadata or {}}


def write_questions(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write a question file atomically."""
    return _write_jsonl(path, rows)


def write_answers(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write an answer file atomically."""
    return _write_jsonl(path, rows)
