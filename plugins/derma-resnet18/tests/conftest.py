"""Fixtures of the resnet18 plugin's tests, shared through derma_core.testing.fixtures: two torch
threads per test, the tiny synthetic set (32 px keeps ResNet-18 cheap on 2 cores)."""

from __future__ import annotations

import os

from derma_core.testing.fixtures import few_threads, synthetic_cache  # noqa: F401 (fixtures; few_threads is autouse)

os.environ.setdefault("MPLBACKEND", "Agg")
