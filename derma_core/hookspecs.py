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
    """Register VQA prompts: ``register(name, builder)``; ``builder(labels) -> question text``.

    :param register: call once per prompt; the name is what ``prompt:`` in a config selects.
    """


@hookspec
def register_evaluators(register: Callable[..., None]) -> None:
    """Register evaluators: ``register(name, evaluator)``; ``evaluator(split, predictions, config) -> EvalResult``.

    :param register: call once per evaluator; every registered evaluator runs on every test split.
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register dataset sources: ``register(name, source)``; ``source(config) -> Dataset``.

    :param register: call once per source; the name is what ``data.source`` selects.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``derma`` command line.

    :param cli: the top-level ``derma`` click group; call ``cli.add_command`` or decorate with ``@cli.command()``.
    """
