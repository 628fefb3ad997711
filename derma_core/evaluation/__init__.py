"""Evaluation: built-in metric evaluators and the ``derma compare`` command.

Registered through the same hooks as any plugin (``derma_core.evaluation`` is one of the core's
default plugins). The code lives in the submodules: :mod:`.metrics` (scikit-learn point
metrics), :mod:`.calibration` (reliability table, ECE, temperature / vector scaling),
:mod:`.bootstrap` (group-level intervals and paired differences), :mod:`.subgroups`,
:mod:`.conformal`, :mod:`.selective`, :mod:`.figures` (matplotlib) and :mod:`.compare`.
``derma report`` lives in :mod:`derma_core.report` and is registered here.
"""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_evaluators(register):
    from .evaluators import EVALUATORS

    for name, builtin in EVALUATORS.items():
        register(name, builtin.evaluator, needs_reference=builtin.needs_reference)
