"""The config schema and its helpers (derma_core/config.py), case by case: each refusal with its
exact one-line message, the boundaries of ``_ranges`` and ``_types``, override parsing, the
dict helpers (merge without aliasing, dotted access), and where the config folder is found.
tests/test_config.py covers the layering end to end; this module pins the pieces.

Mutation testing (`python scripts/mutation.py derma_core/config.py`, see docs/testing.md):
mutants judged equivalent are listed at the end of this module.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from derma_core import config as cfg
from derma_core.config import (
    ConfigError,
    Schema,
    build_schema,
    configs_dir,
    deep_merge,
    dump_config,
    flatten,
    get_dotted,
    load_yaml,
    parse_override,
    resolve_config,
    set_dotted,
)


def _refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# where the config folder is


def test_the_environment_names_the_config_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DERMA_CONFIG_DIR", str(tmp_path))
    assert configs_dir() == tmp_path
    monkeypatch.setenv("DERMA_CONFIG_DIR", "")
    assert configs_dir() != Path("")  # an empty value is no override


@pytest.mark.parametrize("default_yaml, setup_cfg, checkout", [
    (True, True, True), (True, False, False), (False, True, False)])
def test_a_checkout_is_a_configs_folder_with_default_yaml_beside_setup_cfg(
        monkeypatch, tmp_path, default_yaml, setup_cfg, checkout):
    monkeypatch.delenv("DERMA_CONFIG_DIR", raising=False)
    (tmp_path / "derma_core").mkdir()
    (tmp_path / "configs").mkdir()
    if default_yaml:
        (tmp_path / "configs" / "default.yaml").write_text("seed: 1\n")
    if setup_cfg:
        (tmp_path / "setup.cfg").write_text("[metadata]\n")
    monkeypatch.setattr(cfg, "__file__", str(tmp_path / "derma_core" / "config.py"))
    found = configs_dir()
    if checkout:
        assert found == tmp_path / "configs"
    else:  # an installed wheel: the package data
        assert found == Path(str(files("derma_core") / "configs"))


def test_this_checkout_finds_its_own_configs(monkeypatch):
    monkeypatch.delenv("DERMA_CONFIG_DIR", raising=False)
    assert (configs_dir() / "default.yaml").is_file()


# ---------------------------------------------------------------------------------------------
# YAML files


def test_load_yaml_refusals_name_the_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert _refusal(load_yaml, missing) == f"config file {missing} does not exist"
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert _refusal(load_yaml, listed) == f"{listed}: the top level must be a mapping of keys to values"
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [\n")
    message = _refusal(load_yaml, bad)
    assert message.startswith(f"{bad} line 3: not valid YAML (") and message.endswith(")")


def _control_character_file(tmp_path) -> Path:
    """A control character: PyYAML's reader error has no line mark and no ``problem``."""
    odd = tmp_path / "odd.yaml"
    odd.write_text("a: 1\nb: \x07\n")
    return odd


