"""Dataset descriptors and label sets as plain values: what each field accepts and refuses (one-line
errors naming the dataset, the field and the choices), defaults, options resolved, the facts a
prepared folder records and their round trip, the dataset source's checks of data.dir.

Equivalent mutants (no observable change):
- LabelSet.grouping: ``np.array([...], dtype=np.int64)`` -> ``dtype=None``: a list of Python
  ints becomes int64 on the platforms derma runs on (64-bit Linux and macOS).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from derma_core.data import descriptor as dmod
from derma_core.data.descriptor import DatasetDescriptor, DatasetOption, SubgroupColumn
from derma_core.labels import INVALID, LabelSet

THREE = LabelSet(codes=("a", "b", "c"), names=("Alpha", "Beta", "Gamma"),
                 groupings={"kind": {"a": "bad", "b": "bad", "c": "fine"}}, positive={"kind": "bad"},
                 synonyms={"a": ("first",)}, focus="b")
TWO = LabelSet(codes=("x", "y"))


def level_labels(options):
    return THREE if options["level"] == "3" else TWO


def make(**kw) -> DatasetDescriptor:
    base = dict(name="demo", title="Demo set", labels=THREE)
    return DatasetDescriptor(**{**base, **kw})


# ----------------------------------------------------------------------------- subgroup columns
def test_subgroup_column_kinds_and_normalisation():
    age = SubgroupColumn("age", "banded", bands=(30, 45.5), title="Age")
    assert age.bands == (30.0, 45.5) and isinstance(age.bands[0], float)
    skin = SubgroupColumn("skin", "ordinal", order=(1, 2, 3), unknown=(-1,))
    assert skin.order == ("1", "2", "3") and skin.unknown == ("-1",)
    plain = SubgroupColumn("sex")
    assert (plain.kind, plain.bands, plain.order, plain.unknown, plain.title) == ("categorical", (), (), (), "")
    with pytest.raises(ValueError, match=r"^subgroup column 'age': kind 'bands' is not one of "
                                         r"\('categorical', 'banded', 'ordinal'\)$"):
        SubgroupColumn("age", "bands")
    with pytest.raises(ValueError, match="^subgroup column 'age': a banded column needs bands$"):
        SubgroupColumn("age", "banded")


def test_subgroup_column_dict_round_trip():
    full = SubgroupColumn("age", "banded", bands=(30, 45), order=("young",), unknown=("?",), title="Age")
    assert full.to_dict() == {"column": "age", "kind": "banded", "bands": [30.0, 45.0], "order": ["young"],
                              "unknown": ["?"], "title": "Age"}
    assert SubgroupColumn.from_dict(full.to_dict()) == full
    assert SubgroupColumn("sex").to_dict() == {"column": "sex", "kind": "categorical"}
    assert SubgroupColumn.from_dict("sex") == SubgroupColumn("sex")
    assert SubgroupColumn.from_dict({"column": "site"}) == SubgroupColumn("site")
    assert SubgroupColumn.from_dict({"column": "site", "bands": None, "title": None}).title == ""


# ----------------------------------------------------------------------------------- descriptors
def test_descriptor_defaults_and_checks():
    d = make()
    assert (d.grouping, d.modality, d.split_policy, d.subgroups, d.options) == ("lesion", "dermoscopic", "grouped",
                                                                                 (), ())
    assert d.group_column == "lesion_id"
    assert make(grouping="patient").group_column == "patient_id"
    assert make(grouping=None).group_column is None
    assert make(modality="clinical", split_policy="official").split_policy == "official"
    with pytest.raises(ValueError, match=r"^dataset 'demo': grouping 'image' is not one of "
                                         r"\('lesion', 'patient', None\)$"):
        make(grouping="image")
    with pytest.raises(ValueError, match=r"^dataset 'demo': modality 'photo' is not one of "
                                         r"\('dermoscopic', 'clinical'\)$"):
        make(modality="photo")
    with pytest.raises(ValueError, match=r"^dataset 'demo': split policy 'seed' is not one of "
                                         r"\('grouped', 'official'\)$"):
        make(split_policy="seed")
    mixed = make(subgroups=(SubgroupColumn("sex"), {"column": "age", "kind": "banded", "bands": [30]}, "site"))
    assert mixed.subgroups == (SubgroupColumn("sex"), SubgroupColumn("age", "banded", bands=(30,)),
                               SubgroupColumn("site"))


def test_options_resolve_with_defaults_and_refuse_unknowns():
    d = make(labels=level_labels, options=(DatasetOption("level", "3", ("3", "2")),
                                           DatasetOption("image", "derm", ("derm", "clinic"), help="which")))
    assert d.resolve_options() == {"level": "3", "image": "derm"}
    assert d.resolve_options({"level": 2}) == {"level": "2", "image": "derm"}
    assert d.label_set() == THREE and d.label_set({"level": "2"}) == TWO
    with pytest.raises(ValueError, match=r"^dataset demo: unknown option 'levels' \(options: level, image\)$"):
        d.resolve_options({"levels": "3"})
    with pytest.raises(ValueError, match="^dataset demo: option level='9': use one of 3, 2$"):
        d.label_set({"level": "9"})
    with pytest.raises(ValueError, match=r"^dataset demo: unknown option 'x' \(options: none\)$"):
        make().resolve_options({"x": 1})
    assert make().resolve_options(None) == {} and make().label_set() is THREE


def test_counts_fixed_or_by_option():
    assert make(class_counts={"a": 3, "b": 2}).counts() == {"a": 3, "b": 2}
    assert make().counts() == {}
    by_level = make(labels=level_labels, options=(DatasetOption("level", "3", ("3", "2")),),
                    class_counts=lambda o: {"x": int(o["level"])})
    assert by_level.counts() == {"x": 3} and by_level.counts({"level": "2"}) == {"x": 2}
    assert isinstance(make(class_counts={"a": 1}).counts(), dict)


def test_facts_round_trip():
    d = make(grouping="patient", modality="clinical", split_policy="official", licence="CC BY 4.0",
             citation="Someone 2020", url="https://example.org", subgroups=(SubgroupColumn("sex"),))
    facts = d.facts()
    assert facts == {"name": "demo", "title": "Demo set", "labels": THREE.to_dict(), "grouping": "patient",
                     "modality": "clinical", "subgroups": [{"column": "sex", "kind": "categorical"}],
                     "split_policy": "official", "licence": "CC BY 4.0", "citation": "Someone 2020",
                     "url": "https://example.org", "options": {}}
    back = DatasetDescriptor.from_facts(facts)
    assert back.facts() == facts
    assert back.reader is None and back.loader is None
    minimal = DatasetDescriptor.from_facts({"name": "bare", "labels": TWO.to_dict()})
    assert (minimal.title, minimal.grouping, minimal.modality, minimal.split_policy, minimal.licence,
            minimal.citation, minimal.url, minimal.subgroups) == ("bare", None, "dermoscopic", "grouped", "", "", "",
                                                                  ())
    with_option = make(labels=level_labels, options=(DatasetOption("level", "3", ("3", "2")),))
    assert with_option.facts({"level": "2"})["labels"] == TWO.to_dict()
    assert with_option.facts({"level": "2"})["options"] == {"level": "2"}
    assert make().with_labels(TWO).label_set() == TWO and make().with_labels(TWO).name == "demo"


def test_licence_line():
    assert make().licence_line() == "Demo set"
    assert make(licence="CC0").licence_line() == "Demo set; licence: CC0"
    assert make(licence="CC0", citation="A 2019").licence_line() == "Demo set; licence: CC0; cite: A 2019"
    assert make(citation="A 2019").licence_line() == "Demo set; cite: A 2019"


def test_a_descriptor_as_a_dataset_source(monkeypatch, tmp_path):
    own = make(loader=lambda config: ("loaded", config["data"]["dir"]))
    assert own({"data": {"dir": "x"}}) == ("loaded", "x")
    with pytest.raises(ValueError, match=r"^dataset demo needs data.dir: `derma prep --dataset demo --raw RAW "
                                         r"--out PREPARED`, then --data-dir PREPARED$"):
        make()({"data": {}})
    with pytest.raises(ValueError, match="needs data.dir"):
        make()({})
    seen = {}

    def fake_load(folder, fold=None):
        seen.update(folder=folder, fold=fold)
        return types.SimpleNamespace(descriptor=types.SimpleNamespace(name=seen.get("as", "demo")))

    import derma_core.data.prepare as prepare

    monkeypatch.setattr(prepare, "load_prepared", fake_load)
    loaded = make()({"data": {"dir": str(tmp_path), "fold": 2}})
    assert loaded.descriptor.name == "demo" and seen == {"folder": Path(tmp_path), "fold": 2}
    make()({"data": {"dir": "~/prepared"}})
    assert seen["folder"] == Path("~/prepared").expanduser() and seen["fold"] is None
    seen["as"] = "other"
    with pytest.raises(ValueError, match=r"^x was prepared as dataset 'other', not 'demo'; pass --dataset other, "
                                         r"or prepare it again with --dataset demo$"):
        make()({"data": {"dir": "x"}})
    assert dmod.__all__ == ["DatasetDescriptor", "DatasetOption", "SubgroupColumn", "GROUPINGS", "MODALITIES",
                            "SUBGROUP_KINDS"]


# ------------------------------------------------------------------------------------ label sets
def test_label_set_checks_and_lookups():
    assert THREE.index("c") == 2 and THREE.name("b") == "Beta" and len(THREE) == 3 == THREE.size
    assert list(THREE) == ["a", "b", "c"] and THREE[1] == "b" and "a" in THREE and "z" not in THREE
    assert repr(THREE) == "LabelSet(a, b, c)"
    assert TWO.names == ("x", "y")  # names default to the codes
    with pytest.raises(ValueError, match="^unknown label 'z': expected one of a, b, c$"):
        THREE.index("z")
    with pytest.raises(ValueError, match=r"^a label set needs at least two classes, got \['a'\]$"):
        LabelSet(codes=("a",))
    with pytest.raises(ValueError, match=r"^label set: duplicate class codes \['a'\]$"):
        LabelSet(codes=("a", "b", "a"))
    for bad in ("", " a", "a,b"):
        with pytest.raises(ValueError, match="must be non-empty, without surrounding spaces or commas"):
            LabelSet(codes=(bad, "q"))
    with pytest.raises(ValueError, match="^label set: 1 names for 2 codes$"):
        LabelSet(codes=("a", "b"), names=("A",))
    with pytest.raises(ValueError, match=r"grouping 'g' must map every class exactly \(missing \['b'\], "
                                         r"unknown \['z'\]\)"):
        LabelSet(codes=("a", "b"), groupings={"g": {"a": "1", "z": "2"}})
    with pytest.raises(ValueError, match="positive group 'x' of 'g' is not a group of that grouping"):
        LabelSet(codes=("a", "b"), groupings={"g": {"a": "1", "b": "2"}}, positive={"g": "x"})
    with pytest.raises(ValueError, match="positive group '1' of 'h'"):
        LabelSet(codes=("a", "b"), groupings={"g": {"a": "1", "b": "2"}}, positive={"h": "1"})
    with pytest.raises(ValueError, match=r"synonyms for unknown classes \['z'\]"):
        LabelSet(codes=("a", "b"), synonyms={"z": ("zed",)})
    # groupings, positive groups and synonyms are kept as strings whatever YAML gave
    numeric = LabelSet(codes=("a", "b"), groupings={"g": {"a": 1, "b": 2}}, positive={"g": 1}, synonyms={"a": [7]})
    assert numeric.groupings == {"g": {"a": "1", "b": "2"}} and numeric.positive == {"g": "1"}
    assert numeric.synonyms == {"a": ("7",)}
    with pytest.raises(ValueError, match="^label set: focus class 'z' is not one of a, b$"):
        LabelSet(codes=("a", "b"), focus="z")


def test_label_set_encode_decode():
    assert THREE.encode(["c", "a", None, "", float("nan")]).tolist() == [2, 0, INVALID, INVALID, INVALID]
    with pytest.raises(ValueError, match=r"^row 1: unknown label 'd'; expected one of a, b, c \(or empty for an "
                                         r"invalid answer\)$"):
        THREE.encode(["a", "d"])
    with pytest.raises(ValueError, match="^row 0: unknown diagnosis 'd'; expected one of a, b, c$"):
        THREE.encode(["d"], what="diagnosis", allow_invalid=False)
    with pytest.raises(ValueError, match="^row 2: empty label; every row needs one of a, b, c$"):
        THREE.encode(["a", "b", ""], allow_invalid=False)
    assert THREE.decode([2, INVALID, np.int64(0)]) == ["c", None, "a"]


def test_label_set_aliases_lookup_and_groupings():
    assert THREE.aliases() == {"a": ["a", "alpha", "first"], "b": ["b", "beta"], "c": ["c", "gamma"]}
    assert TWO.aliases() == {"x": ["x"], "y": ["y"]}
    assert THREE.lookup("  First! ") == "a" and THREE.lookup("(Gamma)") == "c" and THREE.lookup("delta") is None
    assert THREE.lookup("_beta_") == "b"
    groups, index = THREE.grouping("kind")
    assert groups == ("bad", "fine") and index.tolist() == [0, 0, 1]
    assert THREE.group_codes("kind", "bad") == ("a", "b")
    with pytest.raises(ValueError, match=r"^label set has no grouping 'size' \(has \['kind'\]\)$"):
        THREE.grouping("size")
    with pytest.raises(ValueError, match=r"has no grouping 'size' \(has none\)"):
        TWO.grouping("size")


def test_label_set_identity_and_round_trip():
    d = THREE.to_dict()
    assert d == {"codes": ["a", "b", "c"], "names": ["Alpha", "Beta", "Gamma"],
                 "groupings": {"kind": {"a": "bad", "b": "bad", "c": "fine"}}, "positive": {"kind": "bad"},
                 "synonyms": {"a": ["first"]}, "focus": "b"}
    assert TWO.to_dict() == {"codes": ["x", "y"], "names": ["x", "y"]}
    assert LabelSet.from_dict(d) == THREE and hash(LabelSet.from_dict(d)) == hash(THREE)
    assert LabelSet.from_dict({"codes": ["x", "y"]}) == TWO
    assert THREE != LabelSet(codes=("a", "b", "c")) and THREE != "abc"
    assert THREE.same_classes(LabelSet(codes=("a", "b", "c"))) and not THREE.same_classes(TWO)
    assert len(THREE.digest) == 16 and THREE.digest != TWO.digest
    with pytest.raises(ValueError, match="needs 'codes'"):
        LabelSet.from_dict({"names": ["x"]})
    THREE.require_same(LabelSet(codes=("a", "b", "c")), "the checkpoint", "retrain")
    with pytest.raises(ValueError, match="^the checkpoint was made for the classes x, y but the dataset has a, b, c; "
                                         "retrain$"):
        THREE.require_same(TWO, "the checkpoint", "retrain")
