""":class:`VlmClassifier`: a vision-language model as a K-way classifier through VQA.

Everything class-dependent comes from the split's label set: the question (the prompt builder
gets it), the answers scored (each class's code; a backend may score other strings per class,
:meth:`VlmClassifier.answer_strings`) and the parser's classes. ``answer_mode: generate`` asks
the question and parses the greedy answer (``parser: seed``, HAM10000 only, or ``strict``);
``answer_mode: score`` ranks the classes' answer strings by likelihood
(:mod:`derma_vlm.scoring`), which is never invalid and gives probabilities. Prediction is
batched, shows a progress bar and streams its rows to ``<work_dir>/<prefix>_partial_<split>.jsonl``
so an interrupted run resumes where it stopped. Under torchrun each rank predicts its own shard
into its own partial file (``..._<split>.rank<R>of<W>.jsonl``) and rank 0 gathers the rows,
returns the full predictions and writes the answers once, in LLaVA-Med's ``model_vqa.py``
answer format (with the matching question file).

A backend subclasses it and implements :meth:`VlmClassifier.load_base` (returning a
:class:`~derma_vlm.loading.Loaded`); a LoRA backend overrides it to put an adapter on the base.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from derma_core.config import get_dotted as _get
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LabelSet

from .distributed import gather_dicts, shard
from .partial import PartialResults

ANSWER_MODES = ("generate", "score")


def build_question(config: dict, label_set: LabelSet) -> str:
    """The question text for the config's ``prompt`` and the dataset's label set (through the
    prompt-builder registry; a prompt the label set cannot have is refused in one line)."""
    from derma_core import plugins

    builder = plugins.get_prompt_builder(config.get("prompt") or "p1")
    return builder(label_set)


class VlmClassifier:
    """A VLM as a classifier. ``fit`` is a no-op (zero-shot); subclasses supply ``load_model``."""

    name = "vlm"
    #: zero-shot: nothing is selected on val, so calibration may use all of it
    selects_on_val = False
    #: File-name prefix of the partial-result files in the work dir.
    partial_prefix = "vlm"
    #: Config keys whose values change the answers (the partial results' signature).
    signature_keys = ("answer_mode", "prompt", "model.name", "precision", "quantization",
                      "inference.max_new_tokens", "inference.length_normalize", "inference.include_eos")

    def __init__(self, config: dict) -> None:
        self.config = config
        mode = config.get("answer_mode", "generate")
        if mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
        self.loaded = None

    # -- model acquisition ------------------------------------------------------------------------
    def load_base(self, config: dict, device: str):
        """The :class:`~derma_vlm.loading.Loaded` model ``config`` names, on ``device`` (the family's loader)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_base(config, device)")

    def _load(self, ctx: RunContext):
        """The model used by predict (loaded once; a LoRA backend adds its adapter)."""
        if self.loaded is None:
            self.loaded = self.load_base(self.config, ctx.device)
        return self.loaded

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        """Zero-shot: nothing to train (the label set is checked all the same)."""
        self.check_label_set(train.label_set)

    def question(self, label_set: LabelSet) -> str:
        return build_question(self.config, label_set)

    def answer_strings(self, label_set: LabelSet) -> list[list[str]]:
        """Per class (in ``label_set`` order) the answer strings score mode scores for it: its code
        (what the LoRA backends train the model to answer)."""
        return [[code] for code in label_set.codes]

    def check_label_set(self, label_set: LabelSet) -> None:
        """One line, before any model loads, when this config cannot run on ``label_set``: a prompt
        worded for another dataset, or the seed parser (HAM10000's) in generate mode."""
        self.question(label_set)
        if self.config.get("answer_mode", "generate") == "generate":
            from derma_core.answers import check_parser

            check_parser(self.config.get("parser", "seed"), label_set)

    def _signature(self, loaded, split: Split, question: str) -> dict:
        return {"split": split.name, "question": question, "labels": self.answer_strings(split.label_set),
                "model_id": loaded.model_id,
                "folder": str(loaded.folder), **{k: _get(self.config, k) for k in self.signature_keys},
                "extra": self._signature_extra()}

    def _signature_extra(self) -> Any:
        """Anything else that changes the answers (an adapter's checksum, for subclasses)."""
        return None

    def _partial_path(self, ctx: RunContext, split: Split) -> Path:
        stem = f"{self.partial_prefix}_partial_{split.name}"
        if ctx.world_size > 1:
            stem += f".rank{ctx.rank}of{ctx.world_size}"
        return Path(ctx.work_dir) / f"{stem}.jsonl"

    # -- prediction -------------------------------------------------------------------------------
    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict[str, Any]:
        """The runner's hook (/tmp/coord/resolved.md, ``derma_core.runner.resolve_run_config``):
        what this run's ``auto`` values resolve to -- ``model.name`` and ``precision`` -- from the
        same functions loading uses, so the curated MLflow params show what runs."""
        self.check_label_set(dataset.label_set)
        return self.resolved_values(config, ctx.device)

    def resolved_values(self, config: dict, device: str) -> dict[str, Any]:
        """Dotted key -> resolved value; a family adds its model name (``model.name: auto``)."""
        from .precision import dtype_name, resolve_dtype

        return {"precision": dtype_name(resolve_dtype(_get(config, "precision", "auto") or "auto", device))}

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        label_set = split.label_set
        self.check_label_set(label_set)
        loaded = self._load(ctx)
        mode = self.config.get("answer_mode", "generate")
        question = self.question(label_set)
        batch_size = int(_get(self.config, "inference.batch_size", 8))
        partial = PartialResults(self._partial_path(ctx, split), self._signature(loaded, split, question))
        done = partial.load()
        partial.start()
        ids = split.ids
        mine = shard(list(range(len(ids))), ctx.rank, ctx.world_size)
        todo = [i for i in mine if ids[i] not in done]
        started = time.perf_counter()
        bar = ctx.progress(total=len(mine), desc=f"{self.name} {mode} {split.name}")
        bar.update(len(mine) - len(todo))
        try:
            for start in range(0, len(todo), batch_size):
                rows_idx = todo[start:start + batch_size]
                images = [split.load_image(i) for i in rows_idx]
                qids = [ids[i] for i in rows_idx]
                rows = (self._score_batch(loaded, images, question, qids, label_set) if mode == "score"
                        else self._generate_batch(loaded, images, question, qids))
                partial.append(rows)
                bar.update(len(rows))
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        computed = {"n": len(todo), "seconds": seconds}
        mine_rows = {ids[i]: partial.rows[ids[i]] for i in mine}
        all_rows = gather_dicts(mine_rows, ctx.world_size)
        per_rank = gather_dicts({str(ctx.rank): computed}, ctx.world_size)
        if not ctx.is_main_process:
            # The runner evaluates rank 0's predictions only; this rank's shard is returned as is.
            return self._to_predictions([ids[i] for i in mine], [mine_rows[ids[i]] for i in mine], mode, question,
                                        loaded, label_set)
        rows = [all_rows[qid] for qid in ids]
        predictions = self._to_predictions(ids, rows, mode, question, loaded, label_set)
        n_computed = sum(p["n"] for p in per_rank.values())
        wall = max(p["seconds"] for p in per_rank.values())
        predictions.info.update({"seconds": wall, "images_computed": n_computed,
                                 "images_resumed": len(ids) - n_computed, "world_size": ctx.world_size,
                                 "images_per_second": (n_computed / wall) if n_computed and wall > 0 else None})
        if n_computed and wall > 0:
            ctx.log_metrics({f"{split.name}_images_per_second": n_computed / wall})
        self._write_vqa_files(split, predictions, question, loaded, ctx)
        return predictions

    def _generate_batch(self, loaded, images: list, question: str, qids: list[str]) -> list[dict]:
        from .generation import generate_answers

        texts = generate_answers(loaded, images, question,
                                 max_new_tokens=int(_get(self.config, "inference.max_new_tokens", 64)))
        return [{"id": q, "text": t} for q, t in zip(qids, texts)]

    def _score_batch(self, loaded, images: list, question: str, qids: list[str], label_set: LabelSet) -> list[dict]:
        from .scoring import score_classes

        scores = score_classes(loaded, images, question, self.answer_strings(label_set),
                               length_normalize=bool(_get(self.config, "inference.length_normalize", False)),
                               include_eos=bool(_get(self.config, "inference.include_eos", True)),
                               batch_size=len(images))
        return [{"id": q, "scores": [float(x) for x in s]} for q, s in zip(qids, scores)]

    def _to_predictions(self, ids: list[str], rows: list[dict], mode: str, question: str, loaded,
                        label_set: LabelSet) -> Predictions:
        info: dict[str, Any] = {"answer_mode": mode, "prompt": self.config.get("prompt"), "question": question,
                                "model_id": loaded.model_id}
        if mode == "score":
            from derma_core.evaluation.probabilities import softmax

            scores = np.array([r["scores"] for r in rows], dtype=np.float64).reshape(len(rows), len(label_set))
            probs = softmax(scores)
            labels = [label_set.codes[int(k)] for k in probs.argmax(axis=1)]
            info.update({"n_invalid": 0, "length_normalize": bool(_get(self.config, "inference.length_normalize")),
                         "include_eos": bool(_get(self.config, "inference.include_eos", True))})
            return Predictions(ids=ids, labels=labels, probabilities=probs, raw_text=labels, info=info,
                               label_set=label_set)
        from derma_core.answers import parse_answers

        texts = [r["text"] for r in rows]
        report = parse_answers(texts, self.config.get("parser", "seed"), label_set=label_set)
        info.update(report.as_info())
        return Predictions(ids=ids, labels=report.labels, raw_text=texts, info=info, label_set=label_set)

    def _write_vqa_files(self, split: Split, predictions: Predictions, question: str, loaded,
                         ctx: RunContext) -> None:
        """The answers (and the matching questions) in LLaVA-Med's ``model_vqa.py`` formats (rank 0 only)."""
        if not ctx.is_main_process:
            return
        from derma_core.answers import answer_row, question_row, write_answers, write_questions

        frame = split.frame
        texts = predictions.raw_text or [label or "" for label in predictions.labels]
        q_path = write_questions(Path(ctx.work_dir) / f"questions_{split.name}.jsonl", (
            question_row(str(qid), Path(str(path)).name, question, str(label), label_set=split.label_set)
            for qid, path, label in zip(frame["id"], frame["image_path"], frame["label"])))
        meta = {"answer_mode": predictions.info.get("answer_mode")}
        a_path = write_answers(Path(ctx.work_dir) / f"answers_{split.name}.jsonl", (
            answer_row(qid, question, text, loaded.model_id, meta) for qid, text in zip(predictions.ids, texts)))
        ctx.tracker.log_artifact(q_path, "vqa")
        ctx.tracker.log_artifact(a_path, "vqa")
