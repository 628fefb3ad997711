"""Fixtures of the derma-vlm tests, shared through derma_core.testing.fixtures: the session's model cache
(DERMA_MODEL_CACHE, where the tiny models are built once)."""

from __future__ import annotations

from derma_core.testing.fixtures import model_cache  # noqa: F401 (fixture)
