"""Evaluation: built-in metric evaluators and the ``derma compare`` command.

Registered through the same hooks as any plugin (``derma_core.evaluation`` is one of the core's
default plugins). The code lives in the submodules: :mod:`.metrics` (scikit-learn point
metrics), :mod:`.calibration` (reliability table, ECE), :mod:`.bootstrap` (lesion-level
intervals and paired differences), :mod:`.figures` (matplotlib) and :mod:`.compare`.
"""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_evaluators(register):
    from .evaluators import EVALUATORS

    for name, evaluator in EVALUATORS.items():
        register(name, evaluator)


@hookimpl
def register_commands(cli):
    from .compare import compare_command

    cli.add_command(compare_command)
