"""Label maps on small label sets, worked by hand: the YAML checks (each one-line error), maps of
classes, of a target's grouping and of a shared grouping, probabilities summed and renormalised,
the share left on classes without a counterpart, the fallbacks when no map is declared.

Equivalent mutants (no observable change):
- LabelMap.map_probabilities: ``np.where(total > 0, total, 1.0)`` with another non-zero fill: the
  filled rows are those where ``total > 0`` is false, and np.where discards their quotient.
- LabelMap.map_probabilities, LabelMap.predict: ``np.asarray(probabilities, dtype=np.float64)``
  -> no dtype: probabilities are floats already, and the matrix product with the float64 matrix
  gives float64 either way.
- build: ``_evaluated_or_fail(name, ...)`` -> ``_evaluated_or_fail(None, ...)``: the function
  never reads its first argument (its message names the map by ``where``).
- builtin_specs: ``origin.replace(str(folder), "built-in", 1)`` without the count: the folder
  occurs once in a path.
- check_builtin_maps: ``_declared_label_set(spec.source, spec.source_options)`` -> ``None``
  options: the only built-in map with source options (derm7pt's ``labels: grouped``) names the
  default, so the label set is the same. (A built-in map naming a non-default option would make
  this observable; none exists.)
"""

from __future__ import annotations

import numpy as np
import pytest

from derma_core.data import labelmaps as lm
from derma_core.labels import LabelSet

SRC = LabelSet(codes=("a", "b", "c", "d"), names=("Ay", "Bee", "Cee", "Dee"),
               groupings={"risk": {"a": "high", "b": "high", "c": "low", "d": "low"}},
               positive={"risk": "high"}, synonyms={"a": ("alpha",), "d": ("delta",)}, focus="a")
TGT = LabelSet(codes=("x", "y", "z"), names=("Ex", "Why", "Zed"),
               groupings={"risk": {"x": "high", "y": "low", "z": "low"},
                          "part": {"x": "not well", "y": "not well", "z": "fine"}},
               positive={"risk": "high"}, focus="x")


def spec(**kw) -> lm.LabelMapSpec:
    (parsed,) = lm.parse_specs({"source": "s", "target": "t", **kw}, "m.yaml")
    return parsed


# --------------------------------------------------------------------------------- parsing YAML
def test_a_file_of_several_maps_inherits_source_and_options():
    specs = lm.parse_specs({"source": "s", "source_options": {"level": 3}, "note": "file note",
                            "maps": [{"target": "t", "classes": {"a": "x", "b": 7, "c": None}, "note": "  one\n two "},
                                     {"target": "u", "grouping": "risk", "target_options": {"k": 1}}]}, "f.yaml")
    one, two = specs
    assert (one.source, one.target, one.source_options, one.classes) == ("s", "t", {"level": "3"},
                                                                         {"a": "x", "b": "7", "c": None})
    assert one.note == "one two" and one.origin == "f.yaml map 1" and two.origin == "f.yaml map 2"
    assert two.grouping == "risk" and two.classes is None and two.target_options == {"k": "1"} and two.note == ""
    assert one.title == "s (level=3) -> t" and two.title == "s (level=3) -> u (k=1)"
    assert one.where() == "label map s (level=3) -> t in f.yaml map 1"
    assert lm.LabelMapSpec("s", "t").where() == "label map s -> t"
    single = spec(grouping="risk")
    assert single.origin == "m.yaml" and single.to_dict() == {"source": "s", "target": "t", "grouping": "risk",
                                                              "origin": "m.yaml"}
    assert one.to_dict() == {"source": "s", "target": "t", "source_options": {"level": "3"},
                             "classes": {"a": "x", "b": "7", "c": None}, "note": "one two", "origin": "f.yaml map 1"}
    assert two.to_dict()["target_options"] == {"k": "1"}
    assert spec(classes={"a": "x"}, target_grouping="part").target_grouping == "part"


