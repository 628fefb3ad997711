"""Scoring an existing answer file: join it to its question file, parse the answers
(:func:`evaluate_answer_files`), against the dataset the questions were written from
(:func:`answers_dataset`), and the MLflow run ``derma eval-answers`` logs (:func:`log_answers_run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..labels import LabelSet
from .files import AnswerFileError, read_answers, read_questions
from .parsing import ParseReport, check_parser, parse_answers


@dataclass
class AnswerEvaluation:
    """An answer file scored: its split and predictions, the parse report, the questions left
    unanswered, the answers to no question, and each file's problems by line."""

    split: Any
    predictions: Any
    report: ParseReport
    missing: list[str]
    extra: list[str]
    problems: dict[str, list[tuple[int, str]]]


def evaluate_answer_files(questions: str | os.PathLike, answers: str | os.PathLike,
                          parser: str = "seed", *, label_set: LabelSet, encoding: str = "utf-8") -> AnswerEvaluation:
    """Join an answer file to its question file and parse the answers into ``label_set``'s codes.

    Questions without an answer become invalid predictions (listed in ``missing``); answers to
    unknown questions are ignored (listed in ``extra``); malformed lines are skipped and listed
    by line number in ``problems``; questions whose ``answer`` is not a class of ``label_set``
    are skipped and listed too. Each question's group is its ``group_id`` (or ``lesion_id``)
    field, else the question itself. Both files are read in ``encoding``."""
    import pandas as pd

    from ..interfaces import Predictions, Split

    check_parser(parser, label_set)
    q = read_questions(questions, encoding)
    a = read_answers(answers, encoding)
    problems = {"questions": q.problems, "answers": a.problems}
    classes = ", ".join(label_set.codes)
    labelled, unlabelled = [], []
    for row in q.rows:
        (labelled if row.get("answer") in label_set else unlabelled).append(row)
    for row in unlabelled:
        problems["questions"].append((0, f"question {row['question_id']!r} has no true label in 'answer' "
                                         f"(one of {classes}); skipped"))
    if not labelled:
        raise AnswerFileError(f"{questions}: no usable question line (each needs question_id, image, text "
                              f"and answer = one of {classes})")
    if not a.rows:  # scoring no answers at all would log a run with accuracy 0
        why = f"; first problem: line {a.problems[0][0]}: {a.problems[0][1]}" if a.problems else " (the file is empty)"
        raise AnswerFileError(f"{answers}: no usable answer line{why}; each line needs question_id and text "
                              "(model_vqa.py's output)")
    by_id = {row["question_id"]: row for row in a.rows}
    qids = [row["question_id"] for row in labelled]
    missing = [qid for qid in qids if qid not in by_id]
    qset = set(qids)
    extra = [row["question_id"] for row in a.rows if row["question_id"] not in qset]
    texts = [by_id[qid]["text"] if qid in by_id else None for qid in qids]
    report = parse_answers(texts, parser, label_set=label_set)
    labels = [None if qid not in by_id else lab for qid, lab in zip(qids, report.labels)]
    groups = [str(row.get("group_id", row.get("lesion_id", row["question_id"]))) for row in labelled]
    frame = pd.DataFrame({"id": qids, "label": [row["answer"] for row in labelled], "group_id": groups,
                          "image_path": [row["image"] for row in labelled]})
    split = Split("answers", frame, Path(questions).resolve().parent, label_set=label_set)
    info = report.as_info()
    info.update({"n_missing": len(missing), "n_extra": len(extra)})
    predictions = Predictions(ids=qids, labels=labels, raw_text=[t if t is not None else "" for t in texts],
                              info=info, label_set=label_set)
    return AnswerEvaluation(split, predictions, report, missing, extra, problems)


def answers_dataset(prepared: str | os.PathLike | None = None):
    """The dataset an answer file is scored against: the prepared folder's (its manifest's label
    set, grouping and subgroup columns), or HAM10000's -- the original study's model_vqa files."""
    if prepared is None:
        from ..data.datasets.ham10000 import DESCRIPTOR

        return DESCRIPTOR, None
    from ..data.prepare import load_prepared

    try:
        dataset = load_prepared(Path(prepared).expanduser())
    except (FileNotFoundError, ValueError) as exc:
        raise AnswerFileError(f"--prepared: {exc}") from None
    return dataset.descriptor, dataset

def log_answers_run(ev, join, metrics, results, descriptor, questions, answers, parser, experiment, run_name,
                     tracking_uri, prepared, metadata) -> str:
    """The eval-answers MLflow run: the inputs, the parse report and the evaluation; its id."""
    from .. import runner, tracking

    label_set = ev.split.label_set
    tags = {tracking.TAG_KIND: "eval-answers", tracking.TAG_VERSION: None, tracking.TAG_DATASET: descriptor.name,
            tracking.TAG_LABEL_SET: ",".join(label_set.codes)}
    with tracking.start_run(experiment, run_name=run_name or Path(answers).name, tags=tags,
                            uri=tracking_uri) as tracker:
        tracker.log_params({"parser": parser, "questions": str(Path(questions).resolve()),
                            "answers": str(Path(answers).resolve())})
        tracker.log_dict(label_set.to_dict(), runner.LABEL_SET_ARTIFACT)
        if prepared:
            tracker.log_params({"prepared": str(Path(prepared).resolve())})
        if metadata:
            tracker.log_params({"metadata": str(Path(metadata).resolve())})
        if join is not None:
            tracker.log_metrics({"n_metadata_missing": len(join.missing)})
        tracker.log_dict({**ev.predictions.info, **(join.as_info() if join else {}),
                          "missing": ev.missing, "extra": ev.extra,
                          "problems": {k: [list(p) for p in v] for k, v in ev.problems.items()}},
                         "answers_report.json")
        tracker.log_metrics({"n_invalid": ev.report.n_invalid, "n_missing": len(ev.missing),
                             "n_extra": len(ev.extra),
                             **{f"parse_{k}": v for k, v in ev.predictions.info["failures"].items()}})
        runner.log_evaluation(tracker, ev.split, ev.predictions, metrics, results, "test")
        return tracker.run_id
