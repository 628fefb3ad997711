"""`derma prep`: verification, outputs, idempotence, incremental re-runs, resume, resize modes,
and the end-to-end run on the 75 real images (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import derma_core
from derma_core.data import prepare as prepmod
from derma_core.data.prepare import PrepParams, load_prepared, prepare
from derma_core.data.raw import PrepError
from derma_core.data import resize as resizemod
from derma_core.data.resize import PAD_COLOUR, load_resized, resampler, resize_image
from derma_core.data.splits import SPLITS
from derma_core.data.datasets.ham10000 import LABEL_SET
from derma_core.data.synthetic import generate

LABELS = LABEL_SET.codes


def shared_data() -> Path:
    return Path(os.environ.get("DERMA_SHARED_DATA") or Path(derma_core.__file__).parents[2] / "shared" / "data")


RAW_SAMPLE = shared_data() / "ham10000" / "raw_sample"
needs_real = pytest.mark.skipif(not (RAW_SAMPLE / "HAM10000_metadata.csv").exists(),
                                reason=f"real HAM10000 sample absent ({RAW_SAMPLE})")
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory) -> Path:
    """A small synthetic raw folder, generated once for this module (copy it before changing it)."""
    return generate(tmp_path_factory.mktemp("synth") / "raw", n=200, seed=3, workers=1)


@pytest.fixture()
def raw_copy(synth_raw, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(synth_raw, dst)
    return dst


def _image(raw: Path, image_id: str) -> Path:
    return next(raw.glob(f"HAM10000_images_part_*/{image_id}.jpg"))


def test_prepare_outputs(synth_raw, tmp_path):
    out = tmp_path / "prep"
    manifest = prepare(synth_raw, out, PrepParams(size=32, split="grouped"), workers=1, **QUIET)
    for name in ("manifest.json", "prep_report.json", "class_distribution.png", "cache/images.npy",
                 "splits/train.csv", "splits/val.csv", "splits/test.csv", "state.json"):
        assert (out / name).exists(), name
    assert not list((out / "cache").glob("*partial*"))
    ds = load_prepared(out)
    assert sum(len(s) for s in ds.splits.values()) == 200 == manifest["cache"]["shape"][0]
    for s in SPLITS:
        split = ds[s]
        assert split.cache.shape[1:] == (32, 32, 3) and split.cache.dtype == np.uint8
        assert isinstance(split.cache, np.memmap)
        assert set(split.labels) == set(LABELS), s  # every class in every split
        assert list(split.frame.columns[:4]) == ["id", "label", "group_id", "image_path"]
        assert {"lesion_id", "dx_type", "age", "sex", "localization"} <= set(split.frame.columns)
        assert (split.frame["group_id"] == split.frame["lesion_id"]).all()  # HAM10000 groups by lesion
        assert split.label_set == LABEL_SET
        # the cache row is the resized image written to images/
        on_disk = np.asarray(Image.open(split.image_path(0)), dtype=np.int16)
        assert np.abs(on_disk - split.cache[0]).mean() < 4  # JPEG q95 of the same pixels
        assert manifest["counts"][s]["images"] == len(split)
    lesions = [set(ds[s].group_ids) for s in SPLITS]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])
    assert ds.digest == manifest["digest"] and len(ds.digest) == 64
    # the dataset's facts travel with the folder; a generated raw folder is marked synthetic
    assert manifest["dataset"]["name"] == "ham10000" and manifest["dataset"]["labels"]["codes"] == list(LABELS)
    assert manifest["dataset"]["grouping"] == "lesion" and manifest["version"] == prepmod.PREP_VERSION
    assert manifest["synthetic"] is True and ds.synthetic is True and manifest["name"] == "ham10000"
    assert ds.descriptor.name == "ham10000" and ds.label_set == LABEL_SET and ds.descriptor.reader is not None


def test_rerun_is_a_no_op_and_size_change_rebuilds(synth_raw, tmp_path):
    out = tmp_path / "prep"
    first = prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    messages = []
    again = prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, progress=False,
                    log=messages.append)
    assert again == first and any("up to date" in m for m in messages)
    bigger = prepare(synth_raw, out, PrepParams(size=40, split="grouped"), workers=1, **QUIET)
    assert bigger["digest"] != first["digest"]
    assert load_prepared(out)["train"].cache.shape[1:] == (40, 40, 3)
    report = json.loads((out / "prep_report.json").read_text())
    assert report["summary"]["images_resized"] == 200  # a new size re-resizes everything


def test_incremental_rerun_resizes_only_changed_images(raw_copy, tmp_path):
    out = tmp_path / "prep"
    prepare(raw_copy, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    before = load_prepared(out)
    changed_id = before["test"].ids[0]
    src = _image(raw_copy, changed_id)
    Image.open(src).transpose(Image.FLIP_LEFT_RIGHT).save(src, quality=90)
    manifest = prepare(raw_copy, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    report = json.loads((out / "prep_report.json").read_text())
    assert report["summary"]["images_resized"] == 1 and report["summary"]["images_reused"] == 199
    after = load_prepared(out)
    assert manifest["digest"] != json.loads(json.dumps(before.manifest))["digest"]  # content changed
    np.testing.assert_array_equal(after["train"].cache, before["train"].cache)
    flipped = before["test"].cache[0][:, ::-1].astype(np.int16)
    assert np.abs(after["test"].cache[0] - flipped).mean() < 3  # the re-saved JPEG, mirrored
    assert np.abs(after["test"].cache[0] - before["test"].cache[0].astype(np.int16)).mean() > 3


def test_interrupted_run_resumes(synth_raw, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    real = prepmod.resize_into_cache

    def interrupted(cache_path, jobs, *args, on_done=None, **kw):
        jobs = list(jobs)
        real(cache_path, jobs[:80], *args, on_done=on_done, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepmod, "resize_into_cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    assert not (out / "manifest.json").exists() and (out / prepmod.PARTIAL).exists()
    monkeypatch.setattr(prepmod, "resize_into_cache", real)
    messages = []
    prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, progress=False, log=messages.append)
    assert any("resuming" in m for m in messages)
    assert json.loads((out / "prep_report.json").read_text())["summary"]["images_resized"] == 120
    clean = tmp_path / "clean"
    prepare(synth_raw, clean, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    np.testing.assert_array_equal(np.load(out / "cache/images.npy"), np.load(clean / "cache/images.npy"))
    assert load_prepared(out).digest == load_prepared(clean).digest


def test_resume_redoes_rows_lost_before_they_reached_the_disk(synth_raw, tmp_path, monkeypatch):
    """Cache rows are not fsynced: after a power cut the log may call a row done that is all
    zeros on disk; the resumed run finds and redoes such rows."""
    out = tmp_path / "prep"
    real = prepmod.resize_into_cache

    def interrupted(cache_path, jobs, *args, on_done=None, **kw):
        real(cache_path, list(jobs)[:80], *args, on_done=on_done, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepmod, "resize_into_cache", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    monkeypatch.setattr(prepmod, "resize_into_cache", real)
    partial = np.load(out / prepmod.PARTIAL, mmap_mode="r+")
    logged = [int(line.split("\t")[0]) for line in (out / prepmod.PARTIAL_LOG).read_text().splitlines()]
    lost = logged[:5]
    partial[lost] = 0
    partial.flush()
    del partial
    prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    assert json.loads((out / "prep_report.json").read_text())["summary"]["images_resized"] == 125
    clean = tmp_path / "clean"
    prepare(synth_raw, clean, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    np.testing.assert_array_equal(np.load(out / "cache/images.npy"), np.load(clean / "cache/images.npy"))


def test_the_resampler_is_recorded_and_a_new_one_rebuilds(synth_raw, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    first = prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    assert first["resampler"] == resampler()
    monkeypatch.setattr(prepmod, "resampler", lambda: "lanczos (some other library 1.0)")
    second = prepare(synth_raw, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    assert second["resampler"] == "lanczos (some other library 1.0)"
    summary = json.loads((out / "prep_report.json").read_text())["summary"]
    assert summary["images_resized"] == 200 and summary["images_reused"] == 0
    assert second["digest"] != first["digest"]


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_fast_resampler_matches_pillows_lanczos(synth_raw, monkeypatch, mode):
    """cykooz-resizer (SIMD fast_image_resize) and Pillow's Lanczos give the same pixels to within
    2 grey levels; without cykooz-resizer, Pillow does the resize."""
    pytest.importorskip("cykooz_resizer", reason="cykooz-resizer has no wheel for this platform")
    path = next(synth_raw.glob("HAM10000_images_part_1/*.jpg"))
    assert "cykooz-resizer" in resampler()
    fast = np.asarray(load_resized(path, 96, mode), dtype=np.int16)
    monkeypatch.setattr(resizemod, "_fast_resizer", lambda: None)
    assert resampler().startswith("lanczos (pillow ")
    slow = np.asarray(load_resized(path, 96, mode), dtype=np.int16)
    assert fast.shape == slow.shape == (96, 96, 3)
    assert np.abs(fast - slow).max() <= 2 and np.abs(fast - slow).mean() < 0.5


def test_parallel_workers_give_the_same_cache(synth_raw, tmp_path):
    one = prepare(synth_raw, tmp_path / "one", PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    two = prepare(synth_raw, tmp_path / "two", PrepParams(size=24, split="grouped"), workers=2, **QUIET)
    assert one["digest"] == two["digest"]
    np.testing.assert_array_equal(np.load(tmp_path / "one/cache/images.npy"), np.load(tmp_path / "two/cache/images.npy"))


def test_problems_reported_one_line_each(raw_copy, tmp_path):
    meta_path = raw_copy / "HAM10000_metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    truncated, missing = meta["image_id"][0], meta["image_id"][1]
    path = _image(raw_copy, truncated)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _image(raw_copy, missing).unlink()
    Image.new("RGB", (60, 45)).save(raw_copy / "HAM10000_images_part_1" / "ISIC_9999999.jpg")  # no row
    (raw_copy / "HAM10000_images_part_2" / "ISIC_8888888.jpg").write_bytes(b"")  # empty, no row either
    out = tmp_path / "prep"
    lines = []
    manifest = prepare(raw_copy, out, PrepParams(size=24, split="grouped"), workers=1, progress=False, log=lines.append)
    assert manifest["cache"]["shape"][0] == 198
    report = json.loads((out / "prep_report.json").read_text())
    codes = report["problem_counts"]
    assert codes["truncated_image"] == 1 and codes["missing_image"] == 1 and codes["orphan_image"] == 2
    text = "\n".join(lines)
    assert f"HAM10000_metadata.csv line 3 ({missing}): no image file {missing}.jpg" in text
    assert f"{truncated}.jpg: cannot be decoded" in text and "truncated" in text
    problem_lines = [l for l in lines if l.startswith("warning:")]
    assert all("\n" not in l and "; " in l for l in problem_lines)  # one line, with what to do
    ds = load_prepared(out)
    all_ids = {i for s in SPLITS for i in ds[s].ids}
    assert truncated not in all_ids and missing not in all_ids
    # the same input under --strict stops, listing the problems
    with pytest.raises(PrepError) as err:
        prepare(raw_copy, tmp_path / "strict", PrepParams(size=24, split="grouped"), workers=1, strict=True, **QUIET)
    assert "--strict" in str(err.value) and f"({missing})" in str(err.value)


@pytest.mark.parametrize("edit, code, needle", [
    (lambda m: m.assign(dx=m["dx"].where(m.index != 4, "melanoma-ish")), "unknown_label", "unknown label 'melanoma-ish'"),
    (lambda m: pd.concat([m, m.iloc[[0]].assign(dx="vasc" if m["dx"][0] != "vasc" else "nv")]), "duplicate_row",
     "appears 2 times with different values"),
    (lambda m: m.assign(lesion_id=m["lesion_id"].where(m.index != 1, m["lesion_id"][0]),
                        dx=m["dx"].where(m.index != 1, "vasc" if m["dx"][0] != "vasc" else "nv")),
     "group_two_labels", "one lesion carries 2 labels"),
    (lambda m: m.drop(columns=["dx"]), "missing_column", "required column 'dx' is missing"),
])
def test_fatal_problems_stop_preparation(raw_copy, tmp_path, edit, code, needle):
    meta_path = raw_copy / "HAM10000_metadata.csv"
    edit(pd.read_csv(meta_path, dtype=str, keep_default_na=False)).to_csv(meta_path, index=False)
    out = tmp_path / "prep"
    with pytest.raises(PrepError) as err:
        prepare(raw_copy, out, PrepParams(size=24, split="grouped"), workers=1, **QUIET)
    assert needle in str(err.value)
    assert str(err.value).splitlines()[0].startswith("error: ")
    report = json.loads((out / "prep_report.json").read_text())
    assert report["problem_counts"].get(code, 0) >= 1 and report["fatal"] >= 1
    assert not (out / "manifest.json").exists()


def test_renamed_column_is_read_with_a_warning(raw_copy, tmp_path):
    meta_path = raw_copy / "HAM10000_metadata.csv"
    pd.read_csv(meta_path, dtype=str, keep_default_na=False).rename(columns={"dx": "Diagnosis"}).to_csv(
        meta_path, index=False)
    lines = []
    prepare(raw_copy, tmp_path / "p", PrepParams(size=24, split="grouped"), workers=1, progress=False, log=lines.append)
    assert any("column 'Diagnosis' read as 'dx'" in l for l in lines)


def test_single_png_folder_and_lowercase_kaggle_layout(synth_raw, tmp_path):
    raw = tmp_path / "raw"
    (raw / "ham10000_images_part_1").mkdir(parents=True)
    meta = pd.read_csv(synth_raw / "HAM10000_metadata.csv", dtype=str, keep_default_na=False).iloc[:30]
    meta.to_csv(raw / "HAM10000_metadata.csv", index=False)
    for image_id in meta["image_id"]:
        with Image.open(_image(synth_raw, image_id)) as im:  # small PNGs: full-size noisy PNGs are slow to write
            im.resize((150, 112)).save(raw / "ham10000_images_part_1" / f"{image_id}.png", compress_level=1)
    manifest = prepare(raw, tmp_path / "p", PrepParams(size=16, split="grouped"), workers=1, **QUIET)
    assert manifest["cache"]["shape"][0] == 30


def test_folds_are_written_and_loadable(synth_raw, tmp_path):
    out = tmp_path / "p"
    prepare(synth_raw, out, PrepParams(size=16, split="grouped", folds=3), workers=1, **QUIET)
    folds = pd.read_csv(out / "splits" / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert folds.groupby("group_id")["fold"].nunique().max() == 1
    base = load_prepared(out)
    for k in range(3):
        ds = load_prepared(out, fold=k)
        assert len(ds["train"]) + len(ds["val"]) == len(base["train"]) + len(base["val"])
        assert not set(ds["train"].group_ids) & set(ds["val"].group_ids)
        assert ds["test"].ids == base["test"].ids
        i = ds["val"].ids[0]
        src = base["train"] if i in base["train"].ids else base["val"]
        np.testing.assert_array_equal(ds["val"].cache[0], src.cache[src.ids.index(i)])


def test_resize_modes():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (140, 0, 160, 100))  # a blue stripe in the middle
    squash = np.asarray(resize_image(wide, 32, "squash"))
    pad = np.asarray(resize_image(wide, 32, "pad"))
    crop = np.asarray(resize_image(wide, 32, "crop"))
    assert squash.shape == pad.shape == crop.shape == (32, 32, 3)
    assert tuple(pad[0, 0]) == PAD_COLOUR and tuple(pad[-1, -1]) == PAD_COLOUR
    assert tuple(pad[16, 1]) != PAD_COLOUR  # the image fills the middle band
    assert (squash[:, 0, 0] > 200).all() and (crop[:, 0, 0] > 200).all()
    # the crop keeps the middle third, so the stripe is three times wider than when squashed
    assert (crop[16, :, 2] > 128).sum() > 2 * (squash[16, :, 2] > 128).sum()
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(wide, 32, "stretch")


def test_draft_decoding_matches_a_full_decode(synth_raw):
    path = next(synth_raw.glob("HAM10000_images_part_1/*.jpg"))
    fast = np.asarray(load_resized(path, 64, "squash"), dtype=np.int16)
    with Image.open(path) as im:
        slow = np.asarray(im.convert("RGB").resize((64, 64), Image.LANCZOS), dtype=np.int16)
    assert np.abs(fast - slow).mean() < 3


def test_prep_cli(synth_raw, tmp_path):
    from derma_core.cli import cli

    out = tmp_path / "p"
    result = CliRunner().invoke(cli, ["prep", "--raw", str(synth_raw), "--out", str(out), "--size", "16",
                                      "--split", "grouped", "--ratios", "0.6,0.2,0.2", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "prepared 200 images" in result.output
    assert json.loads((out / "manifest.json").read_text())["params"]["ratios"] == [0.6, 0.2, 0.2]
    bad = CliRunner().invoke(cli, ["prep", "--raw", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 1 and "no such folder" in bad.output and len(bad.output.strip().splitlines()) == 1


@needs_real
def test_prep_real_sample_end_to_end(tmp_path):
    from derma_core.cli import cli

    out = tmp_path / "prepared"
    result = CliRunner().invoke(cli, ["prep", "--raw", str(RAW_SAMPLE), "--out", str(out), "--size", "64",
                                      "--split", "grouped", "--workers", "2", "-q"])
    assert result.exit_code == 0, result.output
    ds = load_prepared(out)
    assert sum(len(s) for s in ds.splits.values()) == 75
    for s in SPLITS:
        assert set(ds[s].labels) == set(LABELS)
        assert ds[s].cache.shape[1:] == (64, 64, 3)
    report = json.loads((out / "prep_report.json").read_text())
    assert report["fatal"] == 0 and report["warnings"] == 0
    # the seed split runs on it too
    seed = prepare(RAW_SAMPLE, tmp_path / "seed", PrepParams(size=16, split="seed"), workers=1, **QUIET)
    assert sum(v["images"] for v in seed["counts"].values()) == 75


@needs_real
def test_real_truncated_jpeg_and_row_without_image(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(RAW_SAMPLE, raw)
    meta = pd.read_csv(raw / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    victim, gone = meta["image_id"][10], meta["image_id"][20]
    path = _image(raw, victim)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:30_000])
    _image(raw, gone).unlink()
    lines = []
    manifest = prepare(raw, tmp_path / "p", PrepParams(size=32, split="grouped"), workers=1, progress=False,
                       log=lines.append)
    assert manifest["cache"]["shape"][0] == 73
    text = "\n".join(lines)
    assert f"warning: {path}: cannot be decoded" in text and "truncated" in text
    assert f"HAM10000_metadata.csv line 22 ({gone}): no image file {gone}.jpg" in text
    report = json.loads((tmp_path / "p" / "prep_report.json").read_text())
    assert report["problem_counts"] == {"truncated_image": 1, "missing_image": 1}
