"""Every image is decoded right or refused with its name (issue 20, family 2).

Decoding goes by mode (16-bit and float scaled, palette and alpha handled); images with a side
under ``--min-side`` or over Pillow's decompression-bomb limit are refused, a dangling symbolic
link is a named problem, and every warning the decoder gives becomes a named, counted entry of
the prep report."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from derma_core.cli import cli
from derma_core.data import resize as resizemod
from derma_core.data.prepare import PrepParams, load_prepared, prepare
from derma_core.data.raw import PrepError
from derma_core.data.resize import ImageRefused, load_resized, to_rgb
from derma_core.data.synthetic import generate
from derma_core.testing import as_prepared_by_an_earlier_derma

SIZE = 16
QUIET = dict(progress=False, log=lambda m: None)


# ---------------------------------------------------------------- decoding by mode

def _gradient(dtype=np.uint16, top=65535) -> np.ndarray:
    return np.linspace(0, top, 64 * 48).reshape(48, 64).astype(dtype)


def test_16_bit_greyscale_png_is_scaled_by_its_bit_depth(tmp_path):
    values = _gradient()
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow reads it as 16-bit
        rgb = np.asarray(to_rgb(im))
    expected = np.rint(values / 257.0)
    assert rgb.shape == (48, 64, 3) and np.abs(rgb[..., 0] - expected).max() <= 1
    # through the resize too: not the all-white image convert("RGB") clips it to
    out = np.asarray(load_resized(path, SIZE))
    assert 100 < out.mean() < 155 and out.min() < 30 and out.max() > 225


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_modes_of_both_byte_orders(mode):
    values = _gradient()
    image = Image.frombytes(mode, (64, 48), values.astype(">u2" if mode.endswith("B") else "<u2").tobytes())
    assert np.abs(np.asarray(to_rgb(image))[..., 0] - np.rint(values / 257.0)).max() <= 1


def test_32_bit_int_and_float_images_are_scaled_by_their_range():
    in16 = Image.fromarray(_gradient(np.int32), "I")  # a 16-bit PNG as older Pillows read it
    assert np.asarray(to_rgb(in16))[..., 0].max() == 255 and np.asarray(to_rgb(in16))[..., 0].min() == 0
    wide = Image.fromarray(_gradient(np.int32, 1 << 20) - (1 << 19), "I")  # beyond 16 bits, negative
    w = np.asarray(to_rgb(wide))[..., 0]
    assert w.min() == 0 and w.max() == 255 and 120 < w.mean() < 135
    unit = Image.fromarray(np.full((8, 8), 0.5, np.float32), "F")  # float in 0..1
    assert np.asarray(to_rgb(unit))[0, 0, 0] in (127, 128)
    hdr = Image.fromarray(np.linspace(-3.0, 40.0, 64, dtype=np.float32).reshape(8, 8), "F")
    h = np.asarray(to_rgb(hdr))[..., 0]
    assert h.min() == 0 and h.max() == 255


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    rgba.putpixel((0, 0), (200, 10, 10, 255))
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (200, 10, 10) and tuple(out[4, 4]) == (255, 255, 255)
    half = np.asarray(to_rgb(Image.new("LA", (4, 4), (0, 128))))
    assert 125 <= half[0, 0, 0] <= 129  # half-transparent black on white
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (10, 20, 30)  # through the palette
    palette.info["transparency"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Palette images with Transparency" warning either
        assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (255, 255, 255)
    opaque = Image.new("RGBA", (4, 4), (9, 8, 7, 255))
    assert tuple(np.asarray(to_rgb(opaque))[0, 0]) == (9, 8, 7)


def test_cmyk_and_exif_orientation_as_before(tmp_path):
    cmyk = Image.new("CMYK", (40, 20), (0, 255, 255, 0))  # red
    red = np.asarray(load_resized(_save(cmyk, tmp_path / "c.jpg"), 8))[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "o.jpg"
    wide.save(path, exif=exif, quality=95)
    out = np.asarray(load_resized(path, 8, "squash"))
    assert out[0, 4, 2] > 200 and out[7, 4, 0] > 200  # blue on top after turning upright


def _save(image, path: Path) -> Path:
    image.save(path)
    return path


def test_too_small_and_bomb_images_are_refused_with_a_code(tmp_path, monkeypatch):
    tiny = _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "tiny.png")
    with pytest.raises(ImageRefused) as err:
        load_resized(tiny, SIZE, min_side=16)
    assert err.value.code == "image_too_small" and "1x1 pixels" in str(err.value)
    assert load_resized(tiny, SIZE, min_side=1).size == (SIZE, SIZE)
    big = _save(Image.new("RGB", (60, 60)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageRefused) as err:
        load_resized(big, SIZE)
    assert err.value.code == "image_too_large"
    warned = _save(Image.new("RGB", (40, 40)), tmp_path / "warned.png")
    caught: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing printed: it goes to ``caught``
        load_resized(warned, SIZE, caught=caught)
    assert len(caught) == 1 and caught[0].startswith("DecompressionBombWarning: ")


# ---------------------------------------------------------------- through derma prep

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("decode") / "raw", n=168, seed=8, workers=1)


@pytest.fixture()
def raw(synth, tmp_path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(synth, dst)
    return dst


def _ids(raw: Path) -> list[str]:
    return pd.read_csv(raw / "HAM10000_metadata.csv", dtype=str)["image_id"].tolist()


def _jpg(raw: Path, image_id: str) -> Path:
    return next(raw.glob(f"HAM10000_images_part_*/{image_id}.jpg"))


def _replace(raw: Path, image_id: str, image: Image.Image | None = None, link: str | None = None) -> Path:
    """Put ``image`` (as a PNG) or a symbolic link to ``link`` in place of an image's JPEG."""
    old = _jpg(raw, image_id)
    old.unlink()
    if link is not None:
        path = old
        os.symlink(link, path)
    else:
        path = old.with_suffix(".png")
        image.save(path)
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "prep_report.json").read_text())


