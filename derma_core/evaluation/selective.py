"""Selective prediction: which cases to hand to a dermatologist.

Images are ranked by the confidence of the label the backend gave (its probability; an invalid
answer has none and is referred first). Keeping the ``k`` most confident images gives coverage
``k / n`` and selective risk = error rate among them; the risk-coverage curve runs over
``k = 1..n`` and AURC is its mean (Geifman & El-Yaniv, 2017). E-AURC subtracts the AURC of an
oracle that ranks every error last, so 0 is a perfect ranking of the same errors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..labels import INVALID

#: Points of the logged risk-coverage table (the metrics use every image).
CURVE_POINTS = 101


def confidence_of_answer(y_pred: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The probability of the given label; ``-inf`` for an invalid answer."""
    y_pred = np.asarray(y_pred, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    conf = np.full(len(y_pred), -np.inf)
    valid = y_pred != INVALID
    conf[valid] = p[np.flatnonzero(valid), y_pred[valid]]
    return conf


def risk_coverage(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``k / n`` and selective risk for ``k = 1..n`` (most confident first; ties in
    confidence are kept in row order, so the curve is deterministic)."""
    errors = (np.asarray(y_pred) != np.asarray(y_true)).astype(np.float64)
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    k = np.arange(1, len(errors) + 1)
    return k / len(errors), np.cumsum(errors[order]) / k


def selective_metrics(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray,
                      refer: float = 0.1) -> tuple[dict[str, float], pd.DataFrame]:
    """AURC, E-AURC and the accuracy / coverage when the ``refer`` least confident share is referred."""
    if not 0 <= refer < 1:
        raise ValueError(f"evaluation.selective.refer must be in [0, 1), e.g. 0.1, got {refer}")
    coverage, risk = risk_coverage(y_true, y_pred, confidence)
    n = len(risk)
    n_err = int(round(risk[-1] * n))
    k = np.arange(1, n + 1)
    oracle = np.maximum(0, k - (n - n_err)) / k
    keep = max(1, int(np.ceil((1 - refer) * n - 1e-9)))
    pct = round(refer * 100)
    metrics = {
        "selective_aurc": float(risk.mean()),
        "selective_eaurc": float(risk.mean() - oracle.mean()),
        f"selective_accuracy_refer{pct}": float(1 - risk[keep - 1]),
        f"selective_coverage_refer{pct}": float(coverage[keep - 1]),
    }
    idx = np.unique(np.clip(np.round(np.linspace(1, n, min(CURVE_POINTS, n))).astype(int), 1, n)) - 1
    curve = pd.DataFrame({"coverage": coverage[idx], "risk": risk[idx], "accuracy": 1 - risk[idx]})
    return metrics, curve
