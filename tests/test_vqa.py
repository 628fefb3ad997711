"""`derma vqa`: question files and training conversations use the prepared folder's label set;
on HAM10000 every line is byte for byte the original study's."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_core.testing import make_tiny_dataset

P1 = "Classify this skin lesion. Answer with only one label: akiec, bcc, bkl, df, mel, nv, or vasc."
THREE = LabelSet(codes=("scc", "sk", "nev"), names=("Squamous cell carcinoma", "Seborrheic keratosis", "Mole"))


def test_ham10000_question_line_is_the_studys_byte_for_byte():
    from derma_core.data.vqa import TEMPLATE_ID, conversation_records, question_records

    frame = pd.DataFrame({"id": ["ISIC_0027419"], "label": ["bkl"]})
    (record,) = question_records(frame, P1, HAM)
    assert json.dumps(record) == ('{"question_id": "ISIC_0027419", "image": "ISIC_0027419.jpg", "text": "' + P1 + '", '
                                  '"answer": "bkl", "answer_id": 2, "template_id": "lesion_7way_v1"}')
    assert TEMPLATE_ID == "lesion_7way_v1"
    assert conversation_records(frame, P1) == [{"id": "ISIC_0027419", "image": "ISIC_0027419.jpg", "conversations": [
        {"from": "human", "value": "<image>\n" + P1}, {"from": "gpt", "value": "bkl"}]}]


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """A prepared folder as load_prepared reads it; ``prepared(label_set)`` picks its classes."""
    import derma_core.data.prepare as prepare

    folder = tmp_path / "prepared"
    folder.mkdir()
    holder = {}

    def fake_load_prepared(path, fold=None, name=None):
        assert str(path) == str(folder)
        return holder["dataset"]

    monkeypatch.setattr(prepare, "load_prepared", fake_load_prepared)

    def make(label_set=None):
        holder["dataset"] = make_tiny_dataset(n_train=6, n_val=6, n_test=9, label_set=label_set)
        return folder, holder["dataset"]

    return make


def test_question_file_of_a_three_class_dataset(prepared):
    folder, dataset = prepared(THREE)
    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(folder), "--prompt", "p1"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (folder / "vqa" / "test_p1.jsonl").read_text().splitlines()]
    test = dataset["test"].frame
    assert [q["question_id"] for q in lines] == test["id"].tolist()
    assert {q["text"] for q in lines} == {"Classify this skin lesion. Answer with only one label: scc, sk, or nev."}
    assert [q["answer"] for q in lines] == test["label"].tolist()
    assert [q["answer_id"] for q in lines] == [THREE.index(c) for c in test["label"]]
    assert {q["template_id"] for q in lines} == {"lesion_3way_v1"}
    generic = CliRunner().invoke(cli, ["vqa", "--prepared", str(folder), "--prompt", "classes", "--format", "llava",
                                       "--split", "all"])
    assert generic.exit_code == 0, generic.output
    data = json.loads((folder / "vqa" / "llava_all_classes.json").read_text())
    assert len(data) == 21 and data[0]["conversations"][0]["value"] == (
        "<image>\nClassify this skin lesion. Answer with only one label: Squamous cell carcinoma (scc), "
        "Seborrheic keratosis (sk), or Mole (nev).")
    assert {d["conversations"][1]["value"] for d in data} == set(THREE.codes)


@pytest.mark.parametrize("prompt", ["p2", "p4"])
def test_the_studys_own_wordings_are_refused_on_another_dataset(prepared, prompt):
    folder, _ = prepared(THREE)
    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(folder), "--prompt", prompt])
    assert result.exit_code == 1 and f"prompt {prompt}" in result.output and "scc, sk, nev" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (folder / "vqa").exists()


def test_ham10000_question_file_through_the_command(prepared):
    folder, dataset = prepared()
    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(folder), "--prompt", "p2"])
    assert result.exit_code == 0, result.output
    lines = (folder / "vqa" / "test_p2.jsonl").read_text().splitlines()
    first = dataset["test"].frame.iloc[0]
    p2 = ("Classify this skin lesion. Answer with only one label: Actinic keratoses and intraepithelial carcinoma "
          "(akiec),  Basal cell carcinoma (bcc),  Benign keratosis-like lesions (bkl),  Dermatofibroma (df), "
          "Melanoma (mel),  Melanocytic nevi (nv), Vascular lesions (vasc).")
    assert lines[0] == (f'{{"question_id": "{first.id}", "image": "{first.id}.jpg", "text": "{p2}", '
                        f'"answer": "{first.label}", "answer_id": {HAM.index(first.label)}, '
                        '"template_id": "lesion_7way_v1"}')


@pytest.fixture(scope="module")
def pad_ufes(tmp_path_factory):
    """A prepared synthetic PAD-UFES-20 (six classes, patients as groups), through the real prep."""
    from derma_core.data.prepare import PrepParams, prepare
    from derma_core.data.synthetic import generate

    base = tmp_path_factory.mktemp("pad")
    raw = generate(base / "raw", n=150, seed=3, workers=1, dataset="pad_ufes_20")
    prepare(raw, base / "prep", PrepParams(size=16), workers=1, progress=False, log=lambda m: None,
            dataset="pad_ufes_20")
    return base / "prep"


def test_vqa_then_eval_answers_on_a_prepared_six_class_dataset(pad_ufes, tmp_path, mlflow_store):
    """`derma vqa` writes the dataset's questions; `derma eval-answers --prepared` scores answers to
    them against the dataset's label set, patients and metadata."""
    import mlflow

    from derma_core.answers import answer_row, write_answers
    from derma_core.data.prepare import load_prepared

    dataset = load_prepared(pad_ufes)
    label_set = dataset.label_set
    assert len(label_set) == 6 and label_set != HAM
    out = tmp_path / "q.jsonl"
    result = CliRunner().invoke(cli, ["vqa", "--prepared", str(pad_ufes), "--prompt", "p1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    questions = [json.loads(line) for line in out.read_text().splitlines()]
    test = dataset["test"].frame
    assert [q["question_id"] for q in questions] == test["id"].tolist()
    assert questions[0]["text"] == f"Classify this skin lesion. Answer with only one label: " \
                                   f"{', '.join(label_set.codes[:-1])}, or {label_set.codes[-1]}."
    assert [q["answer_id"] for q in questions] == [label_set.index(c) for c in test["label"]]
    assert {q["template_id"] for q in questions} == {"lesion_6way_v1"}
    # answers by display name: the strict parser reads them; every third one is unusable
    texts = [label_set.name(q["answer"]) if k % 3 else "I cannot tell." for k, q in enumerate(questions)]
    answers = write_answers(tmp_path / "a.jsonl", [answer_row(q["question_id"], q["text"], t, "m")
                                                   for q, t in zip(questions, texts)])
    result = CliRunner().invoke(cli, ["eval-answers", "-q", str(out), "-a", str(answers), "--parser", "strict",
                                      "--prepared", str(pad_ufes), "--tracking-uri", mlflow_store,
                                      "-o", "evaluation.bootstrap=0"])
    assert result.exit_code == 0, result.output
    assert f"{len(test)} of {len(test)} images matched" in result.output
    client = mlflow.MlflowClient(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("answer-files").experiment_id])
    assert run.data.tags["derma.label_set"] == ",".join(label_set.codes)
    assert run.data.tags["derma.dataset"] == "pad_ufes_20"
    n_bad = sum(1 for k in range(len(texts)) if not k % 3)
    assert run.data.metrics["n_invalid"] == n_bad
    assert run.data.metrics["test_accuracy"] == pytest.approx(1 - n_bad / len(texts))
    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions.csv", str(tmp_path)), dtype=str,
                        keep_default_na=False)
    assert preds["group_id"].tolist() == test["group_id"].tolist()  # patients, from the prepared folder
