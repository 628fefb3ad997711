"""The leakage guard's matching on its own: the pHash bit count against brute force, ids within a
namespace, published duplicate lists and shared ISIC lesion ids, and the real metadata
(every HAM10000 image is in ISIC 2019). Planted copies in prepared folders are in
test_cross_dataset.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derma_core.data import overlap as ov


def _brute(a, b, threshold):
    out = set()
    for i in range(len(a)):
        for j in range(len(b)):
            d = sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a[i], b[j]))
            if d <= threshold:
                out.add((i, j, d))
    return out


def test_hamming_pairs_equal_brute_force():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2 ** 63, size=(40, 4), dtype=np.uint64)
    b = rng.integers(0, 2 ** 63, size=(55, 4), dtype=np.uint64)
    # plant near copies at known distances, some just inside and just outside the threshold
    planted = (0, 1, 7, 24, 25, 31, 32, 33, 40)
    for k, flips in enumerate(planted):
        b[k] = a[k]
        for bit in range(flips):  # flip bits spread over the 4 words
            b[k, bit % 4] ^= np.uint64(1) << np.uint64(bit)
    for threshold in (0, 24, 30, 32):
        i, j, d = ov.hamming_pairs(a, b, threshold, budget=97)  # a small budget: many blocks
        assert set(zip(i.tolist(), j.tolist(), d.tolist())) == _brute(a, b, threshold)
    i, j, d = ov.hamming_pairs(a, b, ov.PIXEL_THRESHOLD)
    assert sorted(zip(i.tolist(), d.tolist())) == [(k, f) for k, f in enumerate(planted) if f <= ov.PIXEL_THRESHOLD]


def test_phash_finds_a_resized_reencoded_copy_and_not_another_image():
    from io import BytesIO

    from PIL import Image, ImageDraw

    def picture(seed):
        rng = np.random.default_rng(seed)
        img = Image.new("RGB", (120, 90), tuple(int(v) for v in rng.integers(120, 220, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, 100, 2)
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            draw.ellipse([int(x), int(y), int(x) + 30, int(y) + 25], fill=colour)
        return img

    original = picture(1)
    buf = BytesIO()
    original.resize((84, 63)).save(buf, "JPEG", quality=60)
    copy = Image.open(BytesIO(buf.getvalue())).convert("RGB")
    rows = [np.asarray(im.resize((32, 32))) for im in (original, copy, picture(2))]
    h = ov.phash_rows(rows)
    d = lambda x, y: int(np.bitwise_count(h[x] ^ h[y]).sum())  # noqa: E731
    assert d(0, 1) <= ov.PIXEL_THRESHOLD < d(0, 2)


def _side(name, ids, groups=None, split="train"):
    ids = list(ids)
    return ov.Side(name, np.array(ids), np.array(groups if groups is not None else ids), np.array([split] * len(ids)))


def test_ids_match_within_a_namespace_only():
    a = _side("ham10000", ["ISIC_0000001", "ISIC_0000002", "000001"])
    b = _side("ddi", ["ISIC_0000002", "000001", "000002"], split="test")
    result = ov.find_overlap(a, b)
    # ISIC ids are one namespace across collections; DDI's 000001 is not derm's 000001
    assert result.b_ids("id") == {"ISIC_0000002"}
    same = ov.find_overlap(a, _side("ham10000", ["000001"], split="test"))
    assert same.b_ids("id") == {"000001"}


def test_duplicate_list_and_isic_lesion_ids_are_listed(tmp_path):
    dup = tmp_path / "ISIC_2020_Training_Duplicates.csv"
    dup.write_text("image_name_1,image_name_2\nISIC_0000010,ISIC_0000020\nISIC_0000030,ISIC_0000099\n")
    a = _side("isic2020", ["ISIC_0000010", "ISIC_0000031", "ISIC_0000040"], ["IP_1", "IP_2", "HAM_0000007"])
    a.duplicates = ov.read_duplicate_list(dup)
    b = _side("isic2019", ["ISIC_0000020", "ISIC_0000030", "ISIC_0000050", "ISIC_0000060"],
              ["BCN_0000001", "BCN_0000002", "HAM_0000007", "IP_2"], split="test")
    result = ov.find_overlap(a, b)
    # 20 duplicates 10 (A's); 30's twin 99 is not A's; 50 shares A's HAM lesion; IP_ is not an ISIC lesion id
    assert result.b_ids("listed") == {"ISIC_0000020", "ISIC_0000050"}
    assert result.counts == {"id": 0, "bytes": 0, "pixels": 0, "listed": 2, "total": 2}
    payload = result.to_json()
    assert {k: payload[k] for k in ("id", "bytes", "pixels", "listed", "total")} == result.counts
    assert {(p["b_id"], p["a_id"]) for p in payload["pairs"]} == {("ISIC_0000020", "ISIC_0000010"),
                                                                   ("ISIC_0000050", "ISIC_0000040")}


def test_bad_duplicate_list_is_one_line(tmp_path):
    path = tmp_path / "dups.csv"
    path.write_text("only_one_column\nx\n")
    with pytest.raises(ValueError, match="two columns") as info:
        ov.read_duplicate_list(path)
    assert "\n" not in str(info.value)


@pytest.mark.real_data
def test_every_ham10000_image_is_in_isic2019(shared_data):
    ham_path = shared_data / "ham10000" / "HAM10000_metadata.csv"
    isic_path = shared_data / "isic2019" / "ISIC_2019_Training_Metadata.csv"
    if not isic_path.exists():
        pytest.skip(f"ISIC 2019 metadata not found at {isic_path}")
    ham = pd.read_csv(ham_path, dtype=str, keep_default_na=False)
    isic = pd.read_csv(isic_path, dtype=str, keep_default_na=False)
    isic["group_id"] = isic["lesion_id"].where(isic["lesion_id"] != "", isic["image"])  # as the isic2019 reader
    a = ov.frame_side("ham10000", ham, "train", id_column="image_id", group_column="lesion_id")
    b = ov.frame_side("isic2019", isic, "all", id_column="image")
    result = ov.find_overlap(a, b)
    counts = result.counts
    assert counts["id"] == len(ham) == ham["image_id"].nunique()
    # ISIC 2019 lists each HAM10000 image under its HAM10000 lesion id
    assert counts["listed"] == int(isic["lesion_id"].str.startswith("HAM_").sum())
    assert result.b_ids("id") == set(ham["image_id"])
    assert counts["total"] == len(ham)
    # the other way round too: an ISIC 2019 model evaluated on HAM10000 meets only its own images
    back = ov.find_overlap(b, a).counts
    assert back["id"] == back["total"] == len(ham)


@pytest.mark.real_data
def test_isic2020_duplicate_list_links_its_pairs(shared_data):
    path = shared_data / "isic2020" / "ISIC_2020_Training_Duplicates.csv"
    if not path.exists():
        pytest.skip(f"ISIC 2020 duplicate list not found at {path}")
    pairs = ov.read_duplicate_list(path)
    first = pd.DataFrame({"id": [x for x, _ in pairs]}).drop_duplicates()
    second = pd.DataFrame({"id": [y for _, y in pairs]}).drop_duplicates()
    a = ov.frame_side("isic2020", first, "train", group_column=None)
    a.duplicates = pairs
    b = ov.frame_side("isic2020", second[~second["id"].isin(first["id"])], "test", group_column=None)
    result = ov.find_overlap(a, b)
    assert result.counts["listed"] == len(b) and result.counts["id"] == 0
