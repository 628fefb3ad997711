"""`derma eval-answers --metadata` / `--prepared`: groups (lesion ids) and metadata attached by
image id; ids missing from the metadata reported, not dropped; the label set is the dataset's."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from derma_core.answers import (AnswerFileError, answer_row, attach_metadata, evaluate_answer_files, question_row,
                                write_answers, write_questions)
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM

META = """lesion_id,image_id,dx,dx_type,age,sex,localization
HAM_1,ISIC_0000001,nv,follow_up,45.0,male,back
HAM_1,ISIC_0000002,nv,follow_up,45.0,male,back
HAM_2,ISIC_0000003,mel,histo,70.0,female,face
HAM_3,ISIC_0000004,bkl,histo,,female,lower extremity
"""


def _files(tmp_path, ids_labels, texts, label_set=HAM):
    q = write_questions(tmp_path / "q.jsonl", [question_row(str(k), f"{i}.jpg", "What is it?", lab,
                                                            label_set=label_set)
                                                for k, (i, lab) in enumerate(ids_labels)])
    a = write_answers(tmp_path / "a.jsonl", [answer_row(str(k), "What is it?", t, "m")
                                              for k, t in enumerate(texts)])
    return q, a


def test_attach_metadata_by_image_id_keeps_unknown_ids(tmp_path):
    meta = tmp_path / "meta.csv"
    meta.write_text(META)
    pairs = [("ISIC_0000001", "nv"), ("ISIC_0000002", "nv"), ("ISIC_0000003", "mel"), ("ISIC_0000009", "bcc"),
             ("ISIC_0000004", "df")]
    q, a = _files(tmp_path, pairs, ["nv", "nv", "melanoma", "bcc", "df"])
    ev = evaluate_answer_files(q, a, label_set=HAM)
    split, join = attach_metadata(ev.split, meta)
    assert len(split) == 5  # nothing dropped
    assert split.label_set == HAM
    assert split.frame["group_id"].tolist() == ["HAM_1", "HAM_1", "HAM_2", "3", "HAM_3"]
    assert split.frame["sex"].tolist() == ["male", "male", "female", "", "female"]
    assert split.frame["age"].tolist() == ["45.0", "45.0", "70.0", "", ""]
    assert join.matched == 4 and join.missing == ["ISIC_0000009"]
    assert join.label_mismatch == [("ISIC_0000004", "df", "bkl")]
    assert set(join.columns) == {"dx_type", "age", "sex", "localization"}


def test_bad_metadata_file_is_one_clear_line(tmp_path):
    q, a = _files(tmp_path, [("ISIC_0000001", "nv")], ["nv"])
    ev = evaluate_answer_files(q, a, label_set=HAM)
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    with pytest.raises(AnswerFileError, match="image_id and lesion_id"):
        attach_metadata(ev.split, bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(AnswerFileError, match="empty"):
        attach_metadata(ev.split, empty)


def test_eval_answers_with_real_ham10000_metadata(tmp_path, mlflow_store, shared_data):
    meta_path = shared_data / "ham10000" / "HAM10000_metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    # 120 real images: whole lesions, so several lesions have two or more images
    multi = meta[meta.duplicated("lesion_id", keep=False)].sort_values(["lesion_id", "image_id"]).head(80)
    single = meta[~meta["lesion_id"].isin(multi["lesion_id"])].head(40)
    rows = pd.concat([multi, single])
    pairs = list(zip(rows["image_id"], rows["dx"])) + [("ISIC_9999999", "nv")]
    texts = [d if k % 3 else "nv" for k, d in enumerate(rows["dx"])] + ["nv"]
    q, a = _files(tmp_path, pairs, texts)
    result = CliRunner().invoke(cli, ["eval-answers", "-q", str(q), "-a", str(a), "--metadata", str(meta_path),
                                      "--tracking-uri", mlflow_store, "-o", "evaluation.bootstrap=50",
                                      "-o", "evaluation.subgroups.min_count=5"])
    assert result.exit_code == 0, result.output
    assert "120 of 121 images matched" in result.output and "ISIC_9999999" in result.output
    client = mlflow.MlflowClient(mlflow_store)
    run = client.search_runs([client.get_experiment_by_name("answer-files").experiment_id])[0]
    m = run.data.metrics
    assert m["n_metadata_missing"] == 1
    assert "test_subgroup_sex_male_macro_f1" in m and "test_subgroup_localization_gap_accuracy" in m
    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions.csv", str(tmp_path)), dtype=str)
    assert preds["group_id"].nunique() == rows["lesion_id"].nunique() + 1 < len(preds)
    with open(client.download_artifacts(run.info.run_id, "answers_report.json", str(tmp_path))) as fh:
        report = json.load(fh)
    assert report["metadata_missing"] == ["ISIC_9999999"] and report["metadata_matched"] == 120
