"""Packaging that setup.cfg cannot say: the top-level ``configs/`` folder travels in the wheel.

Every file under ``configs/`` (defaults, per-plugin configs, ``tune/`` search spaces, presets,
whatever is added later) is installed as the package data ``derma_core/configs``, where
``derma_core.config.configs_dir()`` finds it when there is no checkout. Everything else about
the package is in setup.cfg.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["derma_core", "derma_core.*"]) + ["derma_core.configs"],
    package_dir={"derma_core.configs": "configs"},
    package_data={"derma_core.configs": ["*", "**/*"]},
)
