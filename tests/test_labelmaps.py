"""Label maps between label sets: the built-in maps fit the label sets they name, and small cases
are checked by hand (probabilities summed many-to-one, classes without counterpart excluded and
reported, grouping-only evaluation, one-line errors)."""

from __future__ import annotations

import numpy as np
import pytest

from derma_core.data import labelmaps as lm
from derma_core.data.datasets import (bcn20000, ddi, derm7pt, fitzpatrick17k, ham10000, isic2019, isic2020,
                                      pad_ufes_20)
from derma_core.labels import LabelSet

HAM = ham10000.LABEL_SET
PAD = pad_ufes_20.LABEL_SET


def test_every_builtin_map_fits_the_label_sets_it_names():
    maps = lm.check_builtin_maps()
    pairs = {(m.spec.source, m.spec.target) for m in maps}
    public = ("ham10000", "isic2019", "pad_ufes_20", "derm7pt")
    for source in public:
        for target in (*public, "ddi", "fitzpatrick17k", "isic2020"):
            if source != target:
                assert (source, target) in pairs, (source, target)
    for m in maps:
        assert set(m.source_to_eval) == set(m.source.codes)  # every source class decided, never left out
        assert len(m.evaluated) >= 2
        assert set(m.target_to_eval) == set(m.target.codes)


def test_ham_to_pad_sums_and_excludes_by_hand():
    m = lm.resolve_label_map("ham10000", HAM, "pad_ufes_20", PAD)
    assert m.kind == "classes"
    assert m.evaluated.codes == ("ack", "bcc", "mel", "nev", "sek")  # PAD's order, scc gone
    assert m.excluded_target == ("scc",)
    assert m.unmapped_source == ("df", "vasc")
    assert m.evaluated.focus == "mel" and m.evaluated.groupings["malignancy"]["ack"] == "benign"
    # akiec bcc bkl df mel nv vasc
    p = np.array([[0.10, 0.20, 0.05, 0.15, 0.10, 0.30, 0.10],
                  [0.05, 0.05, 0.05, 0.60, 0.05, 0.10, 0.10]])
    mapped, unmapped = m.map_probabilities(p)
    # row 0: ack .10, bcc .20, mel .10, nev .30, sek .05 of the .75 kept
    np.testing.assert_allclose(mapped[0], np.array([0.10, 0.20, 0.10, 0.30, 0.05]) / 0.75)
    np.testing.assert_allclose(unmapped, [0.25, 0.70])
    labels, probs, _ = m.predict(["nv", "df"], p)
    # row 1's own top class (df) has no counterpart: the top evaluated class is nev (.10 of .30)
    assert labels == ["nev", "nev"]
    assert m.map_target_labels(["scc", "sek", "ack"]) == [None, "sek", "ack"]
    # without probabilities, an answer without counterpart is invalid
    assert m.predict(["df", "bkl", None], None)[0] == [None, "sek", None]


def test_many_to_one_sums_probabilities():
    m = lm.resolve_label_map("ham10000", HAM, "derm7pt", derm7pt.GROUPED)
    p = np.array([[0.0, 0.1, 0.1, 0.3, 0.1, 0.2, 0.2]])  # df .3 + vasc .2 -> misc .5
    mapped, unmapped = m.map_probabilities(p)
    assert m.evaluated.codes == derm7pt.GROUPED.codes
    assert mapped[0, m.evaluated.index("misc")] == pytest.approx(0.5)
    assert unmapped[0] == pytest.approx(0.0)  # akiec (no counterpart) had no mass here
    assert m.predict(["df"], p)[0] == ["misc"]


def test_grouping_only_evaluates_on_the_grouping():
    m = lm.resolve_label_map("ham10000", HAM, "ddi", ddi.LABEL_SET)
    assert m.kind == "grouping" and m.evaluated.codes == ("benign", "malignant")
    p = np.array([[0.2, 0.1, 0.1, 0.05, 0.1, 0.4, 0.05]])  # malignant = akiec + bcc + mel = .4
    mapped, _ = m.map_probabilities(p)
    np.testing.assert_allclose(mapped[0], [0.6, 0.4])
    assert m.predict(["nv"], p)[0] == ["benign"]
    assert m.evaluated.focus == "malignant"


