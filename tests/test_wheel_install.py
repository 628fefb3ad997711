"""An installed package works: wheels of the core and of every package under plugins/,
installed with ``--no-deps`` into a fresh venv outside the checkout, find every default config
and search space and run the CLI from a folder that is not the checkout.

The fresh venv reuses the big dependencies (torch, transformers, mlflow ...) of the running
environment through a ``.pth`` file naming a folder of symlinks to its site-packages entries,
minus derma's own (``derma*``), the editable-install hooks (``__editable__*``) and every
``.pth`` file, so nothing of the checkout is importable there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_FILES = ("derma_core", "configs", "setup.cfg", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in",
              "LICENSE")
IGNORE = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", "*.pyc", ".pytest_cache")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _plugin_sources() -> list[Path]:
    return sorted(p for p in (REPO / "plugins").glob("*")
                  if (p / "setup.cfg").is_file() or (p / "pyproject.toml").is_file())


def _copy_sources(dst: Path) -> list[Path]:
    """Copies of the core and every plugin package (builds write into their source folder:
    the checkout stays untouched and colleagues' concurrent builds do not collide)."""
    core = dst / "derma"
    core.mkdir(parents=True)
    for name in CORE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, core / name, ignore=IGNORE)
        elif src.is_file():
            shutil.copy2(src, core / name)
    out = [core]
    for plugin in _plugin_sources():
        shutil.copytree(plugin, dst / plugin.name, ignore=IGNORE)
        out.append(dst / plugin.name)
    return out


def _shared_site_packages(dst: Path) -> Path:
    """A folder of symlinks to this environment's site-packages entries, derma's own excluded."""
    site = Path(sysconfig.get_paths()["purelib"])
    dst.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("derma", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
            continue
        (dst / name).symlink_to(entry)
    return dst


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel-install")
    sources = _copy_sources(root / "src")
    wheels = root / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--disable-pip-version-check", "-w", str(wheels), *map(str, sources)],
                           capture_output=True, text=True, cwd=root, timeout=400)
    assert build.returncode == 0, build.stdout + build.stderr
    built = sorted(wheels.glob("*.whl"))
    assert len(built) == len(sources), [w.name for w in built]

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    shared = _shared_site_packages(root / "shared-site-packages")
    (fresh_site / "zz_shared_site_packages.pth").write_text(f"{shared}\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "-q", "--disable-pip-version-check", *map(str, built)],
                             capture_output=True, text=True, cwd=root, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in {"VIRTUAL_ENV", "PYTHONPATH", "DERMA_CONFIG_DIR", "DERMA_MLRUNS", "MLFLOW_TRACKING_URI",
                        "PYTHONHOME"}}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", DERMA_CACHE_DIR=str(root / "cache"),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=work, env=env, timeout=timeout)

    return {"python": str(python), "derma": str(venv / "bin" / "derma"), "run": run, "work": work,
            "wheels": built, "n_plugins": len(sources) - 1, "core_source": sources[0]}


def test_installed_package_is_not_the_checkout_and_carries_every_config(wheel_env):
    run = wheel_env["run"]
    probe = run(wheel_env["python"], "-c", "import json, derma_core, derma_core.config as c; "
                "print(json.dumps([derma_core.__file__, str(c.configs_dir())]))")
    assert probe.returncode == 0, probe.stderr
    module, configs = map(Path, json.loads(probe.stdout))
    assert REPO not in module.parents and REPO not in configs.parents, (module, configs)
    # every file of the top-level configs/ (defaults, plugins, tune/ spaces, presets) is installed;
    # compared with the copy the wheel was built from (the checkout may change meanwhile)
    source = wheel_env["core_source"] / "configs"
    expected = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert expected and Path("default.yaml") in expected and any(p.parts[0] == "tune" for p in expected)
    for rel in expected:
        assert (configs / rel).is_file(), f"{rel} is missing from the installed package ({configs})"
        assert (configs / rel).read_bytes() == (source / rel).read_bytes(), rel


def test_cli_works_from_the_wheel_install(wheel_env):
    run, derma = wheel_env["run"], wheel_env["derma"]
    # in one interpreter of the fresh venv (one process per command costs ~5-10 s of imports):
    # the plugins and their load errors, `derma run --plugin NAME --print-config` for every
    # backend through derma's click CLI, and every default search space loaded and validated
    script = """
import json, sys
from click.testing import CliRunner
from derma_core import plugins
from derma_core.cli import cli
from derma_core.config import configs_dir
from derma_core.tuning.space import load_space, plugin_schema, validate_space
from derma_core.config import resolve_config
listed = CliRunner().invoke(cli, ["plugins", "--json"])
infos = json.loads(listed.output)
names = sorted({c for i in infos for c in i.get("classifiers", [])} | {"prior"})
shown = {}
for name in names:
    r = CliRunner().invoke(cli, ["run", "--plugin", name, "--print-config"])
    shown[name] = [r.exit_code, r.output]
spaces = {}
for path in sorted((configs_dir() / "tune").glob("*.yaml")):
    space = load_space(path)
    defaults, schema = plugin_schema(path.stem)
    validate_space(space, schema, defaults, resolve_config(path.stem))
    spaces[path.stem] = len(space.params)
print(json.dumps({"infos": infos, "shown": shown, "spaces": spaces}))
"""
    probe = run(wheel_env["python"], "-c", script, timeout=240)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    errors = {i["name"]: i["error"] or i["hook_errors"] for i in found["infos"] if i.get("error") or i.get("hook_errors")}
    assert not errors, errors
    packages = {i["package"] for i in found["infos"] if not i.get("builtin")}
    assert len(packages) >= wheel_env["n_plugins"], packages  # every bundled plugin package loads
    assert {"prior", "resnet18", "llava_zeroshot", "llava_lora"} <= set(found["shown"]), sorted(found["shown"])
    for name, (code, text) in found["shown"].items():
        assert code == 0, f"derma run --plugin {name} --print-config: {text[-2000:]}"
        assert "seed:" in text and "evaluation:" in text, (name, text[:500])
    source_spaces = {p.stem for p in (wheel_env["core_source"] / "configs" / "tune").glob("*.yaml")}
    assert source_spaces and set(found["spaces"]) == source_spaces and all(found["spaces"].values()), found["spaces"]

    # the console script itself
    helped = run(derma, "tune", "--help")
    assert helped.returncode == 0 and "--space" in helped.stdout, helped.stderr
    ran = run(derma, "run", "--plugin", "prior", "-q", "-o", "data.synthetic_n=200", "-o", "evaluation.bootstrap=0",
              "-o", "evaluation.evaluators=[classification]", timeout=300)
    assert ran.returncode == 0, ran.stdout[-1500:] + ran.stderr[-1500:]
    assert "MLflow run id" in ran.stdout
    assert (wheel_env["work"] / "mlruns" / "mlflow.db").is_file()
