"""Evaluation: built-in metric evaluators, and what ``derma compare`` and ``derma report`` compute.

Registered through the same hooks as any plugin (``derma_core.evaluation`` is one of the core's
default plugins). The code lives in the submodules: :mod:`.metrics` (scikit-learn point
metrics), :mod:`.calibration` (reliability table, ECE, temperature / vector scaling),
:mod:`.bootstrap` (group-level intervals and paired differences), :mod:`.subgroups`,
:mod:`.conformal`, :mod:`.selective`, :mod:`.figures` (matplotlib); for comparing logged runs
:mod:`.records` (runs read back), :mod:`.paired` (paired tests), :mod:`.tables` (cells and
rendered tables) and :mod:`.compare` (the side-by-side table). The commands are in
:mod:`derma_core.cli`; the report is :mod:`derma_core.report`.
"""

from __future__ import annotations

from .. import hookimpl


@hookimpl
def register_evaluators(register):
    from .evaluators import EVALUATORS

    for name, builtin in EVALUATORS.items():
        register(name, builtin.evaluator, needs_reference=builtin.needs_reference)
