#!/usr/bin/env python3
"""Mutation testing of one module with that module's tests (mutmut), as docs/testing.md describes.

    python scripts/mutation.py derma_core/evaluation/selective.py
    python scripts/mutation.py                      # every module in [tool.derma.mutation.modules]
    python scripts/mutation.py derma_core/config.py --tests tests/test_config.py --threshold 90

Each module is run in a fresh temporary copy of the tree (the source paths, ``also_copy`` and
``tests/`` of ``[tool.mutmut]`` in pyproject.toml, plus setup.cfg for pytest's settings), so the
working tree gets no ``mutants/`` folder and nothing is cached between runs. The copy's
pyproject.toml is ``[tool.mutmut]`` with two keys added: ``only_mutate`` (the module) and
``pytest_add_cli_args_test_selection`` (its test files, from ``[tool.derma.mutation.modules]``
or ``--tests``). The score is (killed + timeout + crashed) / every mutant of the module, where a
mutant in a function that no selected test calls ("no tests") counts as surviving. Exit status:
0 when every module reaches the threshold, 1 when one does not, 2 when a run could not be made.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: mutmut's command line, run as `python -c` with this script's interpreter (not whatever `mutmut` is on PATH)
MUTMUT_CLI = "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()"

#: mutmut statuses (mutmut.stats.status_by_exit_code) that mean the tests noticed the mutant: a
#: failing test, a run past the time limit (an endless loop), or a crashed test process.
DETECTED = ("killed", "timeout", "segfault")
#: Statuses that mean a run did not finish; a score over them would be wrong.
UNFINISHED = ("not checked", "check was interrupted by user")


class MutationError(RuntimeError):
    """The run could not be made (bad arguments, a failing clean test run, a missing tool)."""


@dataclass
class Settings:
    mutmut: dict
    threshold: float
    modules: dict[str, list[str]]


def load_settings(pyproject: Path) -> Settings:
    """``[tool.mutmut]`` and ``[tool.derma.mutation]`` of ``pyproject``."""
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MutationError(f"{pyproject}: cannot read the mutation settings ({exc})") from None
    tool = data.get("tool", {})
    if "mutmut" not in tool:
        raise MutationError(f"{pyproject}: no [tool.mutmut] section; see docs/testing.md")
    own = tool.get("derma", {}).get("mutation", {})
    modules = own.get("modules", {})
    if not isinstance(modules, dict) or not all(isinstance(v, list) for v in modules.values()):
        raise MutationError(f"{pyproject}: [tool.derma.mutation.modules] must map a module path to a list of "
                            "test files")
    return Settings(mutmut=dict(tool["mutmut"]), threshold=float(own.get("threshold", 85)), modules=modules)


def toml_section(name: str, values: dict) -> str:
    """A TOML table of strings, numbers, booleans and lists of them (JSON spells these as TOML does)."""
    lines = [f"[{name}]"]
    for key, value in values.items():
        if not isinstance(value, (str, int, float, bool, list)) or (
                isinstance(value, list) and not all(isinstance(v, (str, int, float, bool)) for v in value)):
            raise MutationError(f"[tool.mutmut] {key}: only strings, numbers, booleans and lists of them are "
                                f"supported by scripts/mutation.py, got {value!r}")
        lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def run_config(settings: Settings, module: str, tests: list[str]) -> dict:
    """The ``[tool.mutmut]`` of one run: the shared settings, this module, these tests."""
    return dict(settings.mutmut, only_mutate=[module], pytest_add_cli_args_test_selection=list(tests))


def copy_tree(root: Path, work: Path, config: dict) -> None:
    """What mutmut and pytest read: the source paths, ``also_copy``, tests/ and setup.cfg."""
    names = [*config.get("source_paths", []), *config.get("also_copy", []), "tests", "setup.cfg"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "mutants")
    for name in dict.fromkeys(names):
        src = root / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=ignore, dirs_exist_ok=True)
        elif src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
        else:
            raise MutationError(f"{src} does not exist (named in [tool.mutmut] of pyproject.toml)")


@dataclass
class Result:
    module: str
    tests: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    survivors: dict[str, str] = field(default_factory=dict)  # mutant name -> status
    diffs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def detected(self) -> int:
        return sum(self.counts.get(s, 0) for s in DETECTED)

    @property
    def score(self) -> float:
        return 100.0 * self.detected / self.total if self.total else 0.0


def summarise(module: str, tests: list[str], exit_code_by_key: dict[str, int | None]) -> Result:
    """Counts per mutmut status and the names of the mutants the tests did not notice."""
    from mutmut.stats import status_by_exit_code

    result = Result(module, tests)
    for key, code in sorted(exit_code_by_key.items()):
        status = status_by_exit_code[code]
        result.counts[status] = result.counts.get(status, 0) + 1
        if status not in DETECTED:
            result.survivors[key] = status
    unfinished = sum(result.counts.get(s, 0) for s in UNFINISHED)
    if unfinished:
        raise MutationError(f"{module}: {unfinished} of {result.total} mutants were not run to the end")
    return result


#: Prints the names of every mutant of the module argv[1], in mutmut's order (run in the copy, so
#: that mutmut reads the copy's settings).
LIST_MUTANTS = """import sys
from pathlib import Path
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name
path = Path(sys.argv[1])
for name in mutate_file_contents(str(path), path.read_text()).mutant_names:
    print(get_mutant_name(path, name))
