"""The ``derma`` command line. Commands come from plugins through ``register_commands``,
the core's own included (``derma_core.commands``, ``derma_core.data.commands``, ...)."""

from __future__ import annotations

import sys

import click

from . import __version__


class DermaGroup(click.Group):
    """Loads plugin commands on first use, so ``derma --help`` lists them too."""

    _plugins_loaded = False

    def _ensure(self) -> None:
        if DermaGroup._plugins_loaded:
            return
        DermaGroup._plugins_loaded = True
        from . import plugins

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
    from .lifetime import interrupt_exit_code, interrupt_reason, raise_on_sigterm

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


if __name__ == "__main__":  # pragma: no cover
    main()
