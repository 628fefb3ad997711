"""scripts/mutation.py, the mutation-testing command of docs/testing.md, without running mutmut
(that takes minutes a module): its settings in pyproject.toml name modules and tests that exist,
the per-run mutmut config it writes reads back as written, verdicts are counted as documented,
and bad arguments are refused with one line and exit status 2."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("derma_mutation_script", REPO / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_configured_modules_and_their_tests_exist():
    settings = _script().load_settings(REPO / "pyproject.toml")
    assert settings.threshold == 85
    assert settings.modules, "no module configured in [tool.derma.mutation.modules]"
    for module, tests in settings.modules.items():
        assert (REPO / module).is_file(), module
        assert tests and all((REPO / t.split("::")[0]).is_file() for t in tests if t.endswith(".py")), (module, tests)
    for name in settings.mutmut["source_paths"] + settings.mutmut["also_copy"]:
        assert (REPO / name).exists(), name


def test_the_run_config_reads_back_as_written():
    script = _script()
    settings = script.load_settings(REPO / "pyproject.toml")
    config = script.run_config(settings, "derma_core/config.py", ["tests/test_config.py", "-k", "not slow"])
    text = script.toml_section("tool.mutmut", config)
    back = tomllib.loads(text)["tool"]["mutmut"]
    assert back == config
    assert back["only_mutate"] == ["derma_core/config.py"]
    assert back["pytest_add_cli_args_test_selection"] == ["tests/test_config.py", "-k", "not slow"]
    assert settings.mutmut.get("only_mutate") is None  # the shared settings are not changed
    with pytest.raises(script.MutationError, match="only strings, numbers, booleans and lists"):
        script.toml_section("tool.mutmut", {"nested": {"a": 1}})


def test_verdicts_are_counted_as_documented():
    pytest.importorskip("mutmut")
    script = _script()
    # mutmut's exit codes: 1 killed, 0 survived, 33 no tests, 36 timeout, -11 segfault, 35 suspicious
    codes = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0, "m.x_f__mutmut_3": 33, "m.x_f__mutmut_4": 36,
             "m.x_f__mutmut_5": -11, "m.x_f__mutmut_6": 35, "m.x_f__mutmut_7": 1}
    result = script.summarise("m.py", ["t.py"], codes)
    assert result.total == 7 and result.detected == 4  # killed x2, timeout, segfault
    assert result.score == pytest.approx(400 / 7)
    assert result.survivors == {"m.x_f__mutmut_2": "survived", "m.x_f__mutmut_3": "no tests",
                                "m.x_f__mutmut_6": "suspicious"}
    with pytest.raises(script.MutationError, match="1 of 2 mutants were not run to the end"):
        script.summarise("m.py", ["t.py"], {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": None})


@pytest.mark.parametrize("args, message", [
    (["derma_core/nope.py", "--tests", "tests/test_config.py"], "derma_core/nope.py: not a Python file under"),
    (["derma_core/config.py", "--tests", "tests/test_nope.py"], "test file tests/test_nope.py does not exist"),
    (["derma_core/config.py", "--threshold", "120"], "--threshold must be between 0 and 100, got 120"),
])
def test_bad_arguments_are_refused_in_one_line(args, message, capsys):
    pytest.importorskip("mutmut")
    assert _script().main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