@pytest.mark.parametrize("data, message", [
    (["source"], "m.yaml: a label map file must be a mapping (source, target, classes)"),
    ({"source": "s", "maps": []}, "m.yaml: 'maps' must be a non-empty list of maps"),
    ({"source": "s", "maps": {"target": "t"}}, "m.yaml: 'maps' must be a non-empty list of maps"),
    ({"source": "s", "target": "t", "maps": [{"grouping": "g"}]},
     "m.yaml: unknown key 'target' beside 'maps' (allowed: source, source_options, note)"),
    ({"source": "s", "maps": [{"target": "t", "grouping": "g"}, "x"]},
     "m.yaml map 2: each map must be a mapping (target, classes or grouping)"),
    ({"source": "s", "target": "t", "grouping": "g", "group": 1},
     "m.yaml: unknown key 'group' (allowed: source, target, source_options, target_options, classes, grouping, "
     "target_grouping, note, name)"),
    ({"target": "t", "grouping": "g"}, "m.yaml: no 'source': name the source dataset (e.g. source: ham10000)"),
    ({"source": "s", "target": "", "grouping": "g"},
     "m.yaml: no 'target': name the target dataset (e.g. target: ham10000)"),
    ({"source": "s", "target": "t"}, "m.yaml: give exactly one of 'classes' (source class -> target class) and "
                                     "'grouping' (a grouping both label sets have)"),
    ({"source": "s", "target": "t", "grouping": "g", "classes": {"a": "x"}}, "give exactly one of 'classes'"),
    ({"source": "s", "target": "t", "grouping": "g", "target_grouping": "h"},
     "m.yaml: 'grouping' and 'target_grouping' exclude each other"),
    ({"source": "s", "target": "t", "classes": {}},
     "m.yaml: 'classes' must map each source class to a target class or null"),
    ({"source": "s", "target": "t", "classes": ["a"]}, "'classes' must map each source class"),
    ({"source": "s", "target": "t", "classes": {"a": ["x"]}},
     "m.yaml: class 'a' maps to ['x']; give one class code (quote it) or null for no counterpart"),
    ({"source": "s", "target": "t", "classes": {"a": True}}, "class 'a' maps to True"),
    ({"source": "s", "target": "t", "grouping": "g", "source_options": ["x"]},
     "m.yaml: source_options must be a mapping such as {label: \"3\"}, got ['x']"),
    ({"source": "s", "target": "t", "grouping": "g", "target_options": "3"},
     "m.yaml: target_options must be a mapping"),
])
def test_bad_yaml_is_refused_in_one_line(data, message):
    with pytest.raises(lm.LabelMapError) as info:
        lm.parse_specs(data, "m.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_read_specs_of_files(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("source: s\ntarget: t\ngrouping: risk\n", encoding="utf-8")
    (only,) = lm.read_specs(path)
    assert only.origin == str(path) and only.grouping == "risk"
    with pytest.raises(lm.LabelMapError, match=f"^label map file {tmp_path / 'none.yaml'} does not exist$"):
        lm.read_specs(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [\n", encoding="utf-8")
    with pytest.raises(lm.LabelMapError, match="broken.yaml"):
        lm.read_specs(broken)


def test_builtin_specs_say_built_in():
    specs = lm.builtin_specs()
    assert specs and all(s.origin.startswith("built-in/") for s in specs)
    files = [s.origin.split()[0] for s in specs]
    assert files == sorted(files)  # files in name order
    assert lm.builtin_folder().name == "labelmaps"


# ------------------------------------------------------------------------------- building maps
def test_a_class_map_by_hand():
    m = lm.build(spec(classes={"a": "x", "b": "x", "c": "z", "d": None}, note="n"), SRC, TGT)
    assert (m.name, m.kind, m.origin, m.note) == ("s -> t", "classes", "m.yaml", "n")
    assert m.evaluated.codes == ("x", "z") and m.evaluated.focus == "x"
    assert m.evaluated.names == ("Ex", "Zed")
    # both groupings keep two groups on x and z, so both stay
    assert m.evaluated.groupings == {"risk": {"x": "high", "z": "low"}, "part": {"x": "not well", "z": "fine"}}
    assert m.evaluated.positive == {"risk": "high"}
    assert m.source_to_eval == {"a": "x", "b": "x", "c": "z", "d": None}
    assert m.target_to_eval == {"x": "x", "y": None, "z": "z"}
    assert m.unmapped_source == ("d",) and m.excluded_target == ("y",)
    assert m.matrix.tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]
    p = np.array([[0.1, 0.2, 0.3, 0.4],    # kept .6 of 1: x .3/.6, z .3/.6; unmapped .4
                  [0.0, 0.0, 0.0, 1.0],    # nothing on an evaluated class: uniform, unmapped 1
                  [0.0, 0.0, 0.0, 0.0],    # no mass at all: uniform, unmapped 0
                  [0.5, 0.0, 0.5, 0.0]])
    mapped, unmapped = m.map_probabilities(p)
    np.testing.assert_allclose(mapped, [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(unmapped, [0.4, 1.0, 0.0, 0.0])
    # scores that are not a distribution: the unmapped share is of the row's own total
    _, share = m.map_probabilities(np.array([[0.2, 0.4, 0.6, 0.8]]))
    np.testing.assert_allclose(share, [0.8 / 2.0])
    q = np.array([[0.6, 0.1, 0.1, 0.2]])
    mapped, unmapped = m.map_probabilities(q)
    np.testing.assert_allclose(mapped, [[0.7 / 0.8, 0.1 / 0.8]])
    np.testing.assert_allclose(unmapped, [0.2])
    labels, probs, share = m.predict(["d", None, "c"], np.array([[0.1, 0.0, 0.2, 0.7], [0.5, 0, 0.5, 0],
                                                                  [0, 0, 0, 1.0]]))
    # row 0: z wins (.2 vs .1); row 1: invalid stays invalid; row 2: no mass on evaluated classes
    assert labels == ["z", None, None]
    np.testing.assert_allclose(share, [0.7, 0.0, 1.0])
    assert m.predict(["a", "d", None], None) == (["x", None, None], None, None)
    assert m.map_target_labels(["y", "z"]) == [None, "z"]
    with pytest.raises(ValueError, match=r"^s -> t: probabilities have shape \(4,\), expected \(N, 4\)$"):
        m.map_probabilities(np.ones(4) / 4)
    with pytest.raises(ValueError, match=r"shape \(1, 3\), expected \(N, 4\)"):
        m.map_probabilities(np.ones((1, 3)) / 3)
    assert m.describe() == ("s -> t (classes, m.yaml): evaluated on x, z; a+b->x; c->z; excluded (no counterpart): y; "
                            "predicted classes without counterpart: d")
    d = m.to_dict()
    assert d["unmapped_source"] == ["d"] and d["excluded_target"] == ["y"] and d["kind"] == "classes"
    assert d["source_to_evaluated"] == {"a": "x", "b": "x", "c": "z", "d": None} and d["declared"]["note"] == "n"
    assert d["evaluated"] == m.evaluated.to_dict() and d["source"] == SRC.to_dict() and d["target"] == TGT.to_dict()
    assert d["target_to_evaluated"] == {"x": "x", "y": None, "z": "z"} and d["name"] == "s -> t"
    assert d["origin"] == "m.yaml" and d["note"] == "n"


def test_class_map_errors():
    with pytest.raises(lm.LabelMapError, match=r"^label map s -> t in m.yaml: 'q' is not a class of s \(a, b, c, d\)$"):
        lm.build(spec(classes={"q": "x", "a": "x", "b": "x", "c": "z", "d": None}), SRC, TGT)
    with pytest.raises(lm.LabelMapError, match="^label map s -> t in m.yaml: source classes c, d are not listed; map "
                                               "each source class to a class or to null"):
        lm.build(spec(classes={"a": "x", "b": "z"}), SRC, TGT)
    with pytest.raises(lm.LabelMapError, match=r"'w' is not a class of t \(x, y, z\)$"):
        lm.build(spec(classes={"a": "w", "b": "x", "c": "z", "d": None}), SRC, TGT)
    with pytest.raises(lm.LabelMapError, match=r"^label map s -> t in m.yaml: only \['x'\] would be evaluated; a map "
                                               "must leave at least two classes with a counterpart on both sides$"):
        lm.build(spec(classes={"a": "x", "b": "x", "c": None, "d": None}), SRC, TGT)


def test_a_map_onto_the_targets_grouping():
    m = lm.build(spec(classes={"a": "not well", "b": "not well", "c": "fine", "d": None}, target_grouping="part"),
                 SRC, TGT)
    assert m.kind == "classes" and m.evaluated.codes == ("not_well", "fine")
    assert (m.name, m.origin, m.spec.target_grouping) == ("s -> t", "m.yaml", "part")
    assert lm.build(spec(classes={"a": "fine", "b": "not well", "c": None, "d": None}, target_grouping="part",
                         note="by part"), SRC, TGT).note == "by part"
    assert m.evaluated.names == ("Not well", "Fine") and m.evaluated.focus is None
    assert m.source_to_eval == {"a": "not_well", "b": "not_well", "c": "fine", "d": None}
    assert m.target_to_eval == {"x": "not_well", "y": "not_well", "z": "fine"}
    only_one = spec(classes={"a": "fine", "b": None, "c": None, "d": None}, target_grouping="part")
    with pytest.raises(lm.LabelMapError, match=r"only \['fine'\] would be evaluated"):
        lm.build(only_one, SRC, TGT)
    with pytest.raises(lm.LabelMapError, match=r"^label map s -> t in m.yaml: the target's classes \(x, y, z\) have no "
                                               r"grouping 'size' \(groupings: risk, part\)$"):
        lm.build(spec(classes={"a": "x"}, target_grouping="size"), SRC, TGT)
    with pytest.raises(lm.LabelMapError, match="'wrong' is not a group of 'part' of t"):
        lm.build(spec(classes={"a": "wrong", "b": None, "c": None, "d": None}, target_grouping="part"), SRC, TGT)
    wide = LabelSet(codes=tuple(f"c{i}" for i in range(9)))
    with pytest.raises(lm.LabelMapError, match=r"the target's classes \(c0, c1, c2, c3, c4, c5, c6, c7, \.\.\.\) have "
                                               r"no grouping 'part' \(groupings: none\)"):
        lm.build(spec(classes={"a": "x"}, target_grouping="part"), SRC, wide)
    eight = LabelSet(codes=tuple(f"c{i}" for i in range(8)))  # all eight listed, no "..."
    with pytest.raises(lm.LabelMapError, match=r"the target's classes \(c0, c1, c2, c3, c4, c5, c6, c7\) have no"):
        lm.build(spec(classes={"a": "x"}, target_grouping="part"), SRC, eight)


def test_a_shared_grouping_with_the_same_groups():
    m = lm.build(spec(grouping="risk"), SRC, TGT)
    assert m.kind == "grouping" and m.note == "evaluated on the grouping 'risk'"
    assert m.evaluated.codes == ("high", "low") and m.evaluated.names == ("High", "Low")
    assert m.evaluated.focus == "high" and m.evaluated.positive == {"risk": "high"}
    assert m.evaluated.groupings == {"risk": {"high": "high", "low": "low"}}
    assert m.source_to_eval == {"a": "high", "b": "high", "c": "low", "d": "low"}
    assert m.target_to_eval == {"x": "high", "y": "low", "z": "low"}
    mapped, _ = m.map_probabilities(np.array([[0.1, 0.2, 0.3, 0.4]]))
    np.testing.assert_allclose(mapped, [[0.3, 0.7]])
    assert m.describe() == "s -> t (grouping, m.yaml): evaluated on high, low; a+b->high; c+d->low"
    assert lm.build(spec(grouping="risk", note="mine"), SRC, TGT).note == "mine"


def test_a_shared_positive_group_with_other_group_names():
    other = LabelSet(codes=("p", "q", "r"), groupings={"risk": {"p": "high", "q": "medium", "r": "none"}},
                     positive={"risk": "high"})
    m = lm.grouping_map(other, SRC, "risk", name="o -> s", origin="here")
    assert m.evaluated.codes == ("not_high", "high") and m.evaluated.names == ("Not high", "High")
    assert m.evaluated.focus == "high" and m.evaluated.groupings == {"risk": {"not_high": "not high", "high": "high"}}
    assert m.source_to_eval == {"p": "high", "q": "not_high", "r": "not_high"}
    assert m.target_to_eval == {"a": "high", "b": "high", "c": "not_high", "d": "not_high"}
    assert m.origin == "here" and m.spec is None
    no_positive = LabelSet(codes=("p", "q"), groupings={"risk": {"p": "high", "q": "medium"}})
    with pytest.raises(lm.LabelMapError, match=r"^o -> s: the groups of 'risk' differ \(high, medium vs high, low\) "
                                               r"and no shared positive group says which is which; write a label map"):
        lm.grouping_map(no_positive, SRC, "risk", name="o -> s", origin="")
    with pytest.raises(lm.LabelMapError, match=r"^o -> s: the source classes \(x, y\) have no grouping 'risk' "
                                               r"\(groupings: none\)$"):
        lm.grouping_map(LabelSet(codes=("x", "y")), SRC, "risk", name="o -> s", origin="")
    with pytest.raises(lm.LabelMapError, match=r"the target classes \(x, y\) have no grouping 'risk'"):
        lm.grouping_map(SRC, LabelSet(codes=("x", "y")), "risk", name="o -> s", origin="")
    nine = LabelSet(codes=tuple(f"k{i}" for i in range(9)))
    with pytest.raises(lm.LabelMapError, match=r"the target classes \(k0, k1, k2, k3, k4, k5, k6, k7, \.\.\.\) have no"):
        lm.grouping_map(SRC, nine, "risk", name="o -> s", origin="")
    assert m.note == "evaluated on the grouping 'risk'"  # the default note


def test_restrict_and_group_label_set():
    assert lm.restrict(SRC, ["a", "b", "c", "d"]) is SRC
    sub = lm.restrict(SRC, ["d", "a"])
    assert sub.codes == ("a", "d") and sub.names == ("Ay", "Dee") and sub.focus == "a"
    assert sub.synonyms == {"a": ("alpha",), "d": ("delta",)} and sub.positive == {"risk": "high"}
    low = lm.restrict(SRC, ["c", "d"])
    assert low.groupings == {} and low.positive == {} and low.focus is None and low.synonyms == {"d": ("delta",)}
    grouped = lm.group_label_set(TGT, "risk", ["low", "high"])
    assert grouped.codes == ("low", "high") and grouped.focus == "high" and grouped.positive == {"risk": "high"}
    assert grouped.groupings == {"risk": {"low": "low", "high": "high"}}
    plain = lm.group_label_set(TGT, "part", ["not well", "fine"])
    assert plain.codes == ("not_well", "fine") and plain.focus is None and plain.positive == {}
    assert lm._code("Not -- well!") == "not_well" and lm._code("!!") == "!!"
    assert lm._listed(["a", "b"]) == "a, b"
    assert lm._listed([str(i) for i in range(12)]) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
    assert lm._listed([str(i) for i in range(10)]) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"


# ------------------------------------------------------------------------ resolving a pair
def test_resolution_order_and_fallbacks(tmp_path):
    ident = lm.resolve_label_map("s", SRC, "s2", LabelSet.from_dict(SRC.to_dict()))
    assert ident.kind == "identity" and ident.origin == "same classes" and ident.name == "s -> s2"
    assert ident.note == "the two label sets have the same classes" and ident.unmapped_source == ()
    assert ident.describe() == "s -> s2 (identity, same classes): evaluated on a, b, c, d"
    shared = lm.resolve_label_map("s", SRC, "t", TGT)
    assert shared.kind == "grouping" and shared.origin == "shared grouping 'risk'"
    assert shared.note == "evaluated on the grouping 'risk'"
    # the user's file wins over the fallbacks; a map for other datasets is passed over
    mine = tmp_path / "mine.yaml"
    mine.write_text("maps:\n- {source: other, target: t, grouping: risk}\n"
                    "- {source: s, target: t, classes: {a: x, b: y, c: z, d: null}}\n", encoding="utf-8")
    m = lm.resolve_label_map("s", SRC, "t", TGT, [mine])
    assert m.kind == "classes" and m.origin == f"{mine} map 2"
    both = LabelSet(codes=("p", "q"), groupings={"part": {"p": "fine", "q": "not well"},
                                                 "malignancy": {"p": "m", "q": "n"}})
    target = LabelSet(codes=("u", "v"), groupings={"part": {"u": "fine", "v": "not well"},
                                                   "malignancy": {"u": "m", "v": "n"}})
    assert lm.resolve_label_map("b", both, "t", target).origin == "shared grouping 'malignancy'"
    clash = LabelSet(codes=("u", "v"), groupings={"risk": {"u": "high", "v": "odd"}})
    with pytest.raises(lm.LabelMapError) as info:
        lm.resolve_label_map("s", SRC, "c", clash)
    message = str(info.value)
    assert message.startswith("no label map from s's classes (a, b, c, d) to c's (u, v) and no shared grouping "
                              "(s -> c: the groups of 'risk' differ")
    assert message.endswith("write one (configs/labelmaps/README.md) and pass it with --label-map FILE")
    wide = LabelSet(codes=tuple(f"k{i}" for i in range(9)))
    with pytest.raises(lm.LabelMapError, match=r"^no label map from w's classes \(k0, k1, k2, k3, k4, k5, k6, k7, "
                                               r"\.\.\.\) to s's \(a, b, c, d\) and no shared grouping; write one"):
        lm.resolve_label_map("w", wide, "s", SRC)
    with pytest.raises(lm.LabelMapError, match=r"^no label map from s's classes \(a, b, c, d\) to w's \(k0, k1, k2, k3, "
                                               r"k4, k5, k6, k7, \.\.\.\) and no shared grouping; write one"):
        lm.resolve_label_map("s", SRC, "w", wide)
    eight = LabelSet(codes=tuple(f"k{i}" for i in range(8)))
    with pytest.raises(lm.LabelMapError, match=r"to e's \(k0, k1, k2, k3, k4, k5, k6, k7\) and no shared grouping"):
        lm.resolve_label_map("s", SRC, "e", eight)
