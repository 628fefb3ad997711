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
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
