"""The plugin manager: built-in plugins, entry-point plugins loaded one at a time, registries.

Plugins are found in the ``derma`` entry-point group. Each is imported and registered on its
own: one that fails to import, or implements a hook derma does not define (a misspelled name),
or has a hook with the wrong arguments, is recorded in :func:`load_errors` (shown by ``derma
plugins`` and by any command that asks for it) and never stops the others. Registration hooks
are called plugin by plugin: one whose hook body raises is recorded in :func:`hook_errors` and
the others' registrations stand; a name two plugins register is given to neither and recorded
in :func:`name_clashes`, so the command that needs it fails naming both. ``DERMA_LOAD_PLUGINS``
(comma-separated entry-point names; empty loads none) and ``DERMA_DISABLE_PLUGINS`` choose what
loads.
``DERMA_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs

GROUP = "derma"

#: The core's own features, registered through the same hooks as any plugin.
DEFAULT_PLUGINS = (
    "derma_core.prior",
    "derma_core.prompts",
    "derma_core.evaluation",
    "derma_core.data.sources",
    "derma_core.cli",
)

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``derma plugins`` shows it."""

    name: str
    package: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    builtin: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "package": self.package, "version": self.version,
                "hooks": self.hooks, "error": self.error, "builtin": self.builtin}


_loaded = False
_infos: dict[str, PluginInfo] = {}
#: (hook name, plugin name) -> one-line error of a registration hook body that raised
_hook_errors: dict[tuple[str, str], str] = {}
#: (hook name, registered name) -> the plugins that all registered it
_clashes: dict[tuple[str, str], list[str]] = {}


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, pluggy.PluginValidationError):  # pluggy's message spans lines: keep them all, on one
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return text.splitlines()[0]


def _register(module: Any, name: str) -> None:
    """Register one plugin, or raise ``PluginValidationError`` leaving the manager untouched:
    pluggy checks hook arguments itself; a hook name derma does not define (``register_clasifiers``)
    would only surface in ``check_pending`` for everyone, so it is checked here, per plugin."""
    pm.register(module, name=name)
    for caller in pm.get_hookcallers(module) or []:
        if caller.has_spec():
            continue
        impls = [i for i in caller.get_hookimpls() if i.plugin is module and not i.optionalhook]
        if impls:
            pm.unregister(module, name=name)
            specs = [n for n in dir(hookspecs) if n.startswith("register_")]
            close = difflib.get_close_matches(caller.name, specs, n=1)
            hint = f"did you mean {close[0]!r}? " if close else f"derma's hooks are {', '.join(specs)}; "
            raise pluggy.PluginValidationError(
                module, f"unknown hook {caller.name!r} ({hint}rename the function, or mark it "
                        "@hookimpl(optionalhook=True))")


