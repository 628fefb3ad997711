"""Cross-dataset evaluation end to end on synthetic sets drawn like two datasets with different
label sets (``derma synth --like ham10000`` / ``--like pad_ufes_20``, ``derma prep --dataset``):
copies of HAM10000 training images planted in the PAD-UFES-20 set (same id, renamed file,
re-encoded and resized file, a published duplicate list) are each found by the leakage guard and
excluded from a ``derma run --eval-dataset``, whose metrics are checked by hand through the label
map; ``derma report`` shows the run beside prediction files evaluated with ``derma eval-predictions``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from derma_core import tracking
from derma_core.cli import cli
from derma_core.data import labelmaps, overlap
from derma_core.data.datasets import ham10000, pad_ufes_20

N_HAM, N_PAD, SIZE = 240, 200, 32


def _invoke(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A: synthetic HAM10000 prepared at 32 px. B: synthetic PAD-UFES-20 with four planted copies
    of A's training images, prepared at 32 px. Returns paths and the planted ids by kind."""
    root = tmp_path_factory.mktemp("cross")
    ham_raw, pad_raw = root / "ham_raw", root / "pad_raw"
    _invoke(["synth", "--like", "ham10000", "--out", ham_raw, "--n", N_HAM, "--seed", 1, "--workers", 1, "-q"])
    _invoke(["prep", "--dataset", "ham10000", "--raw", ham_raw, "--out", root / "ham", "--size", SIZE, "-q"])
    _invoke(["synth", "--like", "pad_ufes_20", "--out", pad_raw, "--n", N_PAD, "--seed", 2, "--workers", 1, "-q"])
    train = pd.read_csv(root / "ham" / "splits" / "train.csv", dtype=str)
    x, y, z, w = train["id"].iloc[[0, 5, 10, 15]]
    ham_files = {p.stem: p for p in ham_raw.rglob("*.jpg")}
    meta = pd.read_csv(pad_raw / "metadata.csv", dtype=str, keep_default_na=False)
    template = meta[meta["diagnostic"] == "BCC"].iloc[0]
    folder = pad_raw / "images" / "imgs_part_1"
    pad_file = next(folder.glob("*.png"))
    rows = []

    def plant(name: str, patient: int) -> None:
        row = template.copy()
        row["img_id"], row["patient_id"], row["lesion_id"] = name, f"PAT_{patient}", str(patient)
        rows.append(row)

    shutil.copy(pad_file, folder / f"{x}.png")  # same id as A's image x, other pixels: id only
    plant(f"{x}.png", 9001)
    shutil.copy(ham_files[y], folder / "PAT_9002_9002_9002.jpg")  # A's file renamed: bytes (and pixels)
    plant("PAT_9002_9002_9002.jpg", 9002)
    with Image.open(ham_files[z]) as im:  # A's image re-encoded as PNG at 70 %: pixels only
        im.resize((im.width * 7 // 10, im.height * 7 // 10)).save(folder / "PAT_9003_9003_9003.png")
    plant("PAT_9003_9003_9003.png", 9003)
    listed = meta["img_id"].iloc[7].rsplit(".", 1)[0]  # an ordinary PAD image the published list pairs with w
    (pad_raw / "ISIC_2020_Training_Duplicates.csv").write_text(f"image_name_1,image_name_2\n{w},{listed}\n")
    pd.concat([meta, pd.DataFrame(rows)], ignore_index=True).to_csv(pad_raw / "metadata.csv", index=False)
    _invoke(["prep", "--dataset", "pad_ufes_20", "--raw", pad_raw, "--out", root / "pad", "--size", SIZE, "-q"])
    planted = {"id": {x}, "bytes": {"PAT_9002_9002_9002"}, "pixels": {"PAT_9002_9002_9002", "PAT_9003_9003_9003"},
               "listed": {listed}}
    return {"root": root, "ham": root / "ham", "pad": root / "pad", "planted": planted}


def test_overlap_finds_every_planted_copy(sets):
    result = overlap.overlap_of_folders(sets["ham"], sets["pad"])
    for kind, ids in sets["planted"].items():
        assert result.b_ids(kind) == ids, kind  # every planted copy, and nothing else
    everything = set().union(*sets["planted"].values())
    assert result.counts["total"] == len(everything) == 4
    out = _invoke(["overlap", f"ham10000={sets['ham']}", f"pad_ufes_20={sets['pad']}", "--json"])
    payload = json.loads(out.output)
    assert {k: payload[k] for k in ("id", "bytes", "pixels", "listed", "total")} == result.counts
    assert {p["b_id"] for p in payload["pairs"]} == everything
    text = _invoke(["overlap", f"ham10000={sets['ham']}", f"pad_ufes_20={sets['pad']}"]).output
    assert "total" in text and "distinct images of pad_ufes_20" in text
    # the hashes were cached beside the image cache, once per folder
    assert (sets["pad"] / overlap.PHASH_FILE).exists()


def _prior(sets):
    train = pd.read_csv(sets["ham"] / "splits" / "train.csv", dtype=str)
    counts = train["label"].value_counts()
    return np.array([counts.get(c, 0) for c in ham10000.LABEL_SET.codes], dtype=float) / len(train)


@pytest.fixture(scope="module")
def cross_run(sets, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    out = _invoke(["run", "--plugin", "prior", "--dataset", "ham10000", "--data-dir", sets["ham"], "--eval-dataset",
                   f"pad_ufes_20={sets['pad']}", "--eval-split", "all", "--tracking-uri", uri, "-q",
                   "-o", "evaluation.bootstrap=20", "-o", f"output.work_dir={sets['root'] / 'work'}"])
    run_id = out.output.split("MLflow run id: ")[1].split()[0]
    return {"uri": uri, "run_id": run_id, "output": out.output}


def test_run_evaluates_both_datasets_through_the_map(sets, cross_run):
    uri, run_id = cross_run["uri"], cross_run["run_id"]
    run = tracking.get_run(run_id, uri)
    metrics, tags = run.data.metrics, run.data.tags
    assert "test_macro_f1" in metrics and "eval_pad_ufes_20_macro_f1" in metrics  # both datasets
    frames = [pd.read_csv(sets["pad"] / "splits" / f"{s}.csv", dtype=str) for s in ("train", "val", "test")]
    pad = pd.concat(frames, ignore_index=True)
    planted = set().union(*sets["planted"].values())
    n_scc = int((pad["label"] == "scc").sum())
    assert metrics["eval_pad_ufes_20_images_total"] == len(pad)
    assert metrics["eval_pad_ufes_20_excluded_class_scc"] == metrics["eval_pad_ufes_20_excluded_classes"] == n_scc
    assert metrics["eval_pad_ufes_20_overlap_total"] == metrics["eval_pad_ufes_20_excluded_overlap"] == 4
    assert metrics["eval_pad_ufes_20_images"] == len(pad) - n_scc - 4
    # by hand: the prior's probabilities summed through the map, the top class is its prediction everywhere
    prior = _prior(sets)
    label_map = labelmaps.resolve_label_map("ham10000", ham10000.LABEL_SET, "pad_ufes_20", pad_ufes_20.LABEL_SET)
    summed = prior @ label_map.matrix
    top = label_map.evaluated.codes[int(summed.argmax())]
    kept = pad[(pad["label"] != "scc") & ~pad["id"].isin(planted)]
    assert metrics["eval_pad_ufes_20_accuracy"] == pytest.approx(float((kept["label"] == top).mean()))
    codes = ham10000.LABEL_SET.codes
    assert metrics["eval_pad_ufes_20_unmapped_probability"] == pytest.approx(prior[codes.index("df")]
                                                                              + prior[codes.index("vasc")])
    table = tracking.load_run_table(run_id, "predictions_eval_pad_ufes_20.csv", uri)
    assert set(table.columns) >= {f"prob_{c}" for c in label_map.evaluated.codes}
    np.testing.assert_allclose(table[[f"prob_{c}" for c in label_map.evaluated.codes]].iloc[0], summed / summed.sum())
    # what was excluded, and why, is an artifact; the map is logged
    excluded = tracking.load_run_table(run_id, "cross_dataset/pad_ufes_20/excluded.csv", uri)
    assert set(excluded.loc[excluded["reason"] == "overlap", "id"]) == planted
    assert (excluded["reason"] == "no counterpart").sum() == n_scc
    logged_map = tracking.load_run_dict(run_id, "cross_dataset/pad_ufes_20/label_map.json", uri)
    assert logged_map["excluded_target"] == ["scc"] and logged_map["unmapped_source"] == ["df", "vasc"]
    assert "ham10000 -> pad_ufes_20" in tags["derma.label_map.pad_ufes_20"]
    assert tags["derma.eval_datasets"] == "pad_ufes_20" and "derma.allow_overlap" not in tags
    assert "eval_pad_ufes_20:" in cross_run["output"] and "4 overlapping" in cross_run["output"]


def test_allow_overlap_keeps_them_with_a_warning_and_a_tag(sets, cross_run):
    out = _invoke(["run", "--plugin", "prior", "--dataset", "ham10000", "--data-dir", sets["ham"], "--eval-dataset",
                   f"pad_ufes_20={sets['pad']}", "--eval-split", "all", "--allow-overlap", "--tracking-uri",
                   cross_run["uri"], "-q", "-o", "evaluation.bootstrap=0",
                   "-o", "evaluation.evaluators=[classification]",
                   "-o", f"output.work_dir={sets['root'] / 'work'}"])
    assert "warning:" in out.output and "KEPT (--allow-overlap)" in out.output
    run_id = out.output.split("MLflow run id: ")[1].split()[0]
    run = tracking.get_run(run_id, cross_run["uri"])
    assert run.data.tags["derma.allow_overlap"] == "true"
    metrics = run.data.metrics
    assert metrics["eval_pad_ufes_20_excluded_overlap"] == 0 and metrics["eval_pad_ufes_20_overlap_total"] == 4
    assert metrics["eval_pad_ufes_20_images"] == metrics["eval_pad_ufes_20_images_total"] - metrics[
        "eval_pad_ufes_20_excluded_classes"]


def test_bad_eval_dataset_stops_before_any_run(sets, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(cli, ["run", "--plugin", "prior", "--dataset", "ham10000", "--data-dir", sets["ham"],
                                      "--eval-dataset", f"isic2019={sets['pad']}", "--tracking-uri", uri, "-q"])
    assert result.exit_code != 0
    assert "prepared as dataset 'pad_ufes_20'" in result.output
    assert not tracking.list_runs(uri)


def test_report_shows_the_cross_dataset_table_beside_external_runs(sets, cross_run, tmp_path):
    from derma_core.report import build_report

    uri, run_id = cross_run["uri"], cross_run["run_id"]
    # the run's own HAM10000 predictions, as derma wrote them, evaluated again as a file
    own = tracking.load_run_table(run_id, "predictions.csv", uri)
    own.to_csv(tmp_path / "predictions.csv", index=False)
    ext_ham = _invoke(["eval-predictions", tmp_path / "predictions.csv", "--dataset", "ham10000", "--data-dir",
                       sets["ham"], "--tracking-uri", uri, "-o", "evaluation.bootstrap=20"])
    # another model's predictions on PAD-UFES-20's test split, image_path,true_label,... with a class order
    test = pd.read_csv(sets["pad"] / "splits" / "test.csv", dtype=str)
    codes = list(pad_ufes_20.LABEL_SET.codes)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(len(codes)), size=len(test))
    frame = pd.DataFrame({"image_path": "pad/" + test["image_path"],
                          "true_label": [codes.index(c) for c in test["label"]],
                          "predicted_label": p.argmax(axis=1)})
    for k in range(len(codes)):
        frame[f"probability_class_{k}"] = p[:, k]
    frame.to_csv(tmp_path / "pad_predictions.csv", index=False)
    ext_pad = _invoke(["eval-predictions", tmp_path / "pad_predictions.csv", "--dataset", "pad_ufes_20", "--data-dir",
                       sets["pad"], "--class-order", ",".join(codes), "--tracking-uri", uri, "-o",
                       "evaluation.bootstrap=20"])
    ids = [run_id] + [r.output.split("MLflow run id: ")[1].split()[0] for r in (ext_ham, ext_pad)]
    report = build_report(ids, uri=uri, n_resamples=20)
    assert [r.record.run_id for r in report.runs] == ids
    markdown, _ = report.markdown(tmp_path / "figs", "figs")
    assert "Cross-dataset evaluation" in markdown
    table = next(p for h, items in report.sections() if h == "Cross-dataset evaluation"
                 for k, p in items if k == "table:cross-dataset")
    assert list(table["run"]) == [r.record.label for r in report.runs]
    cell = dict(zip(table["run"], table["pad_ufes_20 macro-F1"]))
    metrics = tracking.get_run(ids[2], uri).data.metrics
    assert cell[report.runs[2].record.label].startswith(f"{metrics['test_macro_f1']:.3f} [")
    assert cell[report.runs[0].record.label].startswith(
        f"{tracking.get_run(run_id, uri).data.metrics['eval_pad_ufes_20_macro_f1']:.3f} [")
    assert "4 excluded" in markdown and "scc" in markdown
