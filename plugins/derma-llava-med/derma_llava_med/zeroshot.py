"""The ``llava_zeroshot`` backend: LLaVA-Med asked the original study's question about each image.

``answer_mode: generate`` reproduces the study (greedy answer, parsed by ``parser: seed`` or
``strict``); ``answer_mode: score`` ranks the seven label strings by likelihood, which is never
invalid and gives probabilities. Inference is batched, shows a progress bar and streams its
results to ``<work_dir>/llava_partial_<split>.jsonl`` so an interrupted run resumes where it
stopped; answers are also written in LLaVA-Med's ``model_vqa.py`` answer format (with the
matching question file) and logged with the run.

:class:`LlavaClassifier` is reused by ``llava_lora``: override :meth:`LlavaClassifier._load`
to supply a model with an adapter; ``predict`` is otherwise the same, so zero-shot and
fine-tuned numbers are comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from derma_core import hookimpl
from derma_core.config import get_dotted as _get
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LABELS

ANSWER_MODES = ("generate", "score")
PLUGIN_NAME = "llava_zeroshot"


class PartialResults:
    """Append-only JSONL of finished rows, keyed by a signature of the settings that produced them.

    Each line is flushed and fsynced after every batch; a truncated last line (a kill mid-write)
    is ignored on reading, and rows from different settings are never mixed in.
    """

    def __init__(self, path: Path, signature: dict) -> None:
        self.path = Path(path)
        self.signature = hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.rows: dict[str, dict] = {}

    def load(self) -> dict[str, dict]:
        self.rows = {}
        if not self.path.exists():
            return self.rows
        with self.path.open(encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        if not lines:
            return self.rows
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("signature") != self.signature:
            return self.rows  # other settings: start over (the file is rewritten on first append)
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.rows[str(row["id"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return self.rows

    def start(self) -> None:
        """Rewrite the file with the header and the rows kept (drops any torn line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"signature": self.signature}) + "\n")
            for row in self.rows.values():
                fh.write(json.dumps(row) + "\n")
        os.replace(tmp, self.path)

    def append(self, rows: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
                self.rows[str(row["id"])] = row
            fh.flush()
            os.fsync(fh.fileno())


class LlavaClassifier:
    """LLaVA(-Med) as a 7-way classifier through VQA. ``fit`` is a no-op (zero-shot)."""

    name = PLUGIN_NAME

    def __init__(self, config: dict) -> None:
        self.config = config
        mode = config.get("answer_mode", "generate")
        if mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
        self.loaded = None

    # -- model acquisition (override in subclasses, e.g. to add a LoRA adapter) ----------------
    def _load(self, ctx: RunContext):
        """The :class:`~derma_llava_med.loading.Loaded` model used by predict (loaded once)."""
        if self.loaded is None:
            from .loading import load_llava

            self.loaded = load_llava(self.config, ctx.device)
        return self.loaded

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        """Zero-shot: nothing to train."""

    def question(self) -> str:
        from .prompting import build_question

        return build_question(self.config)

    def _signature(self, loaded, split: Split, question: str) -> dict:
        keys = ("answer_mode", "prompt", "model.name", "precision", "quantization", "inference.max_new_tokens",
                "inference.length_normalize", "inference.include_eos")
        return {"split": split.name, "question": question, "model_id": loaded.model_id,
                "folder": str(loaded.folder), **{k: _get(self.config, k) for k in keys},
                "extra": self._signature_extra()}

    def _signature_extra(self) -> Any:
        """Anything else that changes the answers (an adapter's checksum, for subclasses)."""
        return None

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        loaded = self._load(ctx)
        mode = self.config.get("answer_mode", "generate")
        question = self.question()
        batch_size = int(_get(self.config, "inference.batch_size", 8))
        partial = PartialResults(Path(ctx.work_dir) / f"llava_partial_{split.name}.jsonl",
                                 self._signature(loaded, split, question))
        done = partial.load()
        partial.start()
        ids = split.ids
        todo = [i for i, qid in enumerate(ids) if qid not in done]
        started = time.perf_counter()
        bar = ctx.progress(total=len(ids), desc=f"{self.name} {mode} {split.name}")
        bar.update(len(ids) - len(todo))
        try:
            for start in range(0, len(todo), batch_size):
                rows_idx = todo[start:start + batch_size]
                images = [split.load_image(i) for i in rows_idx]
                if mode == "score":
                    rows = self._score_batch(loaded, images, question, [ids[i] for i in rows_idx])
                else:
                    rows = self._generate_batch(loaded, images, question, [ids[i] for i in rows_idx])
                partial.append(rows)
                bar.update(len(rows))
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        rows = [partial.rows[qid] for qid in ids]
        predictions = self._to_predictions(ids, rows, mode, question, loaded)
        predictions.info.update({"seconds": seconds, "images_computed": len(todo), "images_resumed":
                                 len(ids) - len(todo),
                                 "images_per_second": (len(todo) / seconds) if todo and seconds > 0 else None})
        if todo and seconds > 0:
            ctx.log_metrics({f"{split.name}_images_per_second": len(todo) / seconds})
        self._write_vqa_files(split, predictions, question, loaded, ctx)
        return predictions

    def _generate_batch(self, loaded, images: list, question: str, qids: list[str]) -> list[dict]:
        texts = generate_answers(loaded, images, question,
                                 max_new_tokens=int(_get(self.config, "inference.max_new_tokens", 64)))
        return [{"id": q, "text": t} for q, t in zip(qids, texts)]

    def _score_batch(self, loaded, images: list, question: str, qids: list[str]) -> list[dict]:
        from .scoring import score_labels

        scores = score_labels(loaded, images, question, LABELS,
                              length_normalize=bool(_get(self.config, "inference.length_normalize", False)),
                              include_eos=bool(_get(self.config, "inference.include_eos", False)),
                              batch_size=len(images))
        return [{"id": q, "scores": [float(x) for x in s]} for q, s in zip(qids, scores)]

    def _to_predictions(self, ids: list[str], rows: list[dict], mode: str, question: str, loaded) -> Predictions:
        info: dict[str, Any] = {"answer_mode": mode, "prompt": self.config.get("prompt"), "question": question,
                                "model_id": loaded.model_id}
        if mode == "score":
            from .scoring import softmax

            scores = np.array([r["scores"] for r in rows], dtype=np.float64).reshape(len(rows), len(LABELS))
            probs = softmax(scores)
            labels = [LABELS[int(k)] for k in probs.argmax(axis=1)]
            info.update({"n_invalid": 0, "length_normalize": bool(_get(self.config, "inference.length_normalize"))})
            return Predictions(ids=ids, labels=labels, probabilities=probs, raw_text=labels, info=info)
        from derma_core.answers import parse_answers

        texts = [r["text"] for r in rows]
        report = parse_answers(texts, self.config.get("parser", "seed"))
        info.update(report.as_info())
        return Predictions(ids=ids, labels=report.labels, raw_text=texts, info=info)

    def _write_vqa_files(self, split: Split, predictions: Predictions, question: str, loaded,
                         ctx: RunContext) -> None:
        """The answers (and the matching questions) in LLaVA-Med's ``model_vqa.py`` formats."""
        from derma_core.answers import answer_row, question_row, write_answers, write_questions

        frame = split.frame
        texts = predictions.raw_text or [label or "" for label in predictions.labels]
        q_path = write_questions(Path(ctx.work_dir) / f"questions_{split.name}.jsonl", (
            question_row(str(qid), Path(str(path)).name, question, str(label))
            for qid, path, label in zip(frame["id"], frame["image_path"], frame["label"])))
        meta = {"answer_mode": predictions.info.get("answer_mode")}
        a_path = write_answers(Path(ctx.work_dir) / f"answers_{split.name}.jsonl", (
            answer_row(qid, question, text, loaded.model_id, meta) for qid, text in zip(predictions.ids, texts)))
        if ctx.is_main_process:
            ctx.tracker.log_artifact(q_path, "vqa")
            ctx.tracker.log_artifact(a_path, "vqa")


def generate_answers(loaded, images: list, question: str | list[str], max_new_tokens: int = 64,
                     stop_at_eos: bool = True) -> list[str]:
    """Greedy answers for a batch of images: one question for all, or one per image (prompts of
    different lengths are left-padded). ``<image>`` is never generated. ``stop_at_eos=False``
    always generates ``max_new_tokens`` tokens (the benchmark's model of the original loop)."""
    import torch

    from .loading import pixel_values
    from .prompting import encode_prompt

    tok = loaded.tokenizer
    questions = [question] * len(images) if isinstance(question, str) else list(question)
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions for {len(images)} images")
    prompts = [encode_prompt(tok, q, loaded.image_token_id, loaded.n_image_tokens) for q in questions]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long,
                       device=loaded.input_device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long,
                        device=loaded.input_device)
    kwargs: dict[str, Any] = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                  suppress_tokens=[loaded.image_token_id], temperature=None, top_p=None, top_k=None)
    if stop_at_eos:
        kwargs["eos_token_id"] = tok.eos_token_id
    else:
        kwargs["eos_token_id"] = None
        kwargs["min_new_tokens"] = max_new_tokens
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values(loaded, images),
                                    **kwargs)
    new = out[:, ids.shape[1]:]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


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
