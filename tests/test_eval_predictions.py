"""``derma eval-predictions``: prediction files the tests write in each format (derma's
predictions.csv, an ISIC submission, image_path,true_label,predicted_label,probability_class_*
with a class order) become runs whose figures equal scikit-learn's on the same arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, brier_score_loss, f1_score, log_loss,
                             roc_auc_score)

from derma_core import tracking
from derma_core.cli import cli
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation import external

N = 84
CODES = list(HAM.codes)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A HAM10000 metadata table (no images) and predictions over it: truth, probabilities (their
    argmax is the predicted label), in file order."""
    root = tmp_path_factory.mktemp("ham-meta")
    rng = np.random.default_rng(7)
    y = np.array([i % len(CODES) for i in range(N)])
    rng.shuffle(y)
    ids = [f"ISIC_{9000000 + i:07d}" for i in range(N)]
    lesions = [f"HAM_{i // 2:07d}" if y[i] == y[i - (i % 2)] else f"HAM_{1000 + i:07d}" for i in range(N)]
    meta = pd.DataFrame({"lesion_id": lesions, "image_id": ids, "dx": [CODES[k] for k in y],
                         "dx_type": "histo", "age": [str(30 + i % 50) for i in range(N)],
                         "sex": ["male" if i % 2 else "female" for i in range(N)], "localization": "back"})
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    logits = rng.normal(size=(N, len(CODES))) + 2.0 * np.eye(len(CODES))[y] * (rng.random(N)[:, None] < 0.6)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = np.round(p, 6)
    p = p / p.sum(axis=1, keepdims=True)
    return {"root": root, "meta": root / "HAM10000_metadata.csv", "ids": ids, "y": y, "p": p, "lesions": lesions}


def _expected(y, p):
    pred = p.argmax(axis=1)
    k = np.arange(p.shape[1])
    return {
        "test_accuracy": accuracy_score(y, pred),
        "test_balanced_accuracy": balanced_accuracy_score(y, pred),
        "test_macro_f1": f1_score(y, pred, labels=k, average="macro"),
        "test_weighted_f1": f1_score(y, pred, labels=k, average="weighted"),
        "test_macro_auroc": np.mean([roc_auc_score(y == c, p[:, c]) for c in k]),
        "test_brier": brier_score_loss(y, p, labels=k, scale_by_half=False),
        "test_nll": log_loss(y, p, labels=k),
    }


def _check(run_id, uri, y, p):
    logged = tracking.get_run(run_id, uri).data.metrics
    for name, value in _expected(y, p).items():
        assert logged[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    return logged


def _write_derma(path, case, rows=None):
    rows = np.arange(N) if rows is None else rows
    frame = pd.DataFrame({"id": [case["ids"][i] for i in rows], "label": [CODES[case["y"][i]] for i in rows],
                          "predicted": [CODES[k] for k in case["p"][rows].argmax(axis=1)]})
    for j, c in enumerate(CODES):
        frame[f"prob_{c}"] = case["p"][rows, j]
    frame.to_csv(path, index=False)
    return frame


def test_derma_format_equals_sklearn(case, tmp_path, mlflow_store):
    path = tmp_path / "predictions.csv"
    _write_derma(path, case)
    result = external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), uri=mlflow_store,
                                    overrides=["evaluation.bootstrap=20"], log=lambda line: None)
    logged = _check(result.run_id, mlflow_store, case["y"], case["p"])
    assert logged["external_rows"] == N and logged["external_missing_from_metadata"] == 0
    run = tracking.get_run(result.run_id, mlflow_store)
    assert run.data.tags["derma.plugin"] == "external"
    assert run.data.tags[external.TAG_SHA256] == external.file_sha256(path)
    assert any("calibration" in n and "no --val" in n for n in result.notes)
    assert "test_calibrated_ece" not in logged
    # the intervals resample HAM10000's lesions from the metadata, not single images
    table = tracking.load_run_table(result.run_id, "predictions.csv", mlflow_store)
    assert table["group_id"].tolist() == case["lesions"]


def test_isic_submission_format(case, tmp_path, mlflow_store):
    path = tmp_path / "submission.csv"
    frame = pd.DataFrame({"image": case["ids"]})
    for j, c in enumerate(CODES):
        frame[c.upper()] = case["p"][:, j] * 0.5  # ISIC scores need not sum to 1
    frame["UNK"] = 0.0
    frame.to_csv(path, index=False)
    with pytest.raises(external.ExternalError, match="UNK") as info:
        external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), uri=mlflow_store, log=lambda line: None)
    assert "\n" not in str(info.value) and "--ignore-column UNK" in str(info.value)
    result = external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), ignore=["UNK"], uri=mlflow_store,
                                    overrides=["evaluation.bootstrap=20"], log=lambda line: None)
    _check(result.run_id, mlflow_store, case["y"], case["p"])
    assert any("normalised" in n for n in result.notes)


