"""Top-label calibration: the reliability table and the expected calibration error (ECE).

scikit-learn has no ECE function; the binning here is exactly
:func:`sklearn.calibration.calibration_curve`'s ``strategy="uniform"`` binning (equal-width
bins on [0, 1], right edges inclusive), applied to the top-label confidence, with the bin
counts kept so the gaps can be weighted.

Post-hoc calibration (:func:`fit_scaler`): temperature or vector scaling of the log-probabilities,
fitted on the validation split's predictions and applied to the test split's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .probabilities import softmax

#: Equal-width confidence bins (Guo et al., 2017, "On calibration of modern neural networks").
DEFAULT_BINS = 15


def top_label(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (the largest probability) and correctness of the arg-max class per image.

    Calibration is about the probabilities, so it uses their arg-max, which for a VLM scored by
    label likelihood can differ from the label parsed out of its generated text.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    return confidence, correct


def reliability_table(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row per confidence bin: edges, image count, mean confidence and accuracy (NaN when empty)."""
    confidence, correct = top_label(y_true, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # The same assignment as sklearn.calibration.calibration_curve (searchsorted on inner edges).
    ids = np.searchsorted(edges[1:-1], confidence)
    count = np.bincount(ids, minlength=n_bins)
    conf_sum = np.bincount(ids, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(ids, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, correct_sum / np.maximum(count, 1), np.nan)
    return pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": count.astype(np.int64),
                         "confidence": mean_conf, "accuracy": accuracy})


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|."""
    counts = table["count"].to_numpy(dtype=np.float64)
    if counts.sum() == 0:
        return float("nan")
    used = counts > 0
    gaps = np.abs(table["accuracy"].to_numpy()[used] - table["confidence"].to_numpy()[used])
    return float(np.sum(counts[used] / counts.sum() * gaps))


def classwise_ece(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Classwise ECE (Kull et al., 2019): the mean over classes of the ECE of each class's
    one-vs-rest probability, with the same equal-width binning as :func:`reliability_table`."""
    p = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true)
    n, k = p.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for c in range(k):
        ids = np.searchsorted(edges[1:-1], p[:, c])
        gap = np.abs(np.bincount(ids, weights=p[:, c], minlength=n_bins)
                     - np.bincount(ids, weights=(y_true == c).astype(np.float64), minlength=n_bins))
        total += float(gap.sum() / n)  # sum_b (n_b / n) * |mean p - frequency| = sum_b |sum p - count| / n
    return total / k


def _log_probs(probabilities: np.ndarray) -> np.ndarray:
    """log p, clipped away from 0 so a zero probability stays finite (the 'logits' scaled below)."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))


def nll(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    lp = _log_probs(probabilities)
    return float(-np.mean(lp[np.arange(len(lp)), np.asarray(y_true)]))


@dataclass
class Scaler:
    """A fitted post-hoc calibration map on log-probabilities: ``softmax(w * log p + b)``.

    Temperature scaling has one shared ``w = 1 / T`` and ``b = 0``; vector scaling one ``w`` and
    ``b`` per class (Guo et al., 2017). Fitted by minimising the NLL of the calibration split.
    """

    method: str
    weights: np.ndarray
    bias: np.ndarray

    @property
    def temperature(self) -> float:
        return float(1.0 / self.weights[0]) if self.method == "temperature" else float("nan")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return softmax(_log_probs(probabilities) * self.weights + self.bias)


def fit_scaler(y_true: np.ndarray, probabilities: np.ndarray, method: str = "temperature") -> Scaler:
    """Fit temperature (or vector) scaling on calibration (val) probabilities only."""
    from scipy.optimize import minimize, minimize_scalar

    y_true = np.asarray(y_true, dtype=np.int64)
    lp = _log_probs(probabilities)
    n, k = lp.shape
    rows = np.arange(n)
    if method == "temperature":
        def loss_t(log_t: float) -> float:
            z = lp / np.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y_true]))

        best = minimize_scalar(loss_t, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                               options={"xatol": 1e-6})
        t = float(np.exp(best.x))
        return Scaler("temperature", np.full(k, 1.0 / t), np.zeros(k))
    if method == "vector":
        onehot = np.eye(k)[y_true]

        def loss_v(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:k], theta[k:]
            q = softmax(lp * w + b)
            value = -np.mean(np.log(np.clip(q[rows, y_true], 1e-300, None)))
            diff = (q - onehot) / n
            return float(value), np.concatenate([(diff * lp).sum(axis=0), diff.sum(axis=0)])

        start = np.concatenate([np.ones(k), np.zeros(k)])
        res = minimize(loss_v, start, jac=True, method="L-BFGS-B")
        return Scaler("vector", res.x[:k].copy(), res.x[k:].copy())
    raise ValueError(f"evaluation.calibration_method must be temperature or vector, got {method!r}")
