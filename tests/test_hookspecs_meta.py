"""Every hook spec is documented (docstring with :param:, docs/plugins.md with its exact
signature) and exercised by at least one test that implements it."""

import inspect
import re
from pathlib import Path

import pytest

from derma_core import hookspecs

ROOT = Path(__file__).resolve().parents[1]
SPECS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if getattr(fn, "derma_spec", None) is not None]


def test_there_are_five_hooks():
    assert sorted(SPECS) == ["register_classifiers", "register_commands", "register_datasets",
                             "register_evaluators", "register_prompt_builders"]


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_documented(name):
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    params = list(inspect.signature(fn).parameters)
    assert doc.splitlines()[0], f"{name} has no one-line docstring"
    for param in params:
        assert f":param {param}:" in doc, f"{name}: parameter {param} is not documented"
    signature = f"`{name}({', '.join(params)})`"
    assert signature in (ROOT / "docs" / "plugins.md").read_text(), f"docs/plugins.md lacks {signature}"


@pytest.mark.parametrize("name", SPECS)
def test_hook_is_tested(name):
    pattern = re.compile(rf"@hookimpl\s*\n\s*def {name}\(")
    tests = (list((ROOT / "tests").glob("test_*.py")) + [ROOT / "tests" / "conftest.py"]
             + list((ROOT / "plugins").glob("*/tests/test_*.py")))
    users = [p.name for p in tests if pattern.search(p.read_text())]
    assert users, f"no test implements the hook {name}"
