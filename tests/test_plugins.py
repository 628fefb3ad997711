import json
import subprocess
import sys
import types

import pytest
from click.testing import CliRunner

import derma_core
from derma_core import hookimpl, plugins
from derma_core.cli import DermaGroup, cli
from derma_core.interfaces import Predictions


class FakeDist:
    name = "derma-fake"
    version = "9.9"


class FakeEntryPoint:
    def __init__(self, name, loader):
        self.name = name
        self.dist = FakeDist()
        self._loader = loader

    def load(self):
        return self._loader()


def _good_module():
    module = types.ModuleType("derma_good_plugin")

    class Echo:
        name = "echo"

        def __init__(self, config):
            self.config = config

        def fit(self, train, val, ctx):
            pass

        def predict(self, split, ctx):
            return Predictions(ids=split.ids, labels=split.labels, label_set=split.label_set)

    @hookimpl
    def register_classifiers(register):
        register("echo", Echo)

    @hookimpl
    def register_prompt_builders(register):
        register("echo_prompt", lambda labels: "Which: " + "/".join(labels))

    module.register_classifiers = register_classifiers
    module.register_prompt_builders = register_prompt_builders
    return module


def _broken():
    raise ImportError("No module named 'missing_heavy_dependency'")


@pytest.fixture
def fake_entry_points(monkeypatch):
    eps = [FakeEntryPoint("good", _good_module), FakeEntryPoint("broken", _broken)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == "derma" else [])
    monkeypatch.setattr(DermaGroup, "_plugins_loaded", False)
    plugins.reset()
    yield
    plugins.reset()


def test_broken_plugin_is_reported_and_others_load(fake_entry_points):
    assert "echo" in plugins.classifiers() and "prior" in plugins.classifiers()
    errors = plugins.load_errors()
    assert errors["broken"] == "ImportError: No module named 'missing_heavy_dependency'"
    assert "echo_prompt" in plugins.prompt_builders() and "p1" in plugins.prompt_builders()
    with pytest.raises(plugins.UnknownComponentError, match="'broken' is installed but failed to load: ImportError"):
        plugins.get_classifier("broken")


def test_plugins_command_lists_versions_hooks_and_errors(fake_entry_points):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "good [derma-fake 9.9]: register_classifiers, register_prompt_builders" in result.output
    assert "broken [derma-fake 9.9]: FAILED TO LOAD: ImportError" in result.output
    assert "echo (good)" in result.output and "prior (derma_core.prior)" in result.output
    payload = json.loads(CliRunner().invoke(cli, ["plugins", "--json", "--all"]).output)
    by_name = {p["name"]: p for p in payload}
    assert by_name["good"]["classifiers"] == ["echo"] and by_name["good"]["version"] == "9.9"
    assert by_name["broken"]["error"].startswith("ImportError")
    assert by_name["derma_core.prior"]["builtin"] is True


def test_unknown_plugin_names_installed_ones(fake_entry_points):
    with pytest.raises(plugins.UnknownComponentError) as err:
        plugins.get_classifier("resnet50")
    assert "unknown plugin 'resnet50'; installed: echo, prior" in str(err.value)
    assert "broken: ImportError" in str(err.value)
    result = CliRunner().invoke(cli, ["run", "--plugin", "resnet50"])
    assert result.exit_code == 2 and "unknown plugin 'resnet50'" in result.output


def test_load_and_disable_env(fake_entry_points, monkeypatch):
    monkeypatch.setenv("DERMA_DISABLE_PLUGINS", "broken")
    plugins.reset()
    assert "broken" not in plugins.load_errors() and "echo" in plugins.classifiers()
    monkeypatch.delenv("DERMA_DISABLE_PLUGINS")
    monkeypatch.setenv("DERMA_LOAD_PLUGINS", "")
    plugins.reset()
    assert "echo" not in plugins.classifiers() and "prior" in plugins.classifiers()
    monkeypatch.setenv("DERMA_LOAD_PLUGINS", "good")
    plugins.reset()
    assert "echo" in plugins.classifiers() and "broken" not in plugins.load_errors()


def test_name_collision_between_plugins_is_reported_not_a_crash(fake_entry_points):
    class Clash:
        @hookimpl
        def register_classifiers(self, register):
            register("prior", object)

    plugins.pm.register(Clash(), name="clash")
    found = plugins.classifiers()  # neither plugin gets the name; the rest still load
    assert "prior" not in found and "echo" in found
    with pytest.raises(plugins.UnknownComponentError, match="'prior' is registered by both") as err:
        plugins.get_classifier("prior")
    assert "'clash'" in str(err.value) and "'derma_core.prior'" in str(err.value)


def test_broken_builtin_does_not_break_cli(monkeypatch):
    monkeypatch.setattr(plugins, "DEFAULT_PLUGINS", plugins.DEFAULT_PLUGINS + ("derma_core.no_such_module",))
    monkeypatch.setattr(DermaGroup, "_plugins_loaded", False)
    plugins.reset()
    try:
        result = CliRunner().invoke(cli, ["plugins"])
        assert result.exit_code == 0
        assert "derma_core.no_such_module [derma" in result.output and "FAILED TO LOAD" in result.output
    finally:
        plugins.reset()


def test_trace_env_prints_hook_calls():
    code = "from derma_core import plugins; plugins.classifiers()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "DERMA_TRACE_PLUGINS": "1"}, timeout=120)
    assert "register_classifiers" in out.stderr


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from derma_core.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr


class HelloPlugin:
    @hookimpl
    def register_commands(self, cli):
        import click

        @cli.command("hello")
        @click.argument("who")
        def hello(who):
            """Say hello."""
            click.echo(f"hello {who}")


class BrokenCommandsPlugin:
    @hookimpl
    def register_commands(self, cli):
        raise RuntimeError("cannot build commands")


def test_plugin_commands_are_added_and_a_broken_one_is_reported(monkeypatch):
    import click

    plugins.reset()
    plugins.load_plugins()
    hello, broken = HelloPlugin(), BrokenCommandsPlugin()
    plugins.pm.register(hello, name="hello-plugin")
    plugins.pm.register(broken, name="broken-commands")
    group = click.Group(cls=DermaGroup) if False else DermaGroup(name="derma")
    monkeypatch.setattr(DermaGroup, "_plugins_loaded", False)
    try:
        result = CliRunner().invoke(group, ["hello", "world"])
        assert result.exit_code == 0, result.output
        assert "hello world" in result.output
        assert "plugin 'broken-commands' failed to add its commands: cannot build commands" in result.output
    finally:
        plugins.reset()
