"""`derma plugins new` writes a plugin that loads, runs through derma run, and passes its own test."""

import importlib
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from derma_core import plugins, runner
from derma_core.cli import cli
from derma_core.config import resolve_config


def test_scaffolded_plugin_runs_and_its_test_passes(tmp_path, mlflow_store, tiny_source, monkeypatch):
    result = CliRunner().invoke(cli, ["plugins", "new", "colour_centroid", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "derma-colour-centroid"
    assert {"setup.cfg", "pyproject.toml", "README.md"} <= {p.name for p in root.iterdir()}
    assert "colour_centroid = derma_colour_centroid" in (root / "setup.cfg").read_text()

    # its own generated test passes
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout  # HAM10000, a 3-class and a 2-class label set

    # and it works as a derma plugin, its config.yaml included
    monkeypatch.syspath_prepend(str(root))
    module = importlib.import_module("derma_colour_centroid")
    plugins.pm.register(module, name="colour_centroid")
    try:
        reg = plugins.get_classifier("colour_centroid")
        config = resolve_config("colour_centroid", overrides=["data.source=tiny", "quiet=true",
                                                             "colour_centroid.temperature=5.0"],
                                plugin_config=reg.options["config"])
        assert config["colour_centroid"]["temperature"] == 5.0
        result = runner.run(config)
        assert "test_accuracy" in result.metrics and "test_macro_f1" in result.metrics
    finally:
        plugins.pm.unregister(module)


@pytest.mark.parametrize("bad", ["Bad", "1x", "class", "a-b"])
def test_bad_names_are_refused(tmp_path, bad):
    result = CliRunner().invoke(cli, ["plugins", "new", bad, "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "plugin name" in result.output


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "derma-x").mkdir()
    result = CliRunner().invoke(cli, ["plugins", "new", "x", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "already exists" in result.output
