"""Search spaces: YAML over a backend's config keys, checked against its schema before any trial."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")


class TuneError(ValueError):
    """A search space, study or tuning option is wrong; the message says what to change."""


# -- search spaces ---------------------------------------------------------------------------
_MISSING = object()


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TuneError(f"{where}: expected a number, got {value!r}")
    return value


@dataclass
class Param:
    """One searched config key."""

    key: str
    kind: str                       # categorical | float | int
    choices: list | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: dict[str, list] = field(default_factory=dict)
    multiple_of: str | None = None
    grid: list | None = None

    @property
    def name(self) -> str:
        """The Optuna parameter name: the config key, or ``key/base`` for a multiple."""
        return f"{self.key}/{self.multiple_of}" if self.multiple_of else self.key

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(k, _MISSING) in allowed for k, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def candidates(self) -> list:
        """Values worth checking against the schema (choices, or the range's ends and grid)."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high, *(self.grid or [])]

    def grid_values(self, where: str) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.grid:
            return list(self.grid)
        if self.kind == "int" and not self.log and (int(self.high) - int(self.low)) // int(self.step or 1) < 100:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise TuneError(f"{where}: params.{self.key}: the grid sampler needs `grid: [values]` for a range")


@dataclass
class SearchSpace:
    """A parsed search space file."""

    path: str
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    direction: str | None = None
    sampler: str | None = None
    pruner: dict[str, Any] | None = None
    raw: dict = field(default_factory=dict)

    def sample(self, trial) -> dict[str, Any]:
        """Suggest every active parameter; returns config key -> value."""
        values: dict[str, Any] = {}
        for param in self.params:
            if not param.active(values):
                continue
            value = param.suggest(trial)
            if param.multiple_of:
                base = values.get(param.multiple_of, _MISSING)
                if base is _MISSING:
                    raise TuneError(f"{self.path}: params.{param.key}: multiple_of {param.multiple_of!r} has no value")
                value = base * value
            values[param.key] = value
        return values

    def grid(self) -> dict[str, list]:
        return {p.name: p.grid_values(self.path) for p in self.params}


_PARAM_FIELDS = {"choices", "float", "int", "log", "step", "when", "multiple_of", "grid"}
_SPACE_FIELDS = {"params", "fixed", "metric", "direction", "sampler", "pruner", "plugin"}


def parse_space(data: dict, path: str = "<space>") -> SearchSpace:
    """Check the structure of a space mapping (keys and values are checked by :func:`validate_space`)."""
    if not isinstance(data, dict):
        raise TuneError(f"{path}: a search space must be a mapping with a `params` section")
    unknown = sorted(set(data) - _SPACE_FIELDS)
    if unknown:
        raise TuneError(f"{path}: unknown section(s) {unknown}; allowed: {', '.join(sorted(_SPACE_FIELDS))}")
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise TuneError(f"{path}: `params` must map config keys to ranges, e.g. train.lr: {{float: [1.0e-5, 1.0e-3], log: true}}")
    params = [_parse_param(key, spec, f"{path}: params.{key}") for key, spec in raw_params.items()]
    seen = {str(key) for key in raw_params}
    params = _dependency_order(params, path)
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise TuneError(f"{path}: fixed must map config keys to values")
    overlap = sorted(set(fixed) & seen)
    if overlap:
        raise TuneError(f"{path}: {overlap} are both fixed and searched")
    pruner = _parse_pruner(data.get("pruner"), path)
    direction = data.get("direction")
    if direction is not None and direction not in ("maximize", "minimize"):
        raise TuneError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    sampler = data.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise TuneError(f"{path}: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return SearchSpace(path=path, params=params, fixed=dict(fixed), metric=data.get("metric"),
                       direction=direction, sampler=sampler, pruner=pruner, raw=copy.deepcopy(data))


def _parse_param(key, spec, where: str) -> Param:
    """One entry of `params`: choices, or a float or int range; `when` and `multiple_of`."""
    if not isinstance(spec, dict):
        raise TuneError(f"{where}: expected a mapping such as {{choices: [...]}} or {{float: [low, high]}}")
    bad = sorted(set(spec) - _PARAM_FIELDS)
    if bad:
        raise TuneError(f"{where}: unknown field(s) {bad}; allowed: {', '.join(sorted(_PARAM_FIELDS))}")
    kinds = [k for k in ("choices", "float", "int") if k in spec]
    if len(kinds) != 1:
        raise TuneError(f"{where}: give exactly one of choices: [...], float: [low, high], int: [low, high]")
    kind = kinds[0]
    param = Param(key=str(key), kind="categorical" if kind == "choices" else kind,
                  log=bool(spec.get("log", False)), multiple_of=spec.get("multiple_of"))
    if kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: choices must be a non-empty list")
        if any(not (c is None or isinstance(c, (bool, int, float, str))) for c in choices):
            raise TuneError(f"{where}: choices must be numbers, strings, booleans or null")
        param.choices = choices
    else:
        _parse_range(param, spec, kind, where)
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise TuneError(f"{where}: when must map another parameter's key to a value or list of values")
    for other, allowed in when.items():
        param.when[str(other)] = allowed if isinstance(allowed, list) else [allowed]
    if param.multiple_of is not None and not isinstance(param.multiple_of, str):
        raise TuneError(f"{where}: multiple_of must be a config key")
    return param


def _parse_range(param: Param, spec: dict, kind: str, where: str) -> None:
    """A float or int range's bounds, step and grid, into ``param``."""
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise TuneError(f"{where}: {kind} must be [low, high]")
    low, high = (_number(b, f"{where}.{kind}") for b in bounds)
    if kind == "int" and (not float(low).is_integer() or not float(high).is_integer()):
        raise TuneError(f"{where}: int bounds must be whole numbers, got {bounds}")
    if low >= high:
        raise TuneError(f"{where}: low {low} must be below high {high}")
    if param.log and low <= 0:
        raise TuneError(f"{where}: a log range needs low > 0, got {low}")
    param.low, param.high = (int(low), int(high)) if kind == "int" else (float(low), float(high))
    if "step" in spec:
        param.step = _number(spec["step"], f"{where}.step")
        if param.log:
            raise TuneError(f"{where}: step and log cannot be combined")
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, list) or not grid:
            raise TuneError(f"{where}: grid must be a non-empty list")
        param.grid = [_number(g, f"{where}.grid") for g in grid]
        outside = [g for g in param.grid if not low <= g <= high]
        if outside:
            raise TuneError(f"{where}: grid values {outside} lie outside [{low}, {high}]")


