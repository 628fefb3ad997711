"""Answer parsing and `derma eval-answers` on label sets other than HAM10000's: the strict parser
reads any label set's codes, display names and synonyms; the seed parser (the study's alias
table) refuses them in one line; eval-answers takes the label set from the prepared folder."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core.answers import (answer_row, evaluate_answer_files, parse_answers, parse_to_label, question_row,
                                strict_parse, template_id, write_answers, write_questions)
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset

THREE = LabelSet(codes=("scc", "sk", "nev"), names=("Squamous cell carcinoma", "Seborrheic keratosis", "Mole"),
                 synonyms={"nev": ("naevus", "melanocytic nevus")},
                 groupings={"malignancy": {"scc": "malignant", "sk": "benign", "nev": "benign"}},
                 positive={"malignancy": "malignant"})
TWO = LabelSet(codes=("benign", "malignant"))
MANY = LabelSet(codes=tuple(f"d{i}" for i in range(114)), names=tuple(f"disease {i}" for i in range(114)))


@pytest.mark.parametrize("text,label,kind", [
    ("scc", "scc", None),
    ("SK.", "sk", None),
    ("It is a squamous cell carcinoma.", "scc", None),
    ("a seborrheic keratosis", "sk", None),
    ("two moles", "nev", None),  # plural of the display name
    ("Melanocytic nevus", "nev", None),  # a synonym
    ("scc or sk", None, "multiple_labels"),
    ("a mole, maybe a naevus", "nev", None),  # two names of one class: one label
    ("skin lesion", None, "no_label"),  # "sk" only as a whole word
    ("melanoma", None, "no_label"),  # HAM10000's classes mean nothing here
    ("", None, "empty"),
])
def test_strict_parser_reads_any_label_sets_names(text, label, kind):
    assert strict_parse(text, THREE) == (label, kind)


def test_strict_parser_two_and_114_classes_and_overlapping_names():
    assert strict_parse("Malignant.", TWO) == ("malignant", None)
    assert strict_parse("benign or malignant", TWO) == (None, "multiple_labels")
    assert strict_parse("disease 10", MANY) == ("d10", None)  # not also disease 1
    assert strict_parse("d113", MANY) == ("d113", None)
    assert strict_parse("disease 100 and disease 7", MANY) == (None, "multiple_labels")
    nested = LabelSet(codes=("k", "ak"), names=("keratosis", "actinic keratosis"))
    assert strict_parse("an actinic keratosis", nested) == ("ak", None)  # the longer name wins
    assert strict_parse("a keratosis", nested) == ("k", None)
    report = parse_answers(["benign", "both benign and malignant", "?"], "strict", label_set=TWO)
    assert report.labels == ["benign", None, None]
    assert report.as_info()["failures"] == {"empty": 1, "no_label": 0, "multiple_labels": 1}


def test_seed_parser_refuses_another_label_set_in_one_line(tmp_path):
    for call in (lambda: parse_to_label("scc", THREE), lambda: parse_answers(["scc"], "seed", label_set=THREE)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "parser seed" in message and "scc, sk, nev" in message
        assert ", ".join(HAM.codes) in message
    q = write_questions(tmp_path / "q.jsonl", [question_row("1", "1.jpg", "?", "sk", label_set=THREE)])
    a = write_answers(tmp_path / "a.jsonl", [answer_row("1", "?", "sk", "m")])
    with pytest.raises(ValueError, match="parser seed"):
        evaluate_answer_files(q, a, "seed", label_set=THREE)
    assert parse_to_label("The lesion is a melanoma", HAM) == "mel"  # HAM10000 itself is unchanged


def test_question_rows_use_the_label_sets_indices():
    row = question_row("x", "x.jpg", "Q?", "nev", label_set=THREE)
    assert row == {"question_id": "x", "image": "x.jpg", "text": "Q?", "answer": "nev", "answer_id": 2,
                   "template_id": "lesion_3way_v1"}
    assert template_id(HAM) == "lesion_7way_v1" and template_id(MANY) == "lesion_114way_v1"
    with pytest.raises(ValueError, match="unknown label 'mel'"):
        question_row("x", "x.jpg", "Q?", "mel", label_set=THREE)


def test_answer_files_of_a_three_class_dataset(tmp_path):
    q = write_questions(tmp_path / "q.jsonl", [question_row(f"i{k}", f"i{k}.jpg", "?", lab, label_set=THREE)
                                               for k, lab in enumerate(["scc", "sk", "nev", "nev"])]
                        + [question_row("i9", "i9.jpg", "?", "mel", label_set=HAM)])  # not a class here
    a = write_answers(tmp_path / "a.jsonl", [answer_row(f"i{k}", "?", t, "m")
                                             for k, t in enumerate(["SCC", "a mole", "mole or scc", "naevus"])])
    ev = evaluate_answer_files(q, a, "strict", label_set=THREE)
    assert ev.split.label_set == THREE and ev.predictions.label_set == THREE
    assert ev.predictions.labels == ["scc", "nev", None, "nev"]
    assert ev.split.frame["group_id"].tolist() == ["i0", "i1", "i2", "i3"]
    assert any("'i9'" in message and "scc, sk, nev" in message for _, message in ev.problems["questions"])


@pytest.fixture
def prepared_three(tmp_path, monkeypatch):
    """A prepared dataset of THREE's classes, as load_prepared gives it (with a metadata column)."""
    import derma_core.data.prepare as prepare

    dataset = make_tiny_dataset(n_train=6, n_val=6, n_test=9, name="three", label_set=THREE)
    dataset.dir = tmp_path / "prepared"
    dataset.dir.mkdir()
    dataset["test"].frame["skin_type"] = ["1", "2", "3"] * 3
    seen = []

    def fake_load_prepared(folder, fold=None, name=None):
        seen.append(folder)
        return dataset

    monkeypatch.setattr(prepare, "load_prepared", fake_load_prepared)
    return dataset, seen


