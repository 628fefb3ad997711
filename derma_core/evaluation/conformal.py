"""Split-conformal prediction sets (LAC and APS, marginal and class-conditional), calibrated on
the calibration split: images of val that neither training nor model selection used
(:mod:`derma_core.data.calibration_split`).

A small exact implementation (rather than MAPIE or crepes, whose estimators wrap a model to
refit; here the backend's probabilities already exist and only the calibration step is needed):

* **LAC** (least ambiguous set-valued classifier; Sadinle et al., 2019): score ``1 - p_y``; the
  set holds every class with ``1 - p_c <= q``.
* **APS** (adaptive prediction sets; Romano et al., 2020), randomised: score = the probability
  mass of the classes ranked above ``y`` plus ``u * p_y`` with ``u ~ U(0, 1)``; the set is the
  prefix of the ranking whose scores are ``<= q``. Randomisation makes coverage exact rather than
  conservative (a set may then be empty). ``u`` is drawn from the run's seed.
* ``lac_classwise`` / ``aps_classwise``: the same scores with one threshold per class
  (Mondrian, or class-conditional, conformal prediction; Vovk et al., 2005; Sadinle et al.,
  2019, section 4.3): ``q_c`` is the quantile of the calibration scores of the images whose true
  class is ``c``, and class ``c`` is in an image's set when its score for ``c`` is ``<= q_c``.
  Coverage then holds for each class separately, not only on average over images.

``q`` is the finite-sample quantile: the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n``
calibration scores (infinite when that exceeds ``n``, i.e. when ``n < 1/alpha - 1``), which gives
coverage of at least ``1 - alpha`` on exchangeable data and at most ``1 - alpha + 1 / (n + 1)``
for continuous scores; for the classwise methods ``n`` is the class's calibration images. A
class with too few has an infinite threshold (it is in every set): the evaluator says so rather
than reporting a threshold.

Intervals on coverage (:func:`coverage_interval`) are Clopper-Pearson intervals with the
number of groups (lesions or patients) as the binomial n, and the spread a correct calibration
leaves (:func:`expected_coverage_range`) is the beta-binomial law of the test coverage.
"""

from __future__ import annotations

import math

import numpy as np

#: Every method: the two scores, each with one threshold (marginal) or one per class.
METHODS = ("lac", "aps", "lac_classwise", "aps_classwise")
#: The scores the methods are built on.
SCORES = ("lac", "aps")
CLASSWISE = "_classwise"


def score_of(method: str) -> tuple[str, bool]:
    """``(score, classwise)`` of a method name: ``"aps_classwise"`` -> ``("aps", True)``."""
    classwise = method.endswith(CLASSWISE)
    score = method[: -len(CLASSWISE)] if classwise else method
    if score not in SCORES:
        raise ValueError(f"unknown conformal method {method!r}; use one of {', '.join(METHODS)}")
    return score, classwise


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score (``inf`` when that rank exceeds n)."""
    if not 0 < alpha < 1:
        raise ValueError(f"evaluation.conformal.alpha must be between 0 and 1 (e.g. 0.1), got {alpha}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        raise ValueError("conformal calibration needs at least one calibration image")
    k = _rank(n, alpha)
    return float("inf") if k > n else float(scores[k - 1])


def _rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))``, a rank that is whole up to rounding not rounded up."""
    return math.ceil((n + 1) * (1 - alpha) - 1e-12)


def min_calibration_images(alpha: float) -> int:
    """The fewest calibration scores whose quantile at ``alpha`` is finite: the smallest n with
    ``ceil((n + 1)(1 - alpha)) <= n``, i.e. n >= 1/alpha - 1 (9 for alpha = 0.1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"evaluation.conformal.alpha must be between 0 and 1 (e.g. 0.1), got {alpha}")
    n = max(1, math.floor((1 - alpha) / alpha) - 1)
    while _rank(n, alpha) > n:
        n += 1
    return n


def too_small_message(n: int, alpha: float, what: str = "the calibration split") -> str | None:
    """One line when ``n`` calibration images are too few for sets at ``alpha`` (every set would
    hold every class), else None."""
    need = min_calibration_images(alpha)
    if n >= need:
        return None
    return (f"{what} has {n} images, fewer than the {need} that conformal sets at alpha = {alpha:g} need "
            "(n >= 1/alpha - 1), so every set holds every class: enlarge it (evaluation.calibration_split.share "
            "or a larger val split) or raise evaluation.conformal.alpha")


def class_quantiles(scores: np.ndarray, y: np.ndarray, n_classes: int, alpha: float) -> np.ndarray:
    """Per class ``c`` the conformal quantile of the scores of the images of class ``c`` (``inf``
    for a class with fewer than :func:`min_calibration_images` of them, none included)."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.int64)
    out = np.full(n_classes, np.inf)
    for c in range(n_classes):
        mine = scores[y == c]
        if len(mine):
            out[c] = conformal_quantile(mine, alpha)
    return out


def _uniform(n: int, seed: int, stream: int) -> np.ndarray:
    return np.random.default_rng([int(seed), stream]).random(n)