def test_shared_label_set_is_the_identity_and_aliases_share_maps():
    assert lm.resolve_label_map("isic2019", isic2019.LABEL_SET, "bcn20000", bcn20000.LABEL_SET).kind == "identity"
    # BCN20000 has ISIC 2019's classes: the ISIC 2019 map serves it
    m = lm.resolve_label_map("bcn20000", bcn20000.LABEL_SET, "ham10000", HAM)
    assert m.kind == "classes" and m.source_to_eval["ak"] == "akiec" and m.source_to_eval["scc"] is None


def test_fallback_grouping_by_positive_group():
    three = fitzpatrick17k.label_set({"label": "3"})
    m = lm.resolve_label_map("fitzpatrick17k", three, "ham10000", HAM)
    assert m.kind == "grouping"
    assert m.evaluated.codes == ("not_malignant", "malignant")
    assert m.source_to_eval == {"non_neoplastic": "not_malignant", "benign": "not_malignant",
                                "malignant": "malignant"}
    assert m.target_to_eval["bcc"] == "malignant" and m.target_to_eval["nv"] == "not_malignant"


def test_fitzpatrick_levels_use_the_three_way_partition():
    nine = fitzpatrick17k.label_set({"label": "9"})
    m = lm.resolve_label_map("ham10000", HAM, "fitzpatrick17k", nine)
    assert set(m.evaluated.codes) == {"benign", "malignant"}
    assert m.excluded_target == ("inflammatory", "genodermatoses")
    assert m.target_to_eval["malignant_melanoma"] == "malignant"


def test_isic2020_binary():
    m = lm.resolve_label_map("pad_ufes_20", PAD, "isic2020", isic2020.LABEL_SET)
    p = np.array([[0.1, 0.1, 0.3, 0.2, 0.1, 0.2]])
    mapped, _ = m.map_probabilities(p)
    np.testing.assert_allclose(mapped[0], [0.7, 0.3])


def test_user_map_is_tried_first_and_checked(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("source: ham10000\ntarget: pad_ufes_20\nclasses: {akiec: scc, bcc: bcc, bkl: sek, df: null, "
                    "mel: mel, nv: nev, vasc: null}\nnote: akiec as scc\n")
    m = lm.resolve_label_map("ham10000", HAM, "pad_ufes_20", PAD, [good])
    assert m.source_to_eval["akiec"] == "scc" and m.excluded_target == ("ack",)
    assert m.origin == str(good)


@pytest.mark.parametrize("text, words", [
    ("source: ham10000\ntarget: pad_ufes_20\nclasses: {akeic: ack, bcc: bcc, bkl: sek, df: null, mel: mel, nv: nev, "
     "vasc: null}\n", ["'akeic'", "not a class of ham10000"]),
    ("source: ham10000\ntarget: pad_ufes_20\nclasses: {akiec: actinic, bcc: bcc, bkl: sek, df: null, mel: mel, "
     "nv: nev, vasc: null}\n", ["'actinic'", "not a class of pad_ufes_20"]),
    ("source: ham10000\ntarget: pad_ufes_20\nclasses: {bcc: bcc, mel: mel}\n", ["akiec", "not listed"]),
    ("source: ham10000\ntarget: ddi\ngrouping: malignant\n", ["no grouping 'malignant'"]),
    ("source: ham10000\ntarget: pad_ufes_20\nclasses: {akiec: mel, bcc: null, bkl: null, df: null, mel: mel, "
     "nv: null, vasc: null}\n", ["at least two"]),
    ("source: ham10000\ntarget: pad_ufes_20\nclases: {}\n", ["unknown key 'clases'"]),
])
def test_bad_maps_give_one_line_errors(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    target = ddi.LABEL_SET if "ddi" in text else PAD
    with pytest.raises(lm.LabelMapError) as info:
        lm.resolve_label_map("ham10000", HAM, "ddi" if "ddi" in text else "pad_ufes_20", target, [path])
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_no_map_and_no_shared_grouping_asks_for_one():
    a = LabelSet(codes=("x", "y"))
    b = LabelSet(codes=("u", "v", "w"))
    with pytest.raises(lm.LabelMapError, match="--label-map FILE") as info:
        lm.resolve_label_map("mine", a, "theirs", b)
    assert "\n" not in str(info.value)


def test_restrict_keeps_what_survives():
    sub = lm.restrict(HAM, ["mel", "nv"])
    assert sub.codes == ("mel", "nv") and sub.focus == "mel"
    assert sub.groupings["malignancy"] == {"mel": "malignant", "nv": "benign"}
    only_benign = lm.restrict(HAM, ["nv", "bkl"])
    assert only_benign.groupings == {} and only_benign.positive == {} and only_benign.focus is None
