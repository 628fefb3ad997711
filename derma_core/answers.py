"""VQA answers: the original study's parser, a strict parser, and ``model_vqa.py`` file formats.

Two parsers turn a free-text VLM answer into a class code of the dataset's label set (or
``None`` = invalid):

``seed``
    exactly the original study's ``parse_to_label`` (see SEED_FACTS): first whole-token class
    code in label order, else the first alias phrase found as a substring, else the first class
    code found as a raw substring ("melanocytic lesion" -> mel), else invalid. A reply listing
    several labels silently becomes the first in label order. Its alias table is the study's, so
    it runs on HAM10000's label set only (any other is refused in one line).
``strict``
    whole-word names of the label set's classes only (:meth:`LabelSet.aliases`: the code, the
    display name and the synonyms, each also with a plural ``s``/``es``; the longest name wins
    where names overlap, so "actinic keratosis" is not also "keratosis"); a reply naming two or
    more different classes, or none, is invalid. Each failure kind is counted (``empty``,
    ``no_label``, ``multiple_labels``) so a run reports why answers were rejected. Works on any
    label set.

Files: the question file LLaVA-Med's ``llava/eval/model_vqa.py`` reads and the answer file it
writes, one JSON object a line (readers report malformed lines by number instead of crashing).
This module also adds the ``derma eval-answers`` and ``derma sweep-prompts`` commands.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import string
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .data.datasets.ham10000 import require_ham10000
from .labels import LabelSet
from .textio import TextEncodingError, encoding_option, open_text

PARSERS = ("seed", "strict")

# -- the seed parser, verbatim in behaviour -----------------------------------------------------
#: Alias phrases of the original parser, in its order (first substring hit wins); HAM10000 only.
SEED_ALIASES: tuple[tuple[str, str], ...] = (
    ("actinic keratosis", "akiec"), ("actinic keratoses", "akiec"), ("intraepithelial carcinoma", "akiec"),
    ("bowen", "akiec"),
    ("basal cell carcinoma", "bcc"),
    ("benign keratosis", "bkl"), ("seborrheic keratosis", "bkl"), ("solar lentigo", "bkl"),
    ("dermatofibroma", "df"),
    ("melanoma", "mel"),
    ("melanocytic nevus", "nv"), ("melanocytic nevi", "nv"), ("nevus", "nv"), ("nevi", "nv"),
    ("vascular lesion", "vasc"), ("hemangioma", "vasc"),
)

_NON_ALNUM = re.compile(r"[^a-z0-9\s]")
_SPACES = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    """Lowercase; every char outside [a-z0-9 whitespace] becomes a space; whitespace collapsed."""
    text = _NON_ALNUM.sub(" ", (text or "").lower())
    return _SPACES.sub(" ", text).strip()


def require_seed_parser(label_set: LabelSet) -> None:
    """One line when the seed parser (the study's, HAM10000's alias table) meets another label set."""
    require_ham10000(label_set, "parser seed (the study's parse_to_label; parser strict works on any dataset)")


def parse_to_label(text: str | None, label_set: LabelSet) -> str | None:
    """The original study's parser (``parse_to_label``): a label, or None when invalid.
    ``label_set`` must be HAM10000's (:func:`require_seed_parser`)."""
    require_seed_parser(label_set)
    return _seed_parse(text, label_set.codes)


def _seed_parse(text: str | None, codes: tuple[str, ...]) -> str | None:
    norm = normalize(text)
    tokens = set(norm.split())
    for label in codes:  # 1. first class code, in label order, present as a whole token
        if label in tokens:
            return label
    for phrase, label in SEED_ALIASES:  # 2. first alias phrase as a substring
        if phrase in norm:
            return label
    for label in codes:  # 3. first class code as a raw substring
        if label in norm:
            return label
    return None


# -- the strict parser ---------------------------------------------------------------------------
FAILURE_KINDS = ("empty", "no_label", "multiple_labels")


@functools.lru_cache(maxsize=32)
def _strict_matcher(label_set: LabelSet) -> tuple[re.Pattern, dict[str, tuple[str, ...]]]:
    """One whole-word regex over every normalised alias of every class (longest first, so a
    longer name wins where names overlap) and alias -> the class codes it names."""
    owners: dict[str, list[str]] = {}
    for code, aliases in label_set.aliases().items():
        for alias in aliases:
            norm = normalize(alias)
            if norm and code not in owners.setdefault(norm, []):
                owners[norm].append(code)
    phrases = sorted(owners, key=lambda p: (-len(p), p))
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")(?:e?s)?\b")
    return pattern, {p: tuple(c) for p, c in owners.items()}


