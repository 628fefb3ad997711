"""Scores to probabilities: the one softmax every backend and evaluator uses."""

from __future__ import annotations

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` scores (logits, log-likelihoods, scaled log-probabilities),
    computed in float64 after subtracting each row's maximum, so large scores do not overflow."""
    z = np.asarray(scores, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
