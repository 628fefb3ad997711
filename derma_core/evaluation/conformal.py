"""Split-conformal prediction sets (LAC and APS), calibrated on the validation split.

A small exact implementation (rather than MAPIE or crepes, whose estimators wrap a model to
refit; here the backend's probabilities already exist and only the calibration step is needed):

* **LAC** (least ambiguous set-valued classifier; Sadinle et al., 2019): score ``1 - p_y``; the
  set holds every class with ``1 - p_c <= q``.
* **APS** (adaptive prediction sets; Romano et al., 2020), randomised: score = the probability
  mass of the classes ranked above ``y`` plus ``u * p_y`` with ``u ~ U(0, 1)``; the set is the
  prefix of the ranking whose scores are ``<= q``. Randomisation makes coverage exact rather than
  conservative (a set may then be empty). ``u`` is drawn from the run's seed.

``q`` is the finite-sample quantile: the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n``
calibration scores (infinite when that exceeds ``n``), which gives marginal coverage of at least
``1 - alpha`` on exchangeable data and at most ``1 - alpha + 1 / (n + 1)`` for continuous scores.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("lac", "aps")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score (``inf`` when that rank exceeds n)."""
    if not 0 < alpha < 1:
        raise ValueError(f"evaluation.conformal.alpha must be between 0 and 1 (e.g. 0.1), got {alpha}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        raise ValueError("conformal calibration needs at least one calibration (val) image")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)
    return float("inf") if k > n else float(scores[k - 1])


def _uniform(n: int, seed: int, stream: int) -> np.ndarray:
    return np.random.default_rng([int(seed), stream]).random(n)


def scores(method: str, probabilities: np.ndarray, y: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """Nonconformity score of the true class ``y`` of every image."""
    p = np.asarray(probabilities, dtype=np.float64)
    rows = np.arange(len(p))
    y = np.asarray(y, dtype=np.int64)
    if method == "lac":
        return 1.0 - p[rows, y]
    if method == "aps":
        p_y = p[rows, y]
        # mass of the classes ranked strictly above y (ties broken by class index, as in sets())
        order = np.argsort(-p, axis=1, kind="stable")
        rank = np.argsort(order, axis=1)
        above = (rank < rank[rows, y][:, None]) * p
        return above.sum(axis=1) + (u if u is not None else 1.0) * p_y
    raise ValueError(f"unknown conformal method {method!r}; use one of {', '.join(METHODS)}")


def prediction_sets(method: str, probabilities: np.ndarray, qhat: float, u: np.ndarray | None = None) -> np.ndarray:
    """(n, 7) booleans: which classes are in each image's prediction set."""
    p = np.asarray(probabilities, dtype=np.float64)
    if method == "lac":
        return (1.0 - p) <= qhat
    if method == "aps":
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p
        uu = (u if u is not None else np.ones(len(p)))[:, None]
        keep_sorted = before + uu * sorted_p <= qhat
        out = np.zeros_like(keep_sorted)
        np.put_along_axis(out, order, keep_sorted, axis=1)
        return out
    raise ValueError(f"unknown conformal method {method!r}; use one of {', '.join(METHODS)}")


def calibrate_and_predict(method: str, cal_probs: np.ndarray, cal_y: np.ndarray, test_probs: np.ndarray,
                          alpha: float, seed: int = 0) -> tuple[float, np.ndarray]:
    """Fit ``q`` on the calibration split and return ``(q, test prediction sets)``."""
    u_cal = _uniform(len(cal_probs), seed, 1) if method == "aps" else None
    u_test = _uniform(len(test_probs), seed, 2) if method == "aps" else None
    qhat = conformal_quantile(scores(method, cal_probs, cal_y, u_cal), alpha)
    return qhat, prediction_sets(method, test_probs, qhat, u_test)
