"""The hooks a derma plugin can implement (pluggy project name ``derma``).

Each registration hook receives a ``register`` callback, so new keyword arguments can be
added later without breaking existing plugins. Implement them with ``@derma_core.hookimpl``.
"""

from __future__ import annotations

from typing import Callable

import click
import pluggy

hookspec = pluggy.HookspecMarker("derma")


@hookspec
def register_classifiers(register: Callable[..., None]) -> None:
    """Register backends: ``register(name, factory, config=None)``; ``factory(config) -> Classifier``.

    :param register: call once per backend; ``config`` is an optional path to the backend's
        default YAML (used when ``configs/<name>.yaml`` does not exist).
    """


@hookspec
def register_prompt_builders(register: Callable[..., None]) -> None:
    """Register VQA prompts: ``register(name, builder)``; ``builder(label_set) -> question text``.

    :param register: call once per prompt; the name is what ``prompt:`` in a config selects.
    """


@hookspec
def register_evaluators(register: Callable[..., None]) -> None:
    """Register evaluators: ``register(name, evaluator, needs_reference=False)``; ``evaluator(inputs) -> EvalResult``.

    :param register: call once per evaluator; every registered evaluator runs on every test split and
        receives one :class:`~derma_core.interfaces.EvalInput` (split, aligned predictions, config, the
        dataset's facts, and with ``needs_reference=True`` the calibration split's predictions).
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register datasets: ``register(name, descriptor)``; a :class:`~derma_core.data.descriptor.DatasetDescriptor` or any ``source(config) -> Dataset``.

    :param register: call once per dataset; the name is what ``--dataset`` / ``data.source`` and ``derma prep --dataset`` select.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``derma`` command line.

    :param cli: the top-level ``derma`` click group; call ``cli.add_command`` or decorate with ``@cli.command()``.
    """
