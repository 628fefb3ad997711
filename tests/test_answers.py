"""The seed and strict answer parsers, model_vqa.py files and `derma eval-answers`."""

from __future__ import annotations

import json

import mlflow
import pytest
from click.testing import CliRunner

from derma_core.answers import (
    evaluate_answer_files, normalize, parse_answers, parse_to_label, read_answers, strict_parse,
    write_answers, answer_row, question_row, write_questions)
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM

# (answer text, seed parser label, strict parser label, strict failure kind)
TABLE = [
    ("The skin lesion is classified as a melanoma.", "mel", "mel", None),
    ("mel", "mel", "mel", None),
    ("NV", "nv", "nv", None),
    ("bkl.", "bkl", "bkl", None),
    ("Answer: vasc", "vasc", "vasc", None),
    ("This appears to be a basal cell carcinoma (BCC).", "bcc", "bcc", None),
    ("The image shows a seborrheic keratosis.", "bkl", "bkl", None),
    ("Melanocytic nevi", "nv", "nv", None),
    ("It is most likely a benign nevus.", "nv", "nv", None),
    ("Actinic keratoses and intraepithelial carcinoma (Bowen's disease)", "akiec", "akiec", None),
    ("dermatofibroma", "df", "df", None),
    ("a hemangioma", "vasc", "vasc", None),
    # several labels: the seed takes the first in label order, strict refuses
    ("akiec, bcc, bkl, df, mel, nv, vasc", "akiec", None, "multiple_labels"),
    ("nv or mel", "mel", None, "multiple_labels"),
    ("It could be a melanoma or a melanocytic nevus.", "mel", None, "multiple_labels"),
    # substring hits inside other words: the seed's known flaw
    ("melanocytic lesion", "mel", None, "no_label"),
    ("The lesion is dfx-like", "df", None, "no_label"),
    ("Levels of pigment", None, None, "no_label"),
    # p4's typo option
    ("vsc", None, "vasc", None),
    # garbage and empty
    ("I cannot determine this from the image.", None, None, "no_label"),
    ("", None, None, "empty"),
    ("   \n ", None, None, "empty"),
    ("!!!", None, None, "empty"),
    ("The image shows a skin lesion with irregular borders", None, None, "no_label"),
]


@pytest.mark.parametrize("text,seed,strict,kind", TABLE)
def test_parsers_on_realistic_answers(text, seed, strict, kind):
    assert parse_to_label(text, HAM) == seed
    assert strict_parse(text, HAM) == (strict, kind)


def test_seed_parser_follows_the_documented_order():
    assert normalize("Bowen's  DISEASE!") == "bowen s disease"
    # step 1 beats step 2: a whole-token code wins over an earlier alias phrase
    assert parse_to_label("melanoma, so nv", HAM) == "nv"
    # step 2 order: alias list order, not position in the text
    assert parse_to_label("nevus next to a dermatofibroma", HAM) == "df"
    # step 3: raw substring of a code, in label order
    assert parse_to_label("bccx bklx", HAM) == "bcc"


def test_parse_answers_counts_failure_kinds():
    texts = [t for t, *_ in TABLE]
    strict = parse_answers(texts, "strict", label_set=HAM)
    assert strict.failures == {"multiple_labels": 3, "no_label": 5, "empty": 3}
    assert strict.n_invalid == 11
    seed = parse_answers(texts, "seed", label_set=HAM)
    assert seed.n_invalid == sum(1 for _, s, *_ in TABLE if s is None)
    assert seed.failures["multiple_labels"] == 3  # resolved silently, but reported
    with pytest.raises(ValueError, match="parser"):
        parse_answers(texts, "fuzzy", label_set=HAM)


def _fixture_files(tmp_path):
    q = tmp_path / "questions.jsonl"
    a = tmp_path / "answers.jsonl"
    prompt = "Classify this skin lesion."
    rows = [question_row(f"ISIC_{i:07d}", f"ISIC_{i:07d}.jpg", prompt, label, label_set=HAM)
            for i, label in enumerate(["mel", "nv", "bkl", "nv", "bcc", "vasc"])]
    write_questions(q, rows)
    answers = [answer_row("ISIC_0000000", prompt, "The skin lesion is classified as a melanoma.", "m"),
               answer_row("ISIC_0000001", prompt, "nv", "m"),
               answer_row("ISIC_0000002", prompt, "akiec, bkl", "m"),
               answer_row("ISIC_0000004", prompt, "no idea", "m"),
               answer_row("ISIC_9999999", prompt, "mel", "m")]  # answers no question
    lines = [json.dumps(r) for r in answers]
    lines.insert(2, '{"question_id": "ISIC_0000003", "text": ')  # torn line
    lines.insert(4, '{"question_id": "ISIC_0000005"}')  # no text
    a.write_text("\n".join(lines) + "\n")
    return q, a


def test_answer_files_roundtrip_and_problems(tmp_path):
    q, a = _fixture_files(tmp_path)
    read = read_answers(a)
    assert [n for n, _ in read.problems] == [3, 5]
    assert "not valid JSON" in read.problems[0][1] and "text" in read.problems[1][1]
    ev = evaluate_answer_files(q, a, "strict", label_set=HAM)
    assert ev.missing == ["ISIC_0000003", "ISIC_0000005"]
    assert ev.extra == ["ISIC_9999999"]
    assert ev.predictions.labels == ["mel", "nv", None, None, None, None]
    assert ev.predictions.info["failures"] == {"empty": 2, "no_label": 1, "multiple_labels": 1}
    seed = evaluate_answer_files(q, a, "seed", label_set=HAM)
    assert seed.predictions.labels == ["mel", "nv", "akiec", None, None, None]


def test_eval_answers_command_logs_a_run(tmp_path, mlflow_store):
    q, a = _fixture_files(tmp_path)
    result = CliRunner().invoke(cli, ["eval-answers", "--questions", str(q), "--answers", str(a), "--parser", "seed",
                                      "--tracking-uri", mlflow_store, "-o", "evaluation.bootstrap=0"])
    assert result.exit_code == 0, result.output
    assert "line 3" in result.output and "line 5" in result.output
    assert "ISIC_0000003" in result.output and "ISIC_9999999" in result.output
    client = mlflow.MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("answer-files")
    (run,) = client.search_runs([exp.experiment_id])
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(2 / 6)
    assert m["n_missing"] == 2 and m["n_extra"] == 1 and m["parse_multiple_labels"] == 1
    assert run.data.params["parser"] == "seed"


def test_eval_answers_refuses_unusable_question_file(tmp_path, mlflow_store):
    q = tmp_path / "q.jsonl"
    q.write_text("not json\n")
    a = tmp_path / "a.jsonl"
    a.write_text("")
    result = CliRunner().invoke(cli, ["eval-answers", "-q", str(q), "-a", str(a), "--tracking-uri", mlflow_store])
    assert result.exit_code != 0 and "no usable question line" in result.output
