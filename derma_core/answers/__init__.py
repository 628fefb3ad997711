"""VQA answers: parsing a VLM's free-text answers, LLaVA-Med's ``model_vqa.py`` files, and
scoring existing answer files.

* :mod:`.parsing` — the original study's ``seed`` parser and the ``strict`` parser
  (:func:`parse_answers`, :class:`ParseReport`, :func:`check_parser`);
* :mod:`.files` — the question and answer files ``model_vqa.py`` reads and writes (readers,
  atomic writers, :func:`question_row`, :func:`answer_row`);
* :mod:`.evaluate` — an answer file joined to its question file and parsed
  (:func:`evaluate_answer_files`), the dataset it is scored against, the ``eval-answers`` MLflow run;
* :mod:`.metadata` — groups and subgroup columns attached by image id (``--metadata``, ``--prepared``);
* :mod:`.sweep` — one backend run once per prompt under a parent run (:func:`sweep_prompts`).

The ``derma eval-answers`` and ``derma sweep-prompts`` commands are in :mod:`derma_core.cli.answers`.
"""

from .evaluate import AnswerEvaluation, answers_dataset, evaluate_answer_files, log_answers_run
from .files import (AnswerFileError, JsonlRead, answer_row, question_row, read_answers, read_questions,
                    template_id, write_answers, write_questions)
from .metadata import MetadataJoin, attach_metadata, attach_prepared
from .parsing import (FAILURE_KINDS, PARSERS, SEED_ALIASES, ParseReport, check_parser, normalize,
                      parse_answers, parse_to_label, require_seed_parser, strict_parse)
from .sweep import check_prompts, sweep_prompts

__all__ = [
    "AnswerEvaluation", "answers_dataset", "evaluate_answer_files", "log_answers_run",
    "AnswerFileError", "JsonlRead", "answer_row", "question_row", "read_answers", "read_questions",
    "template_id", "write_answers", "write_questions",
    "MetadataJoin", "attach_metadata", "attach_prepared",
    "FAILURE_KINDS", "PARSERS", "SEED_ALIASES", "ParseReport", "check_parser", "normalize",
    "parse_answers", "parse_to_label", "require_seed_parser", "strict_parse",
    "check_prompts", "sweep_prompts",
]
