"""House rules that keep the tree navigable (docs/ARCHITECTURE.md), checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Package code and the scripts beside it: the core, every plugin package, benchmarks, scripts.
CODE = [REPO / "derma_core", *sorted((REPO / "plugins").glob("*/derma_*")), REPO / "benchmarks", REPO / "scripts"]


def _modules():
    for root in CODE:
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_only_tracking_imports_mlflow():
    """MLflow is reached through derma_core.tracking alone (reads included), so a change of MLflow's
    API has one place to be absorbed."""
    allowed = REPO / "derma_core" / "tracking.py"
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for path, tree in _modules() if path != allowed
                 for line, name in _imported_modules(tree) if name == "mlflow" or name.startswith("mlflow.")]
    assert not offenders, "\n".join(offenders)


def test_the_rule_sees_an_mlflow_import(tmp_path):
    """The check above parses imports at any depth (a function-local ``import mlflow`` counts)."""
    tree = ast.parse("def f():\n    import mlflow.tracking\n    from mlflow import MlflowClient\n")
    assert [name for _, name in _imported_modules(tree)] == ["mlflow.tracking", "mlflow"]


def test_no_plugin_imports_another_plugins_internals():
    """A plugin package may use the core and the packages it declares (derma-llava-med builds on
    derma-vlm); never a sibling's private names."""
    packages = {p.name: p for p in (REPO / "plugins").glob("*/derma_*")}
    declared = {"derma_llava_med": {"derma_vlm"}}
    offenders = []
    for name, root in packages.items():
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for line, module in _imported_modules(tree):
                top = module.split(".")[0]
                if top in packages and top != name and top not in declared.get(name, set()):
                    offenders.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


#: The most lines a function of the package code may span without saying why.
LONGEST = 80


def test_no_long_function_without_a_reason():
    """A function over LONGEST lines (def to last line) is split by what it does, or carries a
    ``# long: <reason>`` comment on the line above its def (or its decorators)."""
    offenders = []
    for root in CODE[:-2]:  # the core and the plugin packages (benchmarks and scripts aside)
        for path in sorted(root.rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    span = node.end_lineno - node.lineno + 1
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    above = lines[first - 2].strip() if first >= 2 else ""
                    if span > LONGEST and not above.startswith("# long:"):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({span} lines)")
    assert not offenders, "\n".join(offenders)
