"""derma: run, track and compare skin-lesion classifiers (CNNs and vision-language models)."""

from importlib.metadata import PackageNotFoundError, version as _version

import pluggy

try:
    __version__ = _version("derma")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: Decorator for plugin hook implementations: ``@derma_core.hookimpl``.
hookimpl = pluggy.HookimplMarker("derma")

__all__ = ["__version__", "hookimpl"]