def test_columns_format_with_a_class_order_file(case, tmp_path, mlflow_store):
    order = [6, 0, 5, 1, 4, 2, 3]  # vasc akiec nv bcc mel bkl df: the file's column order
    names = {6: "vascular", 0: "actinic keratosis", 5: "nevus", 1: "Basal cell carcinoma", 4: "melanoma",
             2: "bkl", 3: "Dermatofibroma"}  # synonyms, display names and codes
    (tmp_path / "classes.csv").write_text("diag,label\n" + "".join(f"{names[c]},{k}\n" for k, c in
                                                                  sorted(enumerate(order), key=lambda t: -t[0])))
    frame = pd.DataFrame({"image_path": [f"/data/ham/images/{i}.jpg" for i in case["ids"]],
                          "true_label": [order.index(k) for k in case["y"]],
                          "predicted_label": [order.index(k) for k in case["p"].argmax(axis=1)]})
    for k, c in enumerate(order):
        frame[f"probability_class_{k}"] = case["p"][:, c]
    path = tmp_path / "columns.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(external.ExternalError, match="--class-order"):
        external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), uri=mlflow_store, log=lambda line: None)
    result = external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), order=str(tmp_path / "classes.csv"),
                                    uri=mlflow_store, overrides=["evaluation.bootstrap=20"], log=lambda line: None)
    _check(result.run_id, mlflow_store, case["y"], case["p"])
    # the same order given inline, names of any kind
    inline = ",".join(names[c] for c in order)
    assert external.class_order(inline, HAM) == [CODES[c] for c in order]
    with pytest.raises(external.ExternalError, match="'moles'"):
        external.class_order("moles," + inline.split(",", 1)[1], HAM)


def test_conflicting_labels_name_the_first_rows(case, tmp_path, mlflow_store):
    path = tmp_path / "predictions.csv"
    frame = _write_derma(path, case)
    wrong = [3, 10]
    for i in wrong:
        frame.loc[i, "label"] = CODES[(case["y"][i] + 1) % len(CODES)]
    frame.to_csv(path, index=False)
    with pytest.raises(external.ExternalError) as info:
        external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), uri=mlflow_store, log=lambda line: None)
    message = str(info.value)
    assert "\n" not in message and "2 rows" in message
    assert f"line {wrong[0] + 2} ({case['ids'][wrong[0]]}" in message


def test_missing_ids_are_counted_and_val_calibrates(case, tmp_path, mlflow_store):
    test_rows, val_rows = np.arange(0, 60), np.arange(60, N)
    path = tmp_path / "test.csv"
    frame = _write_derma(path, case, test_rows)
    extra = frame.iloc[:3].copy()
    extra["id"] = ["ISIC_8000001", "ISIC_8000002", "ISIC_8000003"]
    pd.concat([frame, extra]).to_csv(path, index=False)
    val = tmp_path / "val.csv"
    _write_derma(val, case, val_rows)
    result = external.evaluate_file(path, "ham10000", metadata=str(case["meta"]), val=str(val), uri=mlflow_store,
                                    overrides=["evaluation.bootstrap=20"], log=lambda line: None)
    y = np.concatenate([case["y"][test_rows], case["y"][:3]])
    p = np.concatenate([case["p"][test_rows], case["p"][:3]])
    logged = _check(result.run_id, mlflow_store, y, p)
    assert logged["external_missing_from_metadata"] == 3 and logged["external_evaluated"] == 63
    assert "test_calibrated_ece" in logged and "test_conformal_lac_coverage" in logged
    assert any("3 of 63 ids are not in" in n for n in result.notes)


def test_cli_and_compare_treat_it_like_a_run(case, tmp_path, mlflow_store):
    path = tmp_path / "predictions.csv"
    _write_derma(path, case)
    result = CliRunner().invoke(cli, ["eval-predictions", str(path), "--dataset", "ham10000", "--metadata",
                                      str(case["meta"]), "--tracking-uri", mlflow_store, "-o",
                                      "evaluation.bootstrap=20", "--model", "my-cnn"])
    assert result.exit_code == 0, result.output
    assert "test_macro_f1" in result.output and "no --val file" in result.output
    listed = CliRunner().invoke(cli, ["compare", "--experiment", "ham10000", "--tracking-uri", mlflow_store])
    assert listed.exit_code == 0, listed.output
    assert "external" in listed.output
    bad = CliRunner().invoke(cli, ["eval-predictions", str(path), "--dataset", "nosuch", "--tracking-uri",
                                   mlflow_store])
    assert bad.exit_code == 1 and "no such dataset" in bad.output