def scores(method: str, probabilities: np.ndarray, y: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """Nonconformity score of the true class ``y`` of every image (a classwise method scores as
    its base method does)."""
    score, _ = score_of(method)
    p = np.asarray(probabilities, dtype=np.float64)
    rows = np.arange(len(p))
    y = np.asarray(y, dtype=np.int64)
    if score == "lac":
        return 1.0 - p[rows, y]
    p_y = p[rows, y]
    # mass of the classes ranked strictly above y (ties broken by class index, as in sets())
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.argsort(order, axis=1)
    above = (rank < rank[rows, y][:, None]) * p
    return above.sum(axis=1) + (u if u is not None else 1.0) * p_y


def prediction_sets(method: str, probabilities: np.ndarray, qhat: float | np.ndarray,
                    u: np.ndarray | None = None) -> np.ndarray:
    """(n, K) booleans: which classes are in each image's prediction set. ``qhat`` is one
    threshold, or one per class (K,) for the classwise methods: class ``c`` is in the set when
    its score is ``<= qhat[c]`` (for APS the set is then not always a prefix of the ranking)."""
    score, _ = score_of(method)
    p = np.asarray(probabilities, dtype=np.float64)
    q = np.broadcast_to(np.asarray(qhat, dtype=np.float64), p.shape[1:])[None, :]
    if score == "lac":
        return (1.0 - p) <= q
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    before = np.cumsum(sorted_p, axis=1) - sorted_p
    uu = (u if u is not None else np.ones(len(p)))[:, None]
    q_sorted = np.take_along_axis(np.broadcast_to(q, p.shape), order, axis=1)
    keep_sorted = before + uu * sorted_p <= q_sorted
    out = np.zeros_like(keep_sorted)
    np.put_along_axis(out, order, keep_sorted, axis=1)
    return out


def calibrate_and_predict(method: str, cal_probs: np.ndarray, cal_y: np.ndarray, test_probs: np.ndarray,
                          alpha: float, seed: int = 0) -> tuple[float | np.ndarray, np.ndarray]:
    """Fit the threshold on the calibration split and return ``(q, test prediction sets)``:
    ``q`` is a float for the marginal methods, a (K,) array (``inf`` where a class has too few
    calibration images) for the classwise ones."""
    score, classwise = score_of(method)
    u_cal = _uniform(len(cal_probs), seed, 1) if score == "aps" else None
    u_test = _uniform(len(test_probs), seed, 2) if score == "aps" else None
    cal_scores = scores(score, cal_probs, cal_y, u_cal)
    if classwise:
        if len(cal_scores) == 0:
            raise ValueError("conformal calibration needs at least one calibration image")
        qhat: float | np.ndarray = class_quantiles(cal_scores, cal_y, np.shape(cal_probs)[1], alpha)
    else:
        qhat = conformal_quantile(cal_scores, alpha)
    return qhat, prediction_sets(score, test_probs, qhat, u_test)


def coverage_interval(covered: np.ndarray, groups: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A Clopper-Pearson interval for the coverage of these images, with the number of groups
    (lesions or patients) as the binomial n: ``x = coverage * G`` successes of ``G`` trials.

    The images of one lesion are nearly always covered together, so the independent trials are
    closer to the groups than to the images; using G is the conservative effective sample size
    (a design effect of images per group), and where every image is its own group it is the
    exact Clopper-Pearson interval. Unlike a percentile bootstrap it does not collapse to a
    point when every image of a small class is covered (or none is). (nan, nan) without images."""
    from scipy.stats import beta

    covered = np.asarray(covered, dtype=np.float64)
    if covered.size == 0:
        return float("nan"), float("nan")
    g = len(np.unique(np.asarray(groups)))
    x = float(covered.mean()) * g
    a = 1.0 - confidence
    low = 0.0 if x <= 1e-9 else float(beta.ppf(a / 2, x, g - x + 1))
    high = 1.0 if x >= g - 1e-9 else float(beta.ppf(1 - a / 2, x + 1, g - x))
    return low, high


def expected_coverage_range(n_cal: int, n_test: int, alpha: float, confidence: float = 0.95) -> tuple[float, float]:
    """Where the coverage of ``n_test`` exchangeable test images falls, with probability
    ``confidence``, when the threshold was calibrated correctly on ``n_cal`` images: the test
    coverage given the calibration is Beta(l, n_cal + 1 - l) with l = ceil((n_cal + 1)(1 - alpha))
    (continuous scores; Vovk, 2012), so the covered count is beta-binomial. (nan, nan) when
    n_cal is too small for a finite threshold or there are no test images."""
    from scipy.stats import betabinom

    l = _rank(n_cal, alpha)
    if n_test <= 0 or n_cal <= 0 or l > n_cal:
        return float("nan"), float("nan")
    law = betabinom(n_test, l, n_cal + 1 - l)
    a = 1.0 - confidence
    return float(law.ppf(a / 2)) / n_test, float(law.ppf(1 - a / 2)) / n_test