def _row(out: Path, image_id: str) -> np.ndarray:
    ds = load_prepared(out)
    for split in ds.splits.values():
        if image_id in split.ids:
            return np.asarray(split.cache[split.ids.index(image_id)])
    raise KeyError(image_id)


def test_prep_decodes_16_bit_and_alpha_pngs_right(raw, tmp_path):
    ids = _ids(raw)
    with Image.open(_jpg(raw, ids[0])) as im:
        grey = im.convert("L")
        colour = im.convert("RGB")
    _replace(raw, ids[0], Image.fromarray(np.asarray(grey).astype(np.uint16) * 257))  # 16-bit grey
    cut_out = colour.convert("RGBA")
    alpha = np.zeros(colour.size[::-1], np.uint8)
    alpha[:, : colour.size[0] // 2] = 255  # left half opaque, right half transparent
    cut_out.putalpha(Image.fromarray(alpha))
    _replace(raw, ids[1], cut_out)
    out = tmp_path / "prep"
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    assert not _report(out)["problems"]
    expected = np.asarray(grey.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.int16)
    row = _row(out, ids[0]).astype(np.int16)
    assert np.abs(row[..., 0] - expected).mean() < 3  # the grey image, not all white
    right = _row(out, ids[1])[:, SIZE // 2 + 2:]
    assert (right > 250).all()  # transparent: white


def test_prep_names_every_refused_or_warned_image(raw, tmp_path, monkeypatch):
    ids = _ids(raw)
    tiny = _replace(raw, ids[0], Image.new("RGB", (1, 1), (200, 100, 50)))
    dangling = _replace(raw, ids[1], link=str(tmp_path / "gone" / f"{ids[1]}.jpg"))
    big = _replace(raw, ids[2], Image.new("RGB", (700, 700), (90, 60, 40)))  # 490,000 pixels: warned
    bomb = _replace(raw, ids[3], Image.new("RGB", (800, 800), (90, 60, 40)))  # 640,000: over twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)  # synthetic images are 600x450 = 270,000
    out = tmp_path / "prep"
    result = CliRunner().invoke(cli, ["prep", "--raw", str(raw), "--out", str(out), "--size", str(SIZE),
                                      "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    by_file = {path: [line for line in lines if str(path) in line] for path in (tiny, dangling, big, bomb)}
    assert all(len(found) == 1 for found in by_file.values()), by_file
    assert "1x1 pixels, smaller than the minimum side of 16 pixels" in by_file[tiny][0]
    assert "symbolic link to" in by_file[dangling][0] and "does not exist" in by_file[dangling][0]
    assert "DecompressionBombWarning" in by_file[big][0] and by_file[big][0].startswith("warning:")
    assert "refused" in by_file[bomb][0] and "decompression bomb" in by_file[bomb][0]
    counts = _report(out)["problem_counts"]
    assert counts == {"image_too_small": 1, "unreadable_image": 1, "image_very_large": 1, "image_too_large": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cache"]["shape"][0] == 168 - 3  # the warned image is used, the three others skipped
    assert _row(out, ids[2]).mean() > 30
    # a lower --min-side takes the 1x1 image (a flat colour); --strict stops on all of them
    lowered = CliRunner().invoke(cli, ["prep", "--raw", str(raw), "--out", str(tmp_path / "low"), "--size",
                                       str(SIZE), "--workers", "1", "-q", "--min-side", "1"])
    assert lowered.exit_code == 0 and "image_too_small" not in json.dumps(_report(tmp_path / "low"))
    assert tuple(_row(tmp_path / "low", ids[0])[5, 5]) == (200, 100, 50)
    strict = CliRunner().invoke(cli, ["prep", "--raw", str(raw), "--out", str(tmp_path / "strict"), "--size",
                                      str(SIZE), "--workers", "1", "-q", "--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output.strip().splitlines()[-1]


def test_min_side_is_checked(raw, tmp_path):
    with pytest.raises(PrepError, match="--min-side 0"):
        prepare(raw, tmp_path / "p", PrepParams(size=SIZE, min_side=0), **QUIET)


def test_decoder_warnings_are_counted_and_kept_for_reused_rows(raw, tmp_path, monkeypatch):
    ids = _ids(raw)
    real = resizemod.resize_image

    def odd(image, size, mode="squash"):
        if image.size == (123, 77):
            warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 6.", UserWarning)
        return real(image, size, mode)

    monkeypatch.setattr(resizemod, "resize_image", odd)
    with Image.open(_jpg(raw, ids[5])) as im:
        odd_path = _replace(raw, ids[5], im.convert("RGB").resize((123, 77)))
    out = tmp_path / "prep"
    lines = []
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, progress=False, log=lines.append)
    warned = [line for line in lines if str(odd_path) in line]
    assert len(warned) == 1 and "the decoder warned: UserWarning: Corrupt EXIF data" in warned[0]
    assert _report(out)["problem_counts"] == {"decoder_warning": 1}
    # a re-run that changes the fingerprint but not the rows reuses them: the warning is still reported
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, name="again", **QUIET)
    report = _report(out)
    assert report["summary"]["images_reused"] == 168 and report["problem_counts"] == {"decoder_warning": 1}


def test_rows_decoded_by_an_earlier_derma_are_redone_for_non_jpeg_images(raw, tmp_path):
    """A folder prepared before decoding went by mode holds an all-white row for a 16-bit PNG:
    the next prep resizes the PNGs again (the JPEGs, decoded the same as before, are reused)."""
    ids = _ids(raw)
    with Image.open(_jpg(raw, ids[0])) as im:
        grey = np.asarray(im.convert("L"))
    _replace(raw, ids[0], Image.fromarray(grey.astype(np.uint16) * 257))
    out = tmp_path / "prep"
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    good = _row(out, ids[0]).copy()
    # make it look like an earlier derma's folder: white row, no decoder version, no record
    manifest = json.loads((out / "manifest.json").read_text())
    ds = load_prepared(out)
    where = next(s for s in ds.splits.values() if ids[0] in s.ids)
    row = manifest["cache"]["rows"][where.name][0] + where.ids.index(ids[0])
    del ds, where
    cache = np.load(out / "cache" / "images.npy", mmap_mode="r+")
    cache[row] = 255
    cache.flush()
    del cache
    as_prepared_by_an_earlier_derma(out)
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    summary = _report(out)["summary"]
    assert summary["images_resized"] == 1 and summary["images_reused"] == 167
    np.testing.assert_array_equal(_row(out, ids[0]), good)


def test_a_dangling_link_in_the_raw_folder_is_not_a_traceback(raw, tmp_path):
    """The raw-folder scan and the verification name a dangling link (also for an image with no
    metadata row, or one that duplicates another's id)."""
    ids = _ids(raw)
    jpg = _jpg(raw, ids[0])
    other = "HAM10000_images_part_2" if jpg.parent.name.endswith("1") else "HAM10000_images_part_1"
    os.symlink(tmp_path / "nowhere.jpg", raw / other / jpg.name)  # a second copy of an id
    os.symlink(tmp_path / "nowhere.jpg", jpg.parent / "ISIC_0000001.jpg")  # no metadata row
    out = tmp_path / "prep"
    prepare(raw, out, PrepParams(size=SIZE, split="grouped"), workers=1, **QUIET)
    counts = _report(out)["problem_counts"]
    assert counts.get("orphan_image") == 1 and "unreadable_image" not in counts
