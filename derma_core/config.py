"""Layered, validated run configuration.

Resolution order (later wins): ``configs/default.yaml`` < ``configs/<plugin>.yaml`` <
``--config FILE`` < ``-o dotted.key=value``. The first two layers define the schema: a key
that neither declares is refused, and a value must have the type of the declared default
(an int is accepted for a float). Two optional top-level sections of a schema file refine it
and are dropped from the resolved config:

``_choices``  dotted key -> list of allowed values
``_types``    dotted key -> type name (``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``,
              ``any``), or several joined by ``|`` where a part that is not a type name is a
              literal word also allowed (``int|auto``: a whole number or ``auto``); null is
              allowed where the declared default is null
``_ranges``   dotted key -> ``[min, max]`` (either may be null) for numbers, inclusive; a
              literal word such as ``auto`` is not a number and is not range-checked

Every plugin's config file uses the same three sections, so every value is checked the same
way before any work starts (``--print-config`` included).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

_TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key path and what is allowed."""


def configs_dir() -> Path:
    """The folder holding default.yaml, the per-plugin files and ``tune/`` search spaces.

    ``DERMA_CONFIG_DIR`` overrides. In a checkout (editable install) it is the repository's
    top-level ``configs/``; an installed wheel carries that same folder, every file in it, as
    the package data ``derma_core/configs`` (setup.cfg maps ``derma_core.configs`` to
    ``configs``), found through importlib.resources. One source of files either way.
    """
    env = os.environ.get("DERMA_CONFIG_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parent.parent
    if (root / "configs" / "default.yaml").is_file() and (root / "setup.cfg").is_file():
        return root / "configs"
    from importlib.resources import files

    return Path(str(files("derma_core") / "configs"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key repeated in one mapping (PyYAML keeps the last one
    silently, so a second ``train:`` section would drop the first)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges are not duplicates
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.setdefault(key, line)
        except TypeError:  # an unhashable key: let PyYAML report it
            continue
        if first != line:
            raise DuplicateKeyError(f"line {line}: key {key!r} is repeated (first at line {first}); "
                                    "merge the two into one (YAML keeps only the last)")
    return loader.construct_mapping(node, deep=deep)


class DuplicateKeyError(ValueError):
    """A YAML mapping repeats a key."""


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as YAML, refusing duplicate keys at any level; errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(f"{source} {exc}") from None


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping file (a config, search space or study): one-line errors naming the file and
    line for missing files, invalid YAML and repeated keys."""
    from .textio import SAVE_AS_UTF8_REMEDY, TextEncodingError, read_text

    path = Path(path)
    try:
        text = read_text(path, remedy=SAVE_AS_UTF8_REMEDY)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except TextEncodingError as exc:  # one line: the file, line, byte offset and the byte
        raise ConfigError(str(exc)) from None
    try:
        data = parse_yaml(text, str(path))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        raise ConfigError(_reader_error(path, text, exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def _reader_error(path: Path, text: str, exc: yaml.reader.ReaderError) -> str:
    """PyYAML's reader error (two lines, a character offset) as one line: the file, line and
    column of the character, and what to do."""
    position = max(0, min(int(getattr(exc, "position", 0) or 0), len(text)))
    before = text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    char = getattr(exc, "character", None)
    what = f"character #x{char:04x}" if isinstance(char, int) else "a character"
    reason = str(getattr(exc, "reason", "") or "it is not allowed").strip()
    return (f"{path} line {line}, column {column}: not valid YAML ({what}: {reason}); delete that character or "
            "write it as an escape in a double-quoted string (YAML allows printable text, tabs and newlines)")


def deep_merge(base: dict, other: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_dotted(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


class Schema:
    """What keys exist, their types and allowed values, learned from the schema layers."""

    def __init__(self, defaults: dict, choices: dict[str, list] | None = None,
                 types: dict[str, str] | None = None, ranges: dict[str, list] | None = None) -> None:
        self.defaults = defaults
        self.choices = dict(choices or {})
        self.types = dict(types or {})
        self.ranges = dict(ranges or {})
        for key, name in self.types.items():
            parts = str(name).split("|")
            if not any(part == "any" or part in _TYPE_NAMES for part in parts):
                raise ConfigError(f"_types.{key}: unknown type {name!r} (use {', '.join(_TYPE_NAMES)}, any, "
                                  "or several joined by |, e.g. int|auto)")
        for key, bounds in self.ranges.items():
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or any(b is not None and not _is_type(b, float) for b in bounds)):
                raise ConfigError(f"_ranges.{key}: must be [min, max] with numbers or null, got {bounds!r}")

    def validate(self, config: dict, source: str, prefix: str = "", schema: dict | None = None) -> None:
        schema = self.defaults if schema is None else schema
        for key, value in config.items():
            path = f"{prefix}{key}"
            if key not in schema:
                allowed = ", ".join(sorted(k for k in schema if not str(k).startswith("_")))
                section = f"section {prefix[:-1]!r}" if prefix else "the top level"
                raise ConfigError(f"{source}: unknown key {path!r}; {section} allows: {allowed}")
            default = schema[key]
            if isinstance(default, dict) and default and isinstance(value, dict):
                self.validate(value, source, path + ".", default)
                continue
            self.check_value(path, value, default, source)

    def check_value(self, path: str, value: Any, default: Any, source: str) -> None:
        declared = self.types.get(path)
        if declared is not None:
            parts = str(declared).split("|")
            words = [p for p in parts if p != "any" and p not in _TYPE_NAMES]
            ok = ("any" in parts or (value is None and default is None) or value in words
                  or any(_is_type(value, _TYPE_NAMES[p]) for p in parts if p in _TYPE_NAMES))
            expected = " or ".join(p if p in _TYPE_NAMES else repr(p) for p in parts)
        elif default is None:
            ok, expected = True, "any"
        elif isinstance(default, dict):
            ok, expected = isinstance(value, dict), "a mapping"
        else:
            ok = _is_type(value, type(default))
            expected = type(default).__name__
        if not ok:
            raise ConfigError(f"{source}: {path} must be {expected}, got {value!r} ({type(value).__name__})")
        if path in self.choices and value not in self.choices[path]:
            allowed = ", ".join(str(c) for c in self.choices[path])
            raise ConfigError(f"{source}: {path} must be one of {allowed}, got {value!r}")
        if path in self.ranges and _is_type(value, float):
            low, high = self.ranges[path]
            if (low is not None and value < low) or (high is not None and value > high):
                if low is not None and high is not None:
                    allowed = f"between {low} and {high}"
                else:
                    allowed = f">= {low}" if low is not None else f"<= {high}"
                raise ConfigError(f"{source}: {path} must be {allowed}, got {value!r}")


def _is_type(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; values are parsed as YAML (numbers,
    booleans, null, ``[1, 2]`` lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-3" as a string; numbers people type should be numbers
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key, value


def _split_meta(data: dict) -> tuple[dict, dict, dict, dict]:
    data = dict(data)
    choices = data.pop("_choices", None) or {}
    types = data.pop("_types", None) or {}
    ranges = data.pop("_ranges", None) or {}
    return data, choices, types, ranges


def build_schema(paths: Iterable[Path]) -> tuple[dict, Schema]:
    defaults: dict = {}
    choices: dict = {}
    types: dict = {}
    ranges: dict = {}
    for path in paths:
        data, c, t, r = _split_meta(load_yaml(path))
        try:
            Schema({}, c, t, r)  # a plugin author's typo in _types/_ranges names their file
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        defaults = deep_merge(defaults, data)
        choices.update(c)
        types.update(t)
        ranges.update(r)
    schema = Schema(defaults, choices, types, ranges)
    schema.validate(defaults, " < ".join(str(p) for p in paths))  # a schema's own defaults must pass it
    return defaults, schema


def resolve_config(
    plugin: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    values: dict[str, Any] | None = None,
    plugin_config: Path | None = None,
) -> dict:
    """The resolved config for ``plugin``: defaults, plugin file, ``config_file``,
    ``overrides`` (``dotted.key=value`` strings), then ``values`` (dotted key -> value, from
    CLI flags such as ``--seed``). Raises :class:`ConfigError` before any work starts."""
    base = configs_dir() / "default.yaml"
    layers = [base]
    if plugin_config is None and plugin is not None:
        candidate = configs_dir() / f"{plugin}.yaml"
        plugin_config = candidate if candidate.exists() else None
    if plugin_config is not None:
        layers.append(Path(plugin_config))
    defaults, schema = build_schema(layers)
    config = copy.deepcopy(defaults)  # the schema keeps the declared defaults, unchanged by overrides
    if config_file is not None:
        user = _split_meta(load_yaml(config_file))[0]
        schema.validate(user, str(config_file))
        config = deep_merge(config, user)
    for text in overrides:
        key, value = parse_override(text)
        schema.validate(_nest(key, value), f"-o {text}")
        set_dotted(config, key, value)
    for key, value in (values or {}).items():
        if value is None:
            continue
        schema.validate(_nest(key, value), f"--{key.split('.')[-1].replace('_', '-')}")
        set_dotted(config, key, value)
    if plugin is not None:
        config["plugin"] = plugin
    return config


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    set_dotted(out, dotted, value)
    return out


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
