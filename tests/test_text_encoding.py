"""Text files in any encoding (derma_core/textio.py): a byte the encoding cannot decode in an
answer, question, prediction, class-order, label-map or folder-spec file is one line naming the
file, the line and the byte offset, and saying what to do (``--encoding`` where the command has
it); ``--encoding`` reads files from other tools. No traceback, and no MLflow run is logged."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.testing import invoke_cli, one_line
from derma_core.textio import TextEncodingError, check_encoding, decode, read_text

CODES = list(HAM.codes)


# ---------------------------------------------------------------- the helper

def test_decode_names_line_offset_and_byte():
    data = b'{"a": 1}\r\n{"b": 2}\n{"c": "caf\xe9"}\n'
    assert data.index(b"\xe9") == 29
    with pytest.raises(TextEncodingError) as info:
        decode(data, "f.jsonl")
    assert str(info.value) == ("f.jsonl line 3, byte offset 29: 0xe9 is not valid utf-8 (invalid continuation "
                               "byte); pass the file's encoding with --encoding (e.g. --encoding latin-1)")
    assert (info.value.line, info.value.offset) == (3, 29)


def test_decode_counts_offsets_after_a_utf8_bom_and_suggests_utf16_for_utf16_files():
    with pytest.raises(TextEncodingError) as info:
        decode(codecs.BOM_UTF8 + b"x\n\xff", "f.csv")
    assert "f.csv line 2, byte offset 5: 0xff" in str(info.value)
    assert decode(codecs.BOM_UTF8 + b"ok\n", "f.csv") == "ok\n"
    with pytest.raises(TextEncodingError, match=r"line 1, byte offset 0: 0xff .*--encoding utf-16\)"):
        decode("hi\n".encode("utf-16"), "f.jsonl")
    assert decode("hé\n".encode("utf-16"), "f.jsonl", "utf-16") == "hé\n"


def test_an_unknown_encoding_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"--encoding 'latin-9x' is no encoding Python knows; use e.g. utf-8"):
        check_encoding("latin-9x")


def test_read_text_passes_a_missing_file_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "nope.txt")


# ---------------------------------------------------------------- derma eval-answers

def _answer_files(tmp: Path, texts: list[str], encoding: str = "utf-8") -> tuple[Path, Path]:
    q = tmp / "q.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "image": f"img{i}.jpg", "text": "Which?",
                                     "answer": CODES[i % 7]}) + "\n" for i in range(len(texts))))
    a = tmp / "a.jsonl"
    a.write_bytes("".join(json.dumps({"question_id": i, "text": t}, ensure_ascii=False) + "\n"
                          for i, t in enumerate(texts)).encode(encoding))
    return q, a


def _no_run(uri: str) -> None:
    assert mlflow.MlflowClient(uri).get_experiment_by_name("answer-files") is None, "no run may be logged"


def test_eval_answers_latin1_answer_file_is_one_line_naming_line_and_offset(tmp_path, mlflow_store):
    q, a = _answer_files(tmp_path, ["mel", "nv", "mélanome: mel"], "latin-1")
    code, out = invoke_cli("eval-answers", "-q", q, "-a", a, "--tracking-uri", mlflow_store)
    assert code == 1, out
    line = one_line(out, str(a), "line 3, byte offset", "0xe9", "not valid utf-8", "--encoding latin-1")
    offset = a.read_bytes().index(b"\xe9")
    assert f"byte offset {offset}:" in line
    _no_run(mlflow_store)


def test_eval_answers_bad_byte_in_the_question_file_names_the_question_file(tmp_path, mlflow_store):
    q, a = _answer_files(tmp_path, ["mel", "nv"])
    q.write_bytes(q.read_bytes().replace(b"Which?", b"Which\x93?", 1))  # a cp1252 curly quote
    code, out = invoke_cli("eval-answers", "-q", q, "-a", a, "--tracking-uri", mlflow_store)
    assert code == 1, out
    one_line(out, str(q), "line 1, byte offset", "0x93", "--encoding")
    _no_run(mlflow_store)


def test_eval_answers_with_encoding_reads_files_from_other_tools(tmp_path, mlflow_store):
    q, a = _answer_files(tmp_path, ["mel", "nv", "bkl — é"], "cp1252")
    code, out = invoke_cli("eval-answers", "-q", q, "-a", a, "--tracking-uri", mlflow_store, "--encoding", "cp1252",
                      "-o", "evaluation.bootstrap=0", "--parser", "strict")
    assert code == 0, out
    assert "3 questions, 0 invalid answers" in out
    q16, a16 = _answer_files(tmp_path, ["mel", "nv"], "utf-16")
    code, out = invoke_cli("eval-answers", "-q", q16, "-a", a16, "--tracking-uri", mlflow_store)
    assert code == 1 and "--encoding utf-16" in one_line(out, str(a16), "line 1, byte offset 0")


def test_eval_answers_unknown_encoding_is_a_usage_error(tmp_path, mlflow_store):
    q, a = _answer_files(tmp_path, ["mel"])
    code, out = invoke_cli("eval-answers", "-q", q, "-a", a, "--tracking-uri", mlflow_store, "--encoding", "klingon")
    assert code == 2, out
    one_line(out, "--encoding", "'klingon' is no encoding Python knows")


# ---------------------------------------------------------------- derma eval-predictions

@pytest.fixture
def predictions(tmp_path):
    """A HAM10000 metadata table and derma-format predictions over it."""
    n = 28
    rng = np.random.default_rng(3)
    ids = [f"ISIC_{9100000 + i:07d}" for i in range(n)]
    y = [CODES[i % 7] for i in range(n)]
    pd.DataFrame({"lesion_id": [f"HAM_{i:07d}" for i in range(n)], "image_id": ids, "dx": y, "dx_type": "histo",
                  "age": "40", "sex": "male", "localization": "back"}).to_csv(tmp_path / "HAM10000_metadata.csv",
                                                                             index=False)
    p = rng.dirichlet(np.ones(7), size=n)
    frame = pd.DataFrame({"id": ids, "label": y, "predicted": [CODES[k] for k in p.argmax(axis=1)]})
    for j, c in enumerate(CODES):
        frame[f"prob_{c}"] = p[:, j]
    frame["note"] = ["Lésion" if i == 5 else "" for i in range(n)]
    return tmp_path / "HAM10000_metadata.csv", frame


def test_eval_predictions_cp1252_file_is_one_line_and_reads_with_encoding(tmp_path, mlflow_store, predictions):
    meta, frame = predictions
    path = tmp_path / "preds.csv"
    path.write_bytes(frame.to_csv(index=False).encode("cp1252"))
    args = ["eval-predictions", path, "--dataset", "ham10000", "--metadata", meta, "--tracking-uri", mlflow_store,
            "-o", "evaluation.bootstrap=0"]
    code, out = invoke_cli(*args)
    assert code == 1, out
    one_line(out, "error:", str(path), "line 7, byte offset", "0xe9", "--encoding latin-1")
    assert mlflow.MlflowClient(mlflow_store).get_experiment_by_name("ham10000") is None
    code, out = invoke_cli(*args, "--encoding", "cp1252")
    assert code == 0, out
    assert "28 images" in out


def test_eval_predictions_class_order_file_in_another_encoding(tmp_path, mlflow_store, predictions):
    meta, frame = predictions
    cols = pd.DataFrame({"image_path": [f"imgs/{i}.jpg" for i in frame["id"]],
                         "true_label": [CODES.index(c) for c in frame["label"]],
                         "predicted_label": [CODES.index(c) for c in frame["predicted"]]})
    for j, c in enumerate(CODES):
        cols[f"probability_class_{j}"] = frame[f"prob_{c}"]
    path = tmp_path / "cols.csv"
    cols.to_csv(path, index=False)
    order = tmp_path / "classes.csv"
    names = ["Actinic keratoses", "Basal cell carcinoma", "Benign keratosis", "Dermatofibroma", "Melanoma",
             "Melanocytic nevi", "Vascular lesions"]
    codes_in_order = [HAM.lookup(n) for n in names]
    assert codes_in_order == CODES
    order.write_bytes(("diag,label\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names))
                       + "").replace("Melanoma", "Mélanoma").encode("latin-1"))
    code, out = invoke_cli("eval-predictions", path, "--dataset", "ham10000", "--metadata", meta, "--class-order", order,
                      "--tracking-uri", mlflow_store, "-o", "evaluation.bootstrap=0")
    assert code == 1, out
    one_line(out, "--class-order", str(order), "line 6, byte offset", "--encoding")


# ---------------------------------------------------------------- YAML files read by the core

def test_label_map_file_not_utf8_is_one_line(tmp_path):
    from derma_core.data.labelmaps import LabelMapError, read_specs

    path = tmp_path / "maps.yaml"
    path.write_bytes("maps:\n  - name: a\n    note: \"r\xe9sum\xe9\"\n".encode("latin-1"))
    with pytest.raises(LabelMapError) as info:
        read_specs(path)
    message = str(info.value)
    assert "\n" not in message
    offset = path.read_bytes().index(b"\xe9")
    assert message.startswith(f"{path} line 3, byte offset {offset}: 0xe9 is not valid utf-8")
    assert "save the file as UTF-8" in message


def test_folder_spec_not_utf8_is_one_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: mine\nmetadata: caf\xe9.csv\n")
    code, out = invoke_cli("prep", "--spec", spec, "--raw", tmp_path, "--out", tmp_path / "out")
    assert code == 1, out
    one_line(out, str(spec), "line 2, byte offset 24", "0xe9", "save the file as UTF-8")
    assert not (tmp_path / "out").exists()


def test_prep_metadata_table_in_latin1_is_one_line_and_reads_with_encoding(tmp_path):
    """A HAM10000 metadata table saved by a tool in latin-1 (a localization 'abdômen'): derma prep
    names the table, line and byte offset; --encoding latin-1 prepares it, the text decoded right."""
    from PIL import Image

    raw = tmp_path / "raw"
    images = raw / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    rng = np.random.default_rng(0)
    for i in range(9):  # 3 nevus lesions per split share: every split gets one
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"ISIC_{i:07d}.jpg")
        rows.append(f"HAM_{i:07d},ISIC_{i:07d},nv,histo,50,male,{'abdômen' if i == 4 else 'back'}")
    (raw / "HAM10000_metadata.csv").write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    out = tmp_path / "out"
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q")
    assert code == 1, output
    line = one_line(output, "HAM10000_metadata.csv", "line 6", "byte offset", "--encoding")
    assert line.startswith("error: ") and not (out / "manifest.json").exists()
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q",
                         "--encoding", "latin-1")
    assert code == 0, output
    kept = pd.concat(pd.read_csv(out / "splits" / f"{s}.csv", dtype=str) for s in ("train", "val", "test"))
    assert "abdômen" in set(kept["localization"])
