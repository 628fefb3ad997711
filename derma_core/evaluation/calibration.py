"""Top-label calibration: the reliability table and the expected calibration error (ECE).

scikit-learn has no ECE function; the binning here is exactly
:func:`sklearn.calibration.calibration_curve`'s ``strategy="uniform"`` binning (equal-width
bins on [0, 1], right edges inclusive), applied to the top-label confidence, with the bin
counts kept so the gaps can be weighted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