def test_a_file_yaml_cannot_read_is_refused_as_invalid_yaml(tmp_path):
    odd = _control_character_file(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_yaml(odd)
    assert str(info.value).startswith(f"{odd} line 2, column 4: not valid YAML (") and "#x0007" in str(info.value)


def test_a_file_yaml_cannot_read_is_refused_in_one_line(tmp_path):
    """PyYAML's reader error is two lines with a character offset: one line here, with the line,
    the column and what to do."""
    assert _refusal(load_yaml, _control_character_file(tmp_path)) == (
        f"{tmp_path / 'odd.yaml'} line 2, column 4: not valid YAML (character #x0007: special characters are not "
        "allowed); delete that character or write it as an escape in a double-quoted string (YAML allows printable "
        "text, tabs and newlines)")


def test_a_control_character_deep_in_a_file_is_placed_by_line_and_column(tmp_path):
    odd = tmp_path / "deep.yaml"
    odd.write_text("train:\n  epochs: 3\n  optimizer: ad\x1bamw\n")
    message = _refusal(load_yaml, odd)
    assert message.startswith(f"{odd} line 3, column 16: not valid YAML (character #x001b")


def test_a_byte_that_is_not_utf8_is_refused_naming_line_and_offset(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  note: café\n".encode("latin-1"))
    assert _refusal(load_yaml, latin) == (f"{latin} line 2, byte offset 18: 0xe9 is not valid utf-8 (invalid "
                                          "continuation byte); save the file as UTF-8 (e.g. iconv -f latin-1 -t "
                                          "utf-8 FILE > NEW)")


def test_a_utf8_byte_order_mark_is_read(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 3\n")
    assert load_yaml(bom) == {"train": {"epochs": 3}}


def test_a_repeated_key_is_refused_naming_both_lines(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    assert _refusal(load_yaml, twice) == (f"{twice} line 3: key 'epochs' is repeated (first at line 2); "
                                          "merge the two into one (YAML keeps only the last)")


def test_an_empty_yaml_file_is_an_empty_mapping(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    assert load_yaml(empty) == {}


# ---------------------------------------------------------------------------------------------
# dict helpers


def test_deep_merge_merges_sections_and_replaces_values():
    base = {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2], "c": 3, "d": {"k": 1}}
    other = {"a": {"y": {"q": 2}, "z": 3}, "b": [3], "c": {"now": "a section"}, "d": 5}
    merged = deep_merge(base, other)
    assert merged == {"a": {"x": 1, "y": {"p": 1, "q": 2}, "z": 3}, "b": [3], "c": {"now": "a section"}, "d": 5}


def test_deep_merge_shares_nothing_with_its_inputs():
    base = {"a": {"list": [1]}, "keep": {"n": [0]}}
    other = {"a": {"new": [2]}}
    merged = deep_merge(base, other)
    merged["a"]["list"].append(9)
    merged["a"]["new"].append(9)
    merged["keep"]["n"].append(9)
    assert base == {"a": {"list": [1]}, "keep": {"n": [0]}} and other == {"a": {"new": [2]}}


def test_get_dotted():
    config = {"a": {"b": {"c": 0}}, "v": 1}
    assert get_dotted(config, "a.b.c") == 0
    assert get_dotted(config, "a.b") == {"c": 0}
    assert get_dotted(config, "a.x", "fallback") == "fallback"
    assert get_dotted(config, "v.w", "fallback") == "fallback"  # v is a value, not a section
    assert get_dotted(config, "nope") is None


def test_set_dotted_makes_sections_and_refuses_to_descend_into_a_value():
    config = {"v": 1}
    set_dotted(config, "a.b.c", 5)
    set_dotted(config, "a.b.d", 6)
    assert config == {"v": 1, "a": {"b": {"c": 5, "d": 6}}}
    assert _refusal(set_dotted, config, "v.w", 1) == "v.w: 'v' is a value, not a section"


def test_flatten_keeps_lists_and_empty_sections_as_values():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}
    assert flatten({"x": 1}, "pre.") == {"pre.x": 1}


def test_dump_config_keeps_the_order_in_block_style():
    text = dump_config({"z": 1, "a": {"b": [1, 2]}})
    assert text == "z: 1\na:\n  b:\n  - 1\n  - 2\n"
    assert yaml.safe_load(text) == {"z": 1, "a": {"b": [1, 2]}}


# ---------------------------------------------------------------------------------------------
# overrides


@pytest.mark.parametrize("text, expected", [
    ("a.b=10", ("a.b", 10)),
    ("a.b=1E5", ("a.b", 100000.0)),      # YAML 1.1 reads this as a string; people mean a number
    ("a.b=2.", ("a.b", 2.0)),
    ("a.b=1.5.2", ("a.b", "1.5.2")),    # not a number: kept as text
    ("a.b=e", ("a.b", "e")),
    ("a.b=x=y", ("a.b", "x=y")),        # only the first = separates
    (" a.b = 3", ("a.b", 3)),
    ("a.b=   ", ("a.b", "")),
    ("a.b=[1, 2", ("a.b", "[1, 2")),    # not valid YAML: the text as typed
])
def test_override_parsing(text, expected):
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("text, message", [
    ("novalue", "override 'novalue' must look like dotted.key=value"),
    ("=3", "override '=3' has an empty key"),
    ("  =3", "override '  =3' has an empty key"),
])
def test_malformed_overrides_are_refused(text, message):
    assert _refusal(parse_override, text) == message


# ---------------------------------------------------------------------------------------------
# the schema: types, choices, ranges

DEFAULTS = {
    "n": 3, "x": 0.5, "flag": False, "name": "a", "items": [1], "section": {"k": 1}, "free": None,
    "mode": "auto", "opt": None, "group": {"inner": {"deep": 1}},
}


def _schema(**kw) -> Schema:
    return Schema(DEFAULTS, **kw)


def _check(schema: Schema, dotted: str, value):
    schema.validate(_nest(dotted, value), "src")


def _nest(dotted, value):
    out: dict = {}
    set_dotted(out, dotted, value)
    return out


@pytest.mark.parametrize("key, value, message", [
    ("n", 2.5, "src: n must be int, got 2.5 (float)"),
    ("n", True, "src: n must be int, got True (bool)"),
    ("x", "1", "src: x must be float, got '1' (str)"),
    ("x", False, "src: x must be float, got False (bool)"),
    ("flag", 1, "src: flag must be bool, got 1 (int)"),
    ("name", 3, "src: name must be str, got 3 (int)"),
    ("items", "1", "src: items must be list, got '1' (str)"),
    ("section", 4, "src: section must be a mapping, got 4 (int)"),
    ("group.inner", [1], "src: group.inner must be a mapping, got [1] (list)"),
    ("group.inner.deep", "d", "src: group.inner.deep must be int, got 'd' (str)"),
])
def test_a_value_must_have_the_type_of_its_default(key, value, message):
    assert _refusal(_check, _schema(), key, value) == message


@pytest.mark.parametrize("key, value", [
    ("x", 2), ("x", 0.1), ("n", 0), ("free", [1, "a"]), ("free", None), ("section", {"k": 2}),
    ("group.inner.deep", 4),
])
def test_values_of_the_right_type_pass(key, value):
    _check(_schema(), key, value)


def test_unknown_keys_name_the_section_and_what_it_allows():
    schema = Schema({"a": 1, "_hidden": 2, "b": {"y": 1, "x": 2}})
    assert _refusal(schema.validate, {"c": 1}, "file.yaml") == (
        "file.yaml: unknown key 'c'; the top level allows: a, b")
    assert _refusal(schema.validate, {"b": {"z": 1}}, "file.yaml") == (
        "file.yaml: unknown key 'b.z'; section 'b' allows: x, y")


def test_declared_types_with_literal_words():
    schema = _schema(types={"mode": "int|auto", "opt": "float", "free": "str|list", "name": "any"})
    _check(schema, "mode", "auto")
    _check(schema, "mode", 4)
    _check(schema, "opt", None)       # null allowed where the default is null
    _check(schema, "opt", 2)          # an int for a float
    _check(schema, "free", [1])
    _check(schema, "name", {"any": "thing"})
    assert _refusal(_check, schema, "mode", "manual") == "src: mode must be int or 'auto', got 'manual' (str)"
    assert _refusal(_check, schema, "mode", 2.5) == "src: mode must be int or 'auto', got 2.5 (float)"
    assert _refusal(_check, schema, "opt", "x") == "src: opt must be float, got 'x' (str)"
    assert _refusal(_check, schema, "free", 3) == "src: free must be str or list, got 3 (int)"
    # a type's name is not one of the literal words
    assert _refusal(_check, schema, "mode", "int") == "src: mode must be int or 'auto', got 'int' (str)"
    # null is not allowed where the default is not null
    assert _refusal(_check, _schema(types={"n": "int"}), "n", None) == "src: n must be int, got None (NoneType)"


def test_unknown_type_names_are_refused():
    message = _refusal(Schema, {}, types={"a.b": "integer"})
    assert message == ("_types.a.b: unknown type 'integer' (use str, int, float, bool, list, dict, any, "
                       "or several joined by |, e.g. int|auto)")
    assert _refusal(Schema, {}, types={"a": "auto|manual"}).startswith("_types.a: unknown type 'auto|manual'")
    Schema({}, types={"a": "any", "b": "dict|auto", "c": "bool"})


@pytest.mark.parametrize("bounds", [[1], [1, 2, 3], "1,2", [True, 2], [1, "2"], None])
def test_malformed_ranges_are_refused(bounds):
    assert _refusal(Schema, {}, ranges={"a": bounds}) == (
        f"_ranges.a: must be [min, max] with numbers or null, got {bounds!r}")


def test_choices():
    schema = _schema(choices={"name": ["a", "b"], "n": [1, 3]})
    _check(schema, "name", "b")
    _check(schema, "n", 1)
    assert _refusal(_check, schema, "name", "c") == "src: name must be one of a, b, got 'c'"
    assert _refusal(_check, schema, "n", 2) == "src: n must be one of 1, 3, got 2"


def test_ranges_are_inclusive_and_say_which_bound():
    schema = _schema(ranges={"x": [0, 1], "n": [1, None], "opt": [None, 10]},
                     types={"mode": "float|auto"})
    for ok in (0, 0.5, 1):
        _check(schema, "x", ok)
    _check(schema, "n", 1)
    _check(schema, "n", 10 ** 6)
    _check(schema, "opt", 10)
    _check(schema, "opt", -5.5)
    assert _refusal(_check, schema, "x", 1.5) == "src: x must be between 0 and 1, got 1.5"
    assert _refusal(_check, schema, "x", -0.01) == "src: x must be between 0 and 1, got -0.01"
    assert _refusal(_check, schema, "n", 0) == "src: n must be >= 1, got 0"
    assert _refusal(_check, schema, "opt", 10.5) == "src: opt must be <= 10, got 10.5"


def test_a_word_is_not_range_checked():
    schema = _schema(types={"mode": "float|auto"}, ranges={"mode": [0, 1]})
    _check(schema, "mode", "auto")
    _check(schema, "mode", 1)
    assert _refusal(_check, schema, "mode", 2) == "src: mode must be between 0 and 1, got 2"


# ---------------------------------------------------------------------------------------------
# building a schema from files, resolving a config


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_build_schema_merges_layers_and_their_meta_sections(tmp_path):
    base = _write(tmp_path / "default.yaml", {
        "a": 1, "m": "x", "r": 0.5, "w": None,
        "_choices": {"m": ["x", "y"]}, "_types": {"w": "str"}, "_ranges": {"r": [0, 1]}})
    plugin = _write(tmp_path / "p.yaml", {"b": {"c": 2}, "_choices": {"m": ["x", "z"]}, "_ranges": {"b.c": [1, 5]}})
    defaults, schema = build_schema([base, plugin])
    assert defaults == {"a": 1, "m": "x", "r": 0.5, "w": None, "b": {"c": 2}}  # meta sections dropped
    assert schema.choices == {"m": ["x", "z"]}  # a later layer's list replaces an earlier one
    assert schema.types == {"w": "str"} and schema.ranges == {"r": [0, 1], "b.c": [1, 5]}
    assert _refusal(schema.validate, {"b": {"c": 6}}, "s") == "s: b.c must be between 1 and 5, got 6"


def test_empty_meta_sections_are_allowed(tmp_path):
    base = tmp_path / "default.yaml"
    base.write_text("a: 1\n_choices:\n_types:\n_ranges:\n")
    defaults, schema = build_schema([base])
    assert defaults == {"a": 1} and schema.choices == schema.types == schema.ranges == {}


def test_a_typo_in_a_plugin_schema_names_its_file(tmp_path):
    base = _write(tmp_path / "default.yaml", {"a": 1})
    plugin = _write(tmp_path / "p.yaml", {"b": 1, "_types": {"b": "integer"}})
    assert _refusal(build_schema, [base, plugin]).startswith(f"{plugin}: _types.b: unknown type 'integer'")


def test_a_schema_whose_own_defaults_break_it_is_refused(tmp_path):
    base = _write(tmp_path / "default.yaml", {"a": 5, "_ranges": {"a": [0, 1]}})
    plugin = _write(tmp_path / "p.yaml", {"b": 1})
    assert _refusal(build_schema, [base, plugin]) == f"{base} < {plugin}: a must be between 0 and 1, got 5"


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    d = tmp_path / "configs"
    d.mkdir()
    _write(d / "default.yaml", {"plugin": None, "seed": 42, "train": {"max_epochs": 3, "lr": 0.1},
                                "_types": {"plugin": "str"}, "_ranges": {"train.lr": [0, 1]}})
    _write(d / "demo.yaml", {"model": {"width": 8}})
    monkeypatch.setenv("DERMA_CONFIG_DIR", str(d))
    return d


def test_resolve_without_a_plugin_uses_the_defaults_only(config_dir):
    config = resolve_config()
    assert config == {"plugin": None, "seed": 42, "train": {"max_epochs": 3, "lr": 0.1}}


def test_a_plugin_config_given_as_a_path(config_dir, tmp_path):
    other = _write(tmp_path / "elsewhere.yaml", {"head": {"depth": 2}})
    config = resolve_config("mine", plugin_config=other)
    assert config["head"] == {"depth": 2} and config["plugin"] == "mine" and "model" not in config


def test_a_user_file_cannot_extend_the_schema(config_dir, tmp_path):
    user = _write(tmp_path / "user.yaml", {"seed": 1, "_ranges": {"seed": [5, 6]}, "_choices": {"seed": [9]}})
    config = resolve_config("demo", user)
    assert config["seed"] == 1 and "_ranges" not in config and "_choices" not in config


def test_cli_values_are_checked_and_named_as_flags(config_dir):
    config = resolve_config("demo", values={"seed": 7, "train.max_epochs": None, "train.lr": 0.5})
    assert config["seed"] == 7 and config["train"] == {"max_epochs": 3, "lr": 0.5}  # None: flag not given
    assert _refusal(resolve_config, "demo", values={"train.max_epochs": "x"}) == (
        "--max-epochs: train.max_epochs must be int, got 'x' (str)")
    assert _refusal(resolve_config, "demo", values={"train.lr": 2}) == "--lr: train.lr must be between 0 and 1, got 2"
    assert _refusal(resolve_config, "demo", overrides=["train.lr=3"]) == (
        "-o train.lr=3: train.lr must be between 0 and 1, got 3")


# Equivalent mutants of config.py (no observable change), from a 100-mutant sample:
# - build_schema: the throw-away `Schema({}, c, t, r)` that checks a layer's _types/_ranges with
#   None for its defaults: __init__ only stores the defaults; the checks use c, t and r.
# - _construct_unique_mapping: `construct_mapping(node, deep=deep)` -> deep dropped, and
#   `construct_object(key_node, deep=True)` -> deep=None: keys are scalars (an unhashable key is
#   left to PyYAML), and yaml.load completes nested mappings either way.