def _parse_pruner(pruner, path: str) -> dict | None:
    """The `pruner` section: a name, or a mapping with a name and its options (None: not given)."""
    if isinstance(pruner, str):
        pruner = {"name": pruner}
    if pruner is not None:
        if not isinstance(pruner, dict) or pruner.get("name", "median") not in PRUNERS:
            raise TuneError(f"{path}: pruner must be one of {', '.join(PRUNERS)} or {{name: median, n_startup_trials: N, n_warmup_steps: N}}")
        extra = sorted(set(pruner) - {"name", "n_startup_trials", "n_warmup_steps", "interval_steps"})
        if extra:
            raise TuneError(f"{path}: pruner: unknown option(s) {extra}")
    return pruner


def _dependency_order(params: list[Param], path: str) -> list[Param]:
    """File order, except that a parameter comes after those its `when`/`multiple_of` name."""
    by_key = {p.key: p for p in params}
    for p in params:
        for dep in [*p.when, *([p.multiple_of] if p.multiple_of else [])]:
            if dep not in by_key:
                field_name = "when" if dep in p.when else "multiple_of"
                raise TuneError(f"{path}: params.{p.key}: {field_name} names {dep!r}, which is not a searched parameter")
    ordered: list[Param] = []
    state: dict[str, int] = {}

    def visit(p: Param) -> None:
        if state.get(p.key) == 2:
            return
        if state.get(p.key) == 1:
            raise TuneError(f"{path}: params.{p.key}: its `when`/`multiple_of` dependencies form a cycle")
        state[p.key] = 1
        for dep in [*p.when, *([p.multiple_of] if p.multiple_of else [])]:
            visit(by_key[dep])
        state[p.key] = 2
        ordered.append(p)

    for p in params:
        visit(p)
    return ordered


def load_space(path: str | os.PathLike) -> SearchSpace:
    from ..config import ConfigError, load_yaml

    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise TuneError(str(exc)) from None
    return parse_space(data, str(path))


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def plugin_schema(plugin: str):
    """The config schema of ``plugin`` (default.yaml plus its own file), as resolve_config builds it."""
    from .. import plugins
    from ..config import build_schema, configs_dir

    plugins.get_classifier(plugin)  # an unknown plugin is refused, naming the installed ones
    # the same file `derma run` uses: configs/<plugin>.yaml (installed with the core), else the
    # plugin's registered one
    plugin_cfg = plugins.classifier_config_path(plugin, configs_dir())
    layers = [configs_dir() / "default.yaml"]
    if plugin_cfg is not None:
        layers.append(Path(plugin_cfg))
    return build_schema(layers)


def _check_value(schema, defaults: dict, key: str, value: Any, where: str) -> None:
    from ..config import ConfigError, get_dotted

    default = get_dotted(defaults, key, _MISSING)
    if isinstance(default, dict) and default:
        raise TuneError(f"{where}: {key!r} is a config section, not a value; name one of its keys "
                        f"({', '.join(sorted(default))})")
    try:
        schema.validate(_nest(key, value), where)
    except ConfigError as exc:
        raise TuneError(str(exc)) from None


def validate_space(space: SearchSpace, schema, defaults: dict, base_config: dict) -> None:
    """Refuse, naming the key path, any key the schema lacks or any value of the wrong type."""
    from ..config import get_dotted

    for key, value in space.fixed.items():
        _check_value(schema, defaults, key, value, f"{space.path}: fixed.{key}")
    by_key = {p.key: p for p in space.params}
    for param in space.params:
        where = f"{space.path}: params.{param.key}"
        if param.multiple_of:
            base = by_key[param.multiple_of]
            bases = base.candidates() if base.kind != "float" else [base.low, base.high]
            values = [b * f for b in bases for f in param.candidates()]
        else:
            values = param.candidates()
        for value in values:
            _check_value(schema, defaults, param.key, value, where)
        for other, allowed in param.when.items():
            for value in allowed:
                _check_value(schema, defaults, other, value, f"{where}: when.{other}")
        if get_dotted(base_config, param.key, _MISSING) is _MISSING:
            raise TuneError(f"{where}: unknown config key {param.key!r}")


def apply_values(config: dict, values: dict[str, Any]) -> dict:
    from ..config import set_dotted

    out = copy.deepcopy(config)
    for key, value in values.items():
        set_dotted(out, key, value)
    return out