def load_plugins() -> None:
    """Register the built-ins and every allowed entry-point plugin (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    if os.environ.get("DERMA_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    from . import __version__

    for module_name in DEFAULT_PLUGINS:
        info = PluginInfo(name=module_name, package="derma", version=__version__, builtin=True)
        try:
            module = importlib.import_module(module_name)
            _register(module, module_name)
        except Exception as exc:  # a broken built-in must not take down the CLI either
            info.error = _short_error(exc)
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        _infos[module_name] = info

    allow = _env_list("DERMA_LOAD_PLUGINS")
    deny = set(_env_list("DERMA_DISABLE_PLUGINS") or [])
    for ep in entry_points(group=GROUP):
        if (allow is not None and ep.name not in allow) or ep.name in deny:
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(name=ep.name, package=dist.name if dist else None,
                          version=dist.version if dist else None)
        try:
            module = ep.load()
            if pm.is_registered(module) or pm.get_plugin(ep.name) is not None:
                continue
            _register(module, ep.name)
        except Exception as exc:
            info.error = _short_error(exc)
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        _infos[ep.name] = info


def plugin_infos() -> list[PluginInfo]:
    """Every plugin with its hooks and load error, built-ins first."""
    load_plugins()
    for name, info in _infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    # plugins registered directly (tests, programmatic use)
    for name, plugin in pm.list_name_plugin():
        if name not in _infos and plugin is not None:
            _infos[name] = PluginInfo(name=name, hooks=sorted(h.name for h in pm.get_hookcallers(plugin) or []))
    return list(_infos.values())


def load_errors() -> dict[str, str]:
    """Plugin name -> one-line import error, for every plugin that failed to load."""
    load_plugins()
    return {name: info.error for name, info in _infos.items() if info.error}


def hook_errors() -> dict[str, list[str]]:
    """Plugin name -> one line per registration hook of it that raised (after every hook ran)."""
    for hook_name in _REGISTRIES:
        _collect(hook_name)
    out: dict[str, list[str]] = {}
    for (hook_name, plugin), message in _hook_errors.items():
        out.setdefault(plugin, []).append(f"{hook_name} failed: {message}")
    return out


def name_clashes() -> dict[str, tuple[str, list[str]]]:
    """Name -> (one-line message, the plugins) for every name several plugins registered (no
    plugin gets it)."""
    for hook_name in _REGISTRIES:
        _collect(hook_name)
    return {name: (_clash_message(hook_name, name), owners) for (hook_name, name), owners in _clashes.items()}


def _clash_message(hook_name: str, name: str) -> str:
    owners = _clashes[(hook_name, name)]
    both = " and ".join(repr(p) for p in owners)
    # DERMA_DISABLE_PLUGINS applies to entry-point plugins, not to derma's built-ins
    disable = [p for p in owners if p not in DEFAULT_PLUGINS] or owners
    return (f"{hook_name}: {name!r} is registered by both {both}, so neither is used; "
            f"uninstall one or set DERMA_DISABLE_PLUGINS={disable[-1]}")


@dataclass
class Registration:
    name: str
    obj: Callable[..., Any]
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)


class UnknownComponentError(LookupError):
    """Asked for a classifier, prompt, evaluator or dataset that no plugin registered."""


_REGISTRIES = ("register_classifiers", "register_prompt_builders", "register_evaluators", "register_datasets")


def _collect(hook_name: str) -> dict[str, Registration]:
    load_plugins()
    found: dict[str, Registration] = {}
    owners: dict[str, list[str]] = {}
    hook = getattr(pm.hook, hook_name)
    for table in (_clashes, _hook_errors):  # recomputed below, for the plugins registered now
        for key in [k for k in table if k[0] == hook_name]:
            del table[key]
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"
        mine: dict[str, Registration] = {}

        def register(name: str, obj: Callable[..., Any], _plugin: str = plugin_name, **options: Any) -> None:
            mine[name] = Registration(name, obj, _plugin, options)

        _trace(f"{hook_name} -> {plugin_name}")
        try:
            impl.function(register=register)
        except Exception as exc:  # one plugin's broken hook must not stop the others
            _hook_errors[(hook_name, plugin_name)] = _short_error(exc)
            continue  # nothing of a half-run hook is used
        for name, reg in mine.items():
            owners.setdefault(name, []).append(plugin_name)
            found[name] = reg
    for name, who in owners.items():
        if len(set(who)) > 1:
            _clashes[(hook_name, name)] = list(dict.fromkeys(who))
            del found[name]
    return found


def _trace(message: str) -> None:
    # Registration hooks are called implementation by implementation (to know which plugin
    # registered what), so pluggy's own tracing would not see them: trace here instead.
    if os.environ.get("DERMA_TRACE_PLUGINS"):
        print(f"derma trace: {message}", file=sys.stderr)


def classifiers() -> dict[str, Registration]:
    return _collect("register_classifiers")


def prompt_builders() -> dict[str, Registration]:
    return _collect("register_prompt_builders")


def evaluators() -> dict[str, Registration]:
    return _collect("register_evaluators")


def datasets() -> dict[str, Registration]:
    return _collect("register_datasets")


def _missing(kind: str, name: str, available: dict[str, Registration], hook_name: str) -> UnknownComponentError:
    if (hook_name, name) in _clashes:
        return UnknownComponentError(_clash_message(hook_name, name))
    errors = load_errors()
    if name in errors:
        return UnknownComponentError(f"{kind} {name!r} is installed but failed to load: {errors[name]}")
    errors = dict(errors)
    for (hook, plugin), message in _hook_errors.items():
        if hook == hook_name:
            errors[plugin] = f"{hook} failed: {message}"
    hint = f" (plugins that failed to load: {', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else ""
    return UnknownComponentError(
        f"unknown {kind} {name!r}; installed: {', '.join(sorted(available)) or 'none'}{hint}"
    )


def get_classifier(name: str) -> Registration:
    found = classifiers()
    if name not in found:
        raise _missing("plugin", name, found, "register_classifiers")
    return found[name]


def get_prompt_builder(name: str) -> Callable[[tuple[str, ...]], str]:
    found = prompt_builders()
    if name not in found:
        raise _missing("prompt", name, found, "register_prompt_builders")
    return found[name].obj


def get_dataset_source(name: str) -> Registration:
    found = datasets()
    if name not in found:
        raise _missing("dataset source", name, found, "register_datasets")
    return found[name]


def classifier_config_path(name: str, configs_dir: Path) -> Path | None:
    """The default YAML of a backend: ``configs/<name>.yaml``, else what its plugin registered."""
    path = configs_dir / f"{name}.yaml"
    if path.exists():
        return path
    reg = classifiers().get(name)
    if reg is not None and reg.options.get("config"):
        return Path(reg.options["config"])
    return None


def reset() -> None:
    """Forget every loaded plugin so the next call loads afresh (tests, long-lived processes)."""
    global _loaded
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is not None:
            pm.unregister(plugin, name=name)
        else:
            pm.unblock(name)
    _infos.clear()
    _hook_errors.clear()
    _clashes.clear()
    _loaded = False