def strict_parse(text: str | None, label_set: LabelSet) -> tuple[str | None, str | None]:
    """``(code, None)`` when the answer names exactly one class of ``label_set``;
    ``(None, failure_kind)`` otherwise."""
    norm = normalize(text)
    if not norm:
        return None, "empty"
    pattern, owners = _strict_matcher(label_set)
    found = {code for match in pattern.finditer(norm) for code in owners[match.group(1)]}
    if not found:
        return None, "no_label"
    if len(found) > 1:
        return None, "multiple_labels"
    return found.pop(), None


@dataclass
class ParseReport:
    """Labels parsed from answers, with counts of why answers were invalid."""

    labels: list[str | None]
    parser: str
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def n_invalid(self) -> int:
        return sum(1 for label in self.labels if label is None)

    def as_info(self) -> dict[str, Any]:
        return {"parser": self.parser, "n_invalid": self.n_invalid,
                "failures": {k: int(self.failures.get(k, 0)) for k in FAILURE_KINDS}}


def check_parser(parser: str, label_set: LabelSet) -> None:
    """One line for an unknown parser, or the seed parser on a label set other than HAM10000's."""
    if parser not in PARSERS:
        raise ValueError(f"parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    if parser == "seed":
        require_seed_parser(label_set)


def parse_answers(texts: Iterable[str | None], parser: str = "seed", *, label_set: LabelSet) -> ParseReport:
    """Parse every answer with ``parser`` (``seed`` or ``strict``) into codes of ``label_set``;
    failure kinds are counted for both (for ``seed``, ``multiple_labels`` counts replies it
    resolved silently although the strict reading names several classes)."""
    check_parser(parser, label_set)
    labels: list[str | None] = []
    failures: Counter = Counter()
    for text in texts:
        strict_label, kind = strict_parse(text, label_set)
        if parser == "strict":
            labels.append(strict_label)
            if kind:
                failures[kind] += 1
        else:
            label = _seed_parse(text, label_set.codes)
            labels.append(label)
            if label is None:
                failures["empty" if not normalize(text) else "no_label"] += 1
            elif kind == "multiple_labels":
                failures["multiple_labels"] += 1
    return ParseReport(labels, parser, dict(failures))


# -- model_vqa.py files -----------------------------------------------------------------------------
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


# -- evaluation of answer files -----------------------------------------------------------------------
@dataclass
class AnswerEvaluation:
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

    from .interfaces import Predictions, Split

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


@dataclass
class MetadataJoin:
    """What ``--metadata``/``--prepared`` attached: the images found, those missing from the
    table, label clashes."""

    path: str
    matched: int
    missing: list[str]
    label_mismatch: list[tuple[str, str, str]]  # (image id, question's answer, metadata's label)
    columns: list[str]

    def as_info(self) -> dict[str, Any]:
        return {"metadata": self.path, "metadata_matched": self.matched, "metadata_missing": self.missing,
                "metadata_label_mismatch": [list(t) for t in self.label_mismatch],
                "metadata_columns": self.columns}


def _join_metadata(split: Any, table: Any, columns: list[str], source: str) -> tuple[Any, MetadataJoin]:
    """``split`` with ``group_id`` and ``columns`` taken from ``table`` (indexed by image id, with
    ``group_id`` and ``label`` columns), matched by the questions' image file stems. Images
    missing from the table keep their own group and empty metadata (the ``missing`` subgroup)."""
    from .interfaces import Split

    frame = split.frame.copy()
    image_ids = frame["image_path"].map(lambda v: Path(str(v)).stem)
    found = image_ids.isin(table.index).to_numpy()
    hit = image_ids[found]
    frame.loc[found, "group_id"] = table.loc[hit, "group_id"].astype(str).to_numpy()
    for col in columns:
        frame[col] = ""
        frame.loc[found, col] = table.loc[hit, col].astype(str).to_numpy()
    mismatch = []
    if "label" in table.columns:
        other = table.loc[hit, "label"].astype(str).to_numpy()
        truth = frame.loc[found, "label"].astype(str).to_numpy()
        mismatch = [(i, t, d) for i, t, d in zip(hit, truth, other) if d and d != t]
    join = MetadataJoin(source, int(found.sum()), image_ids[~found].tolist(), mismatch, columns)
    return Split(split.name, frame, split.root, split.cache, label_set=split.label_set), join


def attach_metadata(split: Any, metadata: str | os.PathLike) -> tuple[Any, MetadataJoin]:
    """The answer split with ``group_id`` (HAM10000's ``lesion_id``) and the metadata columns
    (sex, age, localization, dx_type) of a HAM10000-style table, matched by image id (the
    question's ``image`` file stem).

    Images missing from the table keep their own question id as group and empty metadata
    (the ``missing`` subgroup): they are reported in :class:`MetadataJoin`, never dropped."""
    from .data.raw import OPTIONAL_COLUMNS, PrepError, read_metadata

    path = Path(metadata)
    try:
        table, _ = read_metadata(path)
    except PrepError as exc:
        raise AnswerFileError(str(exc).removeprefix("error: ")) from None
    if "image_id" not in table.columns or "lesion_id" not in table.columns:
        raise AnswerFileError(f"{path}: the metadata table needs image_id and lesion_id columns "
                              f"(has {', '.join(table.columns)}); pass HAM10000_metadata.csv")
    table = table.assign(image_id=table["image_id"].map(lambda v: Path(str(v)).stem))
    table = table.drop_duplicates("image_id", keep="first").set_index("image_id")
    table = table.rename(columns={"lesion_id": "group_id", "dx": "label"})
    return _join_metadata(split, table, [c for c in OPTIONAL_COLUMNS if c in table.columns], str(path))


def attach_prepared(split: Any, dataset: Any) -> tuple[Any, MetadataJoin]:
    """The answer split with ``group_id`` and every metadata column of a prepared dataset's
    splits (its own subgroup columns), matched by image id (the question's ``image`` file stem
    is the prepared image id, as ``derma vqa`` writes it)."""
    import pandas as pd

    from .interfaces import SPLIT_COLUMNS

    table = pd.concat([s.frame for s in dataset.splits.values()], ignore_index=True)
    table = table.assign(id=table["id"].astype(str)).drop_duplicates("id", keep="first").set_index("id")
    columns = [c for c in table.columns if c not in SPLIT_COLUMNS]
    return _join_metadata(split, table, columns, str(dataset.dir or dataset.name))


def answers_dataset(prepared: str | os.PathLike | None = None):
    """The dataset an answer file is scored against: the prepared folder's (its manifest's label
    set, grouping and subgroup columns), or HAM10000's -- the original study's model_vqa files."""
    if prepared is None:
        from .data.datasets.ham10000 import DESCRIPTOR

        return DESCRIPTOR, None
    from .data.prepare import load_prepared

    try:
        dataset = load_prepared(Path(prepared).expanduser())
    except (FileNotFoundError, ValueError) as exc:
        raise AnswerFileError(f"--prepared: {exc}") from None
    return dataset.descriptor, dataset


def _file_digest(*paths: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# -- commands --------------------------------------------------------------------------------------
def _register(cli) -> None:
    _register_eval_answers(cli)
    _register_sweep_prompts(cli)


def _register_eval_answers(cli) -> None:
    import click

    @cli.command("eval-answers")
    @click.option("--questions", "-q", required=True, type=click.Path(dir_okay=False),
                  help="model_vqa.py question file (JSONL with question_id, image, text, answer).")
    @click.option("--answers", "-a", required=True, type=click.Path(dir_okay=False),
                  help="model_vqa.py answer file (JSONL with question_id, text).")
    @click.option("--parser", type=click.Choice(PARSERS), default="seed", show_default=True,
                  help="seed: the original study's parser (HAM10000 only); strict: any dataset.")
    @click.option("--experiment", default="answer-files", show_default=True, help="MLflow experiment.")
    @click.option("--run-name", help="MLflow run name (default: the answer file's name).")
    @click.option("--tracking-uri", help="MLflow tracking URI.")
    @click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a core config key, e.g. -o evaluation.bootstrap=0.")
    @click.option("--prepared", "prepared", type=click.Path(file_okay=False),
                  help="The folder from `derma prep` the questions were written from (`derma vqa`): its label "
                       "set, and its groups and metadata columns by image id. Without it the files are "
                       "HAM10000's (the original study's).")
    @click.option("--metadata", "metadata", type=click.Path(dir_okay=False),
                  help="HAM10000_metadata.csv: attach lesion ids (lesion-level intervals) and sex, age, "
                       "localization, dx_type (subgroup tables) by image id.")
    @encoding_option("the question and answer files")
    def eval_answers_command(questions, answers, parser, experiment, run_name, tracking_uri, overrides, prepared,
                             metadata, encoding):
        """Evaluate an existing model_vqa.py answer file through derma's evaluators; log an MLflow run."""
        from . import runner
        from .interfaces import Dataset

        config, descriptor, prepared_dataset, ev, join = _read_answers(questions, answers, parser, overrides,
                                                                       prepared, metadata, encoding)
        _warn_about_answers(ev, join, metadata or prepared, questions, answers)
        dataset = Dataset(descriptor.name, _file_digest(questions), {ev.split.name: ev.split}, descriptor=descriptor,
                          dir=prepared_dataset.dir if prepared_dataset is not None else None)
        metrics, results = runner.evaluate(ev.split, ev.predictions, config, dataset)
        run_id = _log_answers_run(ev, join, metrics, results, descriptor, questions, answers, parser, experiment,
                                  run_name, tracking_uri, prepared, metadata)
        click.echo(f"{len(ev.predictions)} questions, {ev.report.n_invalid} invalid answers "
                   f"({parser} parser: {ev.predictions.info['failures']})")
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "invalid_rate"):
            if key in metrics:
                click.echo(f"  {key:<20} {metrics[key]:.4f}")
        click.echo(f"MLflow run id: {run_id}  (experiment {experiment!r})")


def _read_answers(questions, answers, parser, overrides, prepared, metadata, encoding):
    """eval-answers' inputs: the core config, the dataset's descriptor and prepared folder (or
    None), the evaluated answer files, and the join of --metadata or --prepared (or None); bad
    input is one click error line."""
    import click

    from .config import ConfigError, resolve_config

    try:
        if prepared and metadata:
            raise AnswerFileError("--prepared already holds the metadata of its images; drop --metadata")
        config = resolve_config(None, overrides=overrides)
        config["parser"] = parser
        descriptor, prepared_dataset = answers_dataset(prepared)
        ev = evaluate_answer_files(questions, answers, parser, label_set=descriptor.labels, encoding=encoding)
        join = None
        if metadata:
            ev.split, join = attach_metadata(ev.split, metadata)
        elif prepared_dataset is not None:
            ev.split, join = attach_prepared(ev.split, prepared_dataset)
    except (ConfigError, AnswerFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return config, descriptor, prepared_dataset, ev, join


def _warn_about_answers(ev, join, source, questions, answers) -> None:
    """On stderr: how the metadata joined, the files' problems, unanswered questions and
    answers to no question."""
    import click

    if join is not None:
        click.echo(f"metadata: {join.matched} of {len(ev.split)} images matched in {source} "
                   f"({ev.split.frame['group_id'].nunique()} groups)", err=True)
        if join.missing:
            click.echo(f"warning: {len(join.missing)} image id(s) are not in {source} (kept, each its own "
                       f"group, subgroup 'missing'): {', '.join(join.missing[:10])}"
                       f"{' ...' if len(join.missing) > 10 else ''}", err=True)
        if join.label_mismatch:
            i, t, d = join.label_mismatch[0]
            click.echo(f"warning: {len(join.label_mismatch)} image(s) have a different true label in the question "
                       f"file than in {source}, e.g. {i}: {t} vs {d} (the question file's label is used)",
                       err=True)
    for where, items in ev.problems.items():
        for line, message in items[:20]:
            place = f"{questions if where == 'questions' else answers}" + (f" line {line}" if line else "")
            click.echo(f"warning: {place}: {message}", err=True)
        if len(items) > 20:
            click.echo(f"warning: ... {len(items) - 20} more problems in the {where} file", err=True)
    if ev.missing:
        click.echo(f"warning: {len(ev.missing)} question(s) have no answer (counted invalid): "
                   f"{', '.join(ev.missing[:10])}{' ...' if len(ev.missing) > 10 else ''}", err=True)
    if ev.extra:
        click.echo(f"warning: {len(ev.extra)} answer(s) match no question (ignored): "
                   f"{', '.join(ev.extra[:10])}{' ...' if len(ev.extra) > 10 else ''}", err=True)


def _log_answers_run(ev, join, metrics, results, descriptor, questions, answers, parser, experiment, run_name,
                     tracking_uri, prepared, metadata) -> str:
    """The eval-answers MLflow run: the inputs, the parse report and the evaluation; its id."""
    from . import runner, tracking

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


def _register_sweep_prompts(cli) -> None:
    import click

    @cli.command("sweep-prompts")
    @click.option("--plugin", "-p", "plugin", default="llava_zeroshot", show_default=True)
    @click.option("--prompts", required=True, help="Comma-separated prompt names, e.g. p0,p1,p2,p4.")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False))
    @click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE")
    @click.option("--metric", default="macro_f1", show_default=True,
                  help="Metric plotted per prompt (with its bootstrap interval when available).")
    @click.option("--experiment", help="MLflow experiment (default: the dataset name).")
    @click.option("--tracking-uri", help="MLflow tracking URI.")
    def sweep_prompts_command(plugin, prompts, config_file, overrides, metric, experiment, tracking_uri):
        """Run one backend once per prompt: a parent MLflow run, a child per prompt, a sensitivity figure."""
        from . import plugins
        from .config import ConfigError

        names = [p.strip() for p in prompts.split(",") if p.strip()]
        known = plugins.prompt_builders()
        unknown = [p for p in names if p not in known]
        if not names or unknown:
            raise click.ClickException(f"unknown prompt(s) {unknown or prompts!r}; registered: {', '.join(sorted(known))}")
        try:
            reg = plugins.get_classifier(plugin)
            result = sweep_prompts(plugin, names, config_file, overrides, metric, experiment, tracking_uri,
                                   plugin_config=reg.options.get("config"))
        except (ConfigError, plugins.UnknownComponentError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        split = result["split"]
        for row in result["rows"]:
            ci = f" [{row['low']:.3f}, {row['high']:.3f}]" if row["low"] is not None else ""
            click.echo(f"  {row['prompt']:<12} {split}_{metric} {row['value']:.4f}{ci}  (run {row['run_id']})")
        click.echo(f"parent MLflow run id: {result['parent_run_id']}")


def check_prompts(prompts: Iterable[str], label_set: LabelSet) -> None:
    """Build every prompt for ``label_set`` before any run starts: an unknown prompt, or one of the
    study's HAM10000-only wordings on another dataset, is one line here, not a failed child run."""
    from . import plugins

    for name in prompts:
        plugins.get_prompt_builder(name)(label_set)


def sweep_prompts(plugin: str, prompts: list[str], config_file=None, overrides=(), metric: str = "macro_f1",
                  experiment: str | None = None, tracking_uri: str | None = None, plugin_config=None) -> dict:
    """Run ``plugin`` once per prompt under one parent MLflow run; log a table and a figure there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from . import plugins, runner, tracking
    from .config import resolve_config

    values = {"tracking.uri": tracking_uri, "tracking.experiment": experiment}
    base = resolve_config(plugin, config_file, overrides, values, plugin_config=plugin_config)
    split = base["evaluation"]["split"]
    dataset = runner.load_dataset(base)
    check_prompts(prompts, dataset.label_set)
    # a split the runs need without rows: one line before the parent run exists
    runner.check_dataset_splits(dataset, plugins.get_classifier(plugin), split)
    exp_name = base["tracking"].get("experiment") or dataset.name
    rows = []
    tags = {tracking.TAG_KIND: "sweep-prompts", tracking.TAG_PLUGIN: plugin, tracking.TAG_DATASET: dataset.name,
            tracking.TAG_DATASET_DIGEST: dataset.digest, tracking.TAG_LABEL_SET: ",".join(dataset.label_set.codes)}
    with tracking.start_run(exp_name, run_name=f"sweep-prompts {plugin}", tags=tags,
                            uri=base["tracking"].get("uri")) as parent:
        parent.log_params({"plugin": plugin, "prompts": ",".join(prompts), "metric": metric})
        for name in prompts:
            config = resolve_config(plugin, config_file, list(overrides) + [f"prompt={name}"], values,
                                    plugin_config=plugin_config)
            config["tracking"]["run_name"] = f"{plugin} {name}"
            result = runner.run(config, parent_run_id=parent.run_id, extra_tags={"derma.prompt": name})
            key = f"{split}_{metric}"
            rows.append({"prompt": name, "run_id": result.run_id, "value": result.metrics.get(key, float("nan")),
                         "low": result.metrics.get(f"{key}_ci_low"), "high": result.metrics.get(f"{key}_ci_high"),
                         "invalid_rate": result.metrics.get(f"{split}_invalid_rate")})
            parent.log_metrics({f"{name}_{metric}": rows[-1]["value"]})
        table = pd.DataFrame(rows)
        parent.log_table(table, "prompt_sensitivity.csv")
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(rows)), 3.5))
        x = list(range(len(rows)))
        vals = [r["value"] for r in rows]
        has_ci = all(r["low"] is not None and r["high"] is not None for r in rows)
        if has_ci:
            err = [[v - r["low"] for v, r in zip(vals, rows)], [r["high"] - v for v, r in zip(vals, rows)]]
            ax.errorbar(x, vals, yerr=err, fmt="o", capsize=4)
        else:
            ax.plot(x, vals, "o")
        ax.set_xticks(x, [r["prompt"] for r in rows])
        ax.set_ylabel(f"{split} {metric}" + (" (bootstrap CI)" if has_ci else ""))
        ax.set_title(f"prompt sensitivity: {plugin}")
        fig.tight_layout()
        parent.log_figure(fig, "figures/prompt_sensitivity.png")
        parent_id = parent.run_id
    return {"parent_run_id": parent_id, "rows": rows, "split": split}
