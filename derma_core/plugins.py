"""The plugin manager: built-in plugins, entry-point plugins loaded one at a time, registries.

Plugins are found in the ``derma`` entry-point group. Each is imported on its own: one that
fails to import is recorded in :func:`load_errors` (shown by ``derma plugins`` and by any
command that asks for it) and never stops the others. ``DERMA_LOAD_PLUGINS`` (comma-separated
entry-point names; empty loads none) and ``DERMA_DISABLE_PLUGINS`` choose what loads.
``DERMA_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

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
    "derma_core.commands",
    "derma_core.data.commands",
    "derma_core.answers",
    "derma_core.tuning",
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


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


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
            pm.register(module, name=module_name)
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
            pm.register(module, name=ep.name)
        except Exception as exc:
            info.error = _short_error(exc)
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
        _infos[ep.name] = info
    pm.check_pending()


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


@dataclass
class Registration:
    name: str
    obj: Callable[..., Any]
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)


class UnknownComponentError(LookupError):
    """Asked for a classifier, prompt, evaluator or dataset that no plugin registered."""


def _collect(hook_name: str) -> dict[str, Registration]:
    load_plugins()
    found: dict[str, Registration] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"

        def register(name: str, obj: Callable[..., Any], _plugin: str = plugin_name, **options: Any) -> None:
            if name in found and found[name].plugin != _plugin:
                raise ValueError(
                    f"{hook_name}: {name!r} is registered by both {found[name].plugin!r} and {_plugin!r}; "
                    "disable one with DERMA_DISABLE_PLUGINS"
                )
            found[name] = Registration(name, obj, _plugin, options)

        _trace(f"{hook_name} -> {plugin_name}")
        impl.function(register=register)
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


def _missing(kind: str, name: str, available: dict[str, Registration]) -> UnknownComponentError:
    errors = load_errors()
    if name in errors:
        return UnknownComponentError(f"{kind} {name!r} is installed but failed to load: {errors[name]}")
    hint = f" (plugins that failed to load: {', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else ""
    return UnknownComponentError(
        f"unknown {kind} {name!r}; installed: {', '.join(sorted(available)) or 'none'}{hint}"
    )


def get_classifier(name: str) -> Registration:
    found = classifiers()
    if name not in found:
        raise _missing("plugin", name, found)
    return found[name]


def get_prompt_builder(name: str) -> Callable[[tuple[str, ...]], str]:
    found = prompt_builders()
    if name not in found:
        raise _missing("prompt", name, found)
    return found[name].obj


def get_dataset_source(name: str) -> Registration:
    found = datasets()
    if name not in found:
        raise _missing("dataset source", name, found)
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
    _loaded = False