"""


def evenly_spaced(names: list[str], n: int) -> list[str]:
    """``n`` of ``names`` spread evenly over the list (all of them when there are no more than n)."""
    if n >= len(names):
        return list(names)
    return [names[i * len(names) // n] for i in range(n)]


def _mutmut(work: Path, args: list[str], log) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MUTMUT_CLI, *args], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                          text=True)


def mutate(root: Path, settings: Settings, module: str, tests: list[str], jobs: int, keep: bool,
           verbose: bool, diffs: bool = True, sample: int | None = None) -> Result:
    """Run mutmut on ``module`` with ``tests`` in a temporary copy of ``root`` (``diffs``: read each
    survivor's change with ``mutmut show``; ``sample``: test only that many mutants, evenly spread)."""
    if importlib.util.find_spec("mutmut") is None:
        raise MutationError("mutmut is not installed; install the development extra: pip install -e '.[mutation]'")
    if not module.endswith(".py") or not (root / module).is_file():
        raise MutationError(f"{module}: not a Python file under {root}; give a path such as "
                            "derma_core/evaluation/selective.py")
    if not tests:
        raise MutationError(f"{module}: no tests to run; list them under [tool.derma.mutation.modules] in "
                            "pyproject.toml or pass --tests")
    for test in tests:  # files and node ids; pytest options such as `-k EXPR` pass as they are
        path = test.split("::")[0]
        if (path.endswith(".py") or "::" in test) and not (root / path).exists():
            raise MutationError(f"{module}: test file {path} does not exist under {root}")
    config = run_config(settings, module, tests)
    work = Path(tempfile.mkdtemp(prefix="derma-mutation-"))
    start = time.monotonic()
    try:
        copy_tree(root, work, config)
        (work / "pyproject.toml").write_text(toml_section("tool.mutmut", config), encoding="utf-8")
        log_path = work / "mutmut.log"
        chosen: list[str] = []
        if sample is not None:
            listed = subprocess.run([sys.executable, "-c", LIST_MUTANTS, module], cwd=work, capture_output=True,
                                    text=True)
            if listed.returncode != 0:
                raise MutationError(f"{module}: could not list its mutants: {listed.stderr.strip().splitlines()[-1:]}")
            chosen = evenly_spaced(listed.stdout.split(), sample)
        with open(log_path, "w") as log:
            proc = _mutmut(work, ["run", "--max-children", str(jobs), *chosen], None if verbose else log)
        meta = work / "mutants" / f"{module}.meta"
        if proc.returncode != 0 or not meta.is_file():
            tail = "" if verbose else "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise MutationError(f"{module}: mutmut run exited with {proc.returncode} (a failing clean test run or "
                                f"a broken import is the usual cause); its last lines:\n{tail}")
        verdicts = json.loads(meta.read_text())["exit_code_by_key"]
        if chosen:
            verdicts = {name: verdicts[name] for name in chosen}
        result = summarise(module, tests, verdicts)
        for name in result.survivors if diffs else ():
            shown = subprocess.run([sys.executable, "-c", MUTMUT_CLI, "show", name], cwd=work, capture_output=True,
                                   text=True)
            lines = [line for line in shown.stdout.splitlines()
                     if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
            if shown.returncode != 0 or not lines:
                lines = [f"(mutmut show failed: {(shown.stderr.strip().splitlines() or ['no output'])[-1]})"]
            result.diffs[name] = "\n".join(lines)
        result.seconds = time.monotonic() - start
        return result
    finally:
        if keep:
            print(f"kept {work} (cd there and run `mutmut browse` or `mutmut show NAME`)")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(result: Result, threshold: float, show_diffs: bool) -> str:
    others = ", ".join(f"{status} {n}" for status, n in sorted(result.counts.items()) if status != "killed")
    lines = [f"{result.module} with {' '.join(result.tests)}: "
             f"{result.detected}/{result.total} mutants killed = {result.score:.1f}% "
             f"(threshold {threshold:g}%; killed {result.counts.get('killed', 0)}{', ' + others if others else ''}; "
             f"{result.seconds:.0f} s)"]
    if show_diffs and result.survivors:
        lines.append("  not noticed by any test:")
        for name, status in result.survivors.items():
            lines.append(f"  {name} ({status})")
            lines.extend(f"      {line}" for line in result.diffs.get(name, "").splitlines())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help="module paths such as derma_core/evaluation/selective.py (default: every module in "
                             "[tool.derma.mutation.modules] of pyproject.toml)")
    parser.add_argument("--tests", nargs="+", metavar="TEST",
                        help="test files (or pytest node ids) to run instead of the configured ones")
    parser.add_argument("--threshold", type=float, help="least killed share in %% (default: the configured one, 85)")
    parser.add_argument("--jobs", type=int, default=None, help="mutants tested at once (default: the CPU count)")
    parser.add_argument("--root", type=Path, default=REPO,
                        help="the tree whose source and tests are copied (default: this checkout); the settings "
                             "always come from this checkout's pyproject.toml")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="test only N mutants spread evenly over the module (a quick estimate; the threshold "
                             "applies to a full run)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy, to browse it with mutmut")
    parser.add_argument("--quiet", action="store_true", help="only the score line per module, no surviving diffs")
    parser.add_argument("--verbose", action="store_true", help="show mutmut's own progress output")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still removes its copy
    try:
        settings = load_settings(REPO / "pyproject.toml")
        threshold = settings.threshold if args.threshold is None else args.threshold
        if not 0 <= threshold <= 100:
            raise MutationError(f"--threshold must be between 0 and 100, got {threshold:g}")
        if args.sample is not None and args.sample < 1:
            raise MutationError(f"--sample must be at least 1, got {args.sample}")
        modules = args.modules or list(settings.modules)
        if not modules:
            raise MutationError("no module given and none configured in [tool.derma.mutation.modules]")
        jobs = args.jobs or max(1, len(os.sched_getaffinity(0)))
        results = []
        for module in modules:
            tests = args.tests or settings.modules.get(module, [])
            result = mutate(args.root.resolve(), settings, module, tests, jobs, args.keep, args.verbose,
                            diffs=not args.quiet, sample=args.sample)
            print(report(result, threshold, not args.quiet), flush=True)
            results.append(result)
    except MutationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print("\n| module | mutants killed | % |\n|---|---|---|")
        for r in results:
            print(f"| `{r.module}` | {r.detected} / {r.total} | {r.score:.1f} |")
    below = [r.module for r in results if r.score < threshold]
    if below:
        print(f"below the {threshold:g}% threshold: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