def test_eval_answers_takes_the_label_set_from_the_prepared_folder(tmp_path, mlflow_store, prepared_three):
    dataset, seen = prepared_three
    test = dataset["test"].frame
    q = write_questions(tmp_path / "q.jsonl", [question_row(i, f"{i}.jpg", "?", lab, label_set=THREE)
                                               for i, lab in zip(test["id"], test["label"])])
    texts = [lab if k % 3 else "no idea" for k, lab in enumerate(test["label"])]
    a = write_answers(tmp_path / "a.jsonl", [answer_row(i, "?", t, "m") for i, t in zip(test["id"], texts)])
    args = ["eval-answers", "-q", str(q), "-a", str(a), "--prepared", str(dataset.dir), "--tracking-uri",
            mlflow_store, "-o", "evaluation.bootstrap=0"]
    refused = CliRunner().invoke(cli, args)  # the default parser is the study's: HAM10000 only
    assert refused.exit_code != 0 and "parser seed" in refused.output
    result = CliRunner().invoke(cli, [*args, "--parser", "strict"])
    assert result.exit_code == 0, result.output
    assert seen and str(seen[-1]) == str(dataset.dir)
    client = mlflow.MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("answer-files").experiment_id])
    assert run.data.tags["derma.label_set"] == "scc,sk,nev"
    assert run.data.metrics["test_accuracy"] == pytest.approx(6 / 9)
    assert run.data.metrics["n_invalid"] == 3
    with open(client.download_artifacts(run.info.run_id, "label_set.json", str(tmp_path))) as fh:
        assert LabelSet.from_dict(json.load(fh)) == THREE
    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions.csv", str(tmp_path)), dtype=str,
                        keep_default_na=False)
    assert preds["group_id"].tolist() == test["group_id"].tolist()  # the prepared folder's groups
    both = CliRunner().invoke(cli, [*args, "--parser", "strict", "--metadata", str(tmp_path / "m.csv")])
    assert both.exit_code != 0 and "drop --metadata" in both.output


def test_sweep_prompts_refuses_the_studys_wordings_before_any_run(mlflow_store, tiny_source):
    from derma_core.answers import check_prompts
    from derma_core.plugins import UnknownComponentError

    check_prompts(["p0", "p1", "p1_perm3", "classes"], THREE)  # list the label set's classes: fine
    with pytest.raises(ValueError, match="prompt p4"):
        check_prompts(["p1", "p4"], THREE)
    with pytest.raises(UnknownComponentError, match="p99"):
        check_prompts(["p99"], THREE)
    result = CliRunner().invoke(cli, ["sweep-prompts", "--plugin", "vlm_zeroshot", "--prompts", "p1,p2",
                                      "--tracking-uri", mlflow_store, "-o", "data.source=tiny3"])
    assert result.exit_code != 0 and "prompt p2" in result.output and "ack, bcc, nev" in result.output
    assert mlflow.MlflowClient(mlflow_store).search_experiments(filter_string="name = 'tiny3'") == []
