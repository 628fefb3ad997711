"""The ``derma`` command line: the group, the console script, and the one place where the core's
commands are registered.

Every command, the core's and a plugin's, arrives through the ``register_commands`` hook; the
core's all arrive through :func:`register_commands` below (``derma_core.cli`` is one of the core's
default plugins). Each is a module-level ``@click.command`` in this package, one module per family
(``run.py``: run, plugins, ui; ``data.py``: prep, synth, download, datasets, vqa, overlap;
``predictions.py``, ``compare.py``, ``report.py``, ``answers.py``, ``tune.py``, ``study.py``,
``runs.py``); a command parses its options and calls the module that owns its concept. A new core
command is written the same way and added to that list."""

from __future__ import annotations

import sys

import click

from .. import __version__, hookimpl


def fail(message: str, code: int = 1) -> None:
    """End a command with its one-line error (each line of a longer message is prefixed ``error:`` unless it
    already says what it is) and the exit code: 1 for bad data or a failed run, 2 for bad usage."""
    for line in str(message).strip().splitlines():
        click.echo(line if line.startswith(("error", "warning", "...")) else f"error: {line}", err=True)
    sys.exit(code)


def fail_usage(message: str, code: int = 2) -> None:
    """:func:`fail` with exit code 2 unless told otherwise (commands whose errors are mostly bad usage)."""
    fail(message, code)


class DermaGroup(click.Group):
    """Loads plugin commands on first use, so ``derma --help`` lists them too."""

    _plugins_loaded = False

    def _ensure(self) -> None:
        if DermaGroup._plugins_loaded:
            return
        DermaGroup._plugins_loaded = True
        from .. import plugins

        plugins.load_plugins()
        for impl in plugins.pm.hook.register_commands.get_hookimpls():
            try:
                plugins._trace(f"register_commands -> {plugins.pm.get_name(impl.plugin)}")
                impl.function(cli=self)
            except Exception as exc:  # a broken plugin's commands must not take down the CLI
                name = plugins.pm.get_name(impl.plugin)
                click.echo(f"warning: plugin {name!r} failed to add its commands: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._ensure()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        self._ensure()
        return super().get_command(ctx, name)


@click.group(cls=DermaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="derma")
def cli() -> None:
    """derma: run, track and compare skin-lesion classifiers on HAM10000 and friends.

    Every run is recorded in MLflow (default store: sqlite:///mlruns/mlflow.db).
    """


def main() -> None:
    """The console script: click's own handling, except that Ctrl-C exits 130 and SIGTERM 143
    with one line saying what was kept (click would print "Aborted!" and exit 1)."""
    from ..lifetime import interrupt_exit_code, interrupt_reason, raise_on_sigterm

    raise_on_sigterm()
    try:
        code = cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        interrupt = exc if isinstance(exc, KeyboardInterrupt) else exc.__context__ or exc.__cause__
        interrupt = interrupt if isinstance(interrupt, KeyboardInterrupt) else KeyboardInterrupt()
        run_id = getattr(interrupt, "run_id", None)
        where = getattr(interrupt, "detail", None) or ""  # a command's own account (derma tune: its study)
        if run_id and not where:
            work_dir = getattr(interrupt, "work_dir", None)
            kept = f"; checkpoint and partial results kept in {work_dir}" if work_dir else ""
            where = (f": MLflow run {run_id} ended as KILLED{kept}; continue it with "
                     f"`derma run --resume {run_id}`")
        click.echo(f"{interrupt_reason(interrupt)}{where}", err=True)
        sys.exit(interrupt_exit_code(interrupt))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


@hookimpl
def register_commands(cli):
    """The core's commands, all of them (``derma --help`` lists them alphabetically)."""
    from .answers import eval_answers_command, sweep_prompts_command
    from .compare import compare_command
    from .data import (datasets_command, download_command, overlap_command, prep_command, synth_command,
                       vqa_command)
    from .predictions import eval_predictions_command
    from .report import report_command
    from .run import plugins_command, run_command, ui_command
    from .runs import runs_command
    from .study import study_command
    from .tune import tune_command

    for command in (run_command, plugins_command, ui_command, prep_command, synth_command, download_command,
                    datasets_command, vqa_command, overlap_command, eval_predictions_command, compare_command,
                    report_command, eval_answers_command, sweep_prompts_command, tune_command, study_command,
                    runs_command):
        cli.add_command(command)
