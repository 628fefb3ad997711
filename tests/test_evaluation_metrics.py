"""Every metric against an independent computation (hand-counted or a different formula)."""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation import calibration, metrics
from derma_core.labels import INVALID, LabelSet

LABELS = HAM.codes
L = {c: i for i, c in enumerate(LABELS)}
K = len(LABELS)

# A hand-countable case: 10 images, one invalid answer; df and vasc occur nowhere.
TRUE = ["akiec", "akiec", "bcc", "bcc", "bkl", "mel", "mel", "nv", "nv", "nv"]
PRED = ["akiec", None, "bcc", "nv", "bkl", "mel", "nv", "nv", "nv", "mel"]
Y_TRUE = np.array([L[t] for t in TRUE])
Y_PRED = np.array([L[p] if p else INVALID for p in PRED])

# Hand counts, class by class (TP, FP, FN):
#   akiec 1,0,1 (the invalid answer is a miss)  bcc 1,0,1  bkl 1,0,0  mel 1,1,1  nv 2,2,1
HAND_F1 = {"akiec": F(2, 3), "bcc": F(2, 3), "bkl": F(1), "mel": F(1, 2), "nv": F(4, 7)}
HAND_RECALL = {"akiec": F(1, 2), "bcc": F(1, 2), "bkl": F(1), "mel": F(1, 2), "nv": F(2, 3)}
HAND_PRECISION = {"akiec": F(1), "bcc": F(1), "bkl": F(1), "mel": F(1, 2), "nv": F(1, 2)}
SUPPORT = {"akiec": 2, "bcc": 2, "bkl": 1, "mel": 2, "nv": 3}


def test_classification_metrics_hand_counted():
    m = metrics.classification_metrics(Y_TRUE, Y_PRED, K)
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["balanced_accuracy"] == pytest.approx(float(sum(HAND_RECALL.values()) / 5))
    # df and vasc have neither true nor predicted images: no F1, left out of the mean
    assert m["macro_f1"] == pytest.approx(float(sum(HAND_F1.values()) / 5))
    weighted = sum(HAND_F1[c] * SUPPORT[c] for c in HAND_F1) / 10
    assert m["weighted_f1"] == pytest.approx(float(weighted))


def test_per_class_report_hand_counted():
    report = metrics.per_class_report(Y_TRUE, Y_PRED, HAM).set_index("label")
    assert list(report.index) == list(LABELS)
    for c in HAND_F1:
        assert report.at[c, "precision"] == pytest.approx(float(HAND_PRECISION[c]))
        assert report.at[c, "recall"] == pytest.approx(float(HAND_RECALL[c]))
        assert report.at[c, "f1"] == pytest.approx(float(HAND_F1[c]))
        assert report.at[c, "support"] == SUPPORT[c]
    for c in ("df", "vasc"):
        assert report.at[c, "support"] == 0 and report.at[c, "predicted"] == 0
        assert report.at[c, "precision"] == 0 and report.at[c, "f1"] == 0
    assert report["predicted"].sum() == 9  # the invalid answer predicts no class
    flat = metrics.per_class_metrics(report.reset_index())
    assert flat["f1_nv"] == pytest.approx(4 / 7) and flat["support_mel"] == 2 and flat["precision_mel"] == 0.5
    assert set(flat) == {f"{k}_{c}" for k in ("precision", "recall", "f1", "support") for c in LABELS}


def test_seed_always_nv_floor():
    """The seed test split's class counts; answering nv everywhere scores 0.670 accuracy."""
    counts = [62, 100, 218, 28, 218, 1337, 32]
    y_true = np.repeat(np.arange(7), counts)
    y_pred = np.full(len(y_true), L["nv"])
    m = metrics.classification_metrics(y_true, y_pred, K)
    assert round(m["accuracy"], 3) == 0.670
    assert m["balanced_accuracy"] == pytest.approx(1 / 7)
    f1_nv = 2 * 1337 / (2 * 1337 + (1995 - 1337))
    # every class occurs, so macro-F1 is over all 7 labels: six zeros and nv's F1
    assert m["macro_f1"] == pytest.approx(f1_nv / 7)
    assert m["weighted_f1"] == pytest.approx(f1_nv * 1337 / 1995)


def test_invalid_answers_count_wrong_everywhere():
    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 5])
    valid = metrics.classification_metrics(y_true, y_true.copy(), K)
    assert valid["accuracy"] == 1 and valid["macro_f1"] == 1 and valid["balanced_accuracy"] == 1
    y_pred = y_true.copy()
    y_pred[[0, 7]] = INVALID  # akiec's only image and one nv image
    m = metrics.classification_metrics(y_true, y_pred, K)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # akiec: recall 0, F1 0; nv: recall 1/2, F1 = 2*1/(2+0+1) = 2/3; others perfect
    assert m["balanced_accuracy"] == pytest.approx((0 + 0.5 + 5) / 7)
    assert m["macro_f1"] == pytest.approx((0 + 2 / 3 + 5) / 7)
    everything_invalid = metrics.classification_metrics(y_true, np.full(8, INVALID), K)
    assert everything_invalid == {"accuracy": 0, "balanced_accuracy": 0, "macro_f1": 0, "weighted_f1": 0}


def test_confusion_tables_and_answer_distribution():
    with_invalid = metrics.confusion_counts(Y_TRUE, Y_PRED, HAM, include_invalid=True).set_index("true")
    assert list(with_invalid.columns) == list(LABELS) + ["invalid"]
    assert with_invalid.at["akiec", "invalid"] == 1 and with_invalid["invalid"].sum() == 1
    assert with_invalid.at["nv", "mel"] == 1 and with_invalid.at["mel", "nv"] == 1 and with_invalid.at["nv", "nv"] == 2
    assert with_invalid.to_numpy().sum() == 10
    cm = metrics.valid_confusion_matrix(Y_TRUE, Y_PRED, K)
    assert cm.shape == (7, 7) and cm.sum() == 9 and cm[L["akiec"], L["akiec"]] == 1
    dist = metrics.answer_distribution(Y_TRUE, Y_PRED, HAM).set_index("answer")
    assert dict(dist["count"]) == {"akiec": 1, "bcc": 1, "bkl": 1, "df": 0, "mel": 2, "nv": 4, "vasc": 0, "invalid": 1}
    assert dist["fraction"].sum() == pytest.approx(1) and dist.at["invalid", "fraction"] == pytest.approx(0.1)
    assert dist.at["nv", "true_count"] == 3 and dist.at["invalid", "true_count"] == 0
    assert metrics.invalid_rate(Y_PRED) == pytest.approx(0.1)


def test_bad_input():
    with pytest.raises(ValueError, match="empty split"):
        metrics.classification_metrics(np.array([], dtype=int), np.array([], dtype=int), K)
    with pytest.raises(ValueError, match="true labels cannot be invalid"):
        metrics.classification_metrics(np.array([INVALID]), np.array([0]), K)
    with pytest.raises(ValueError, match=r"label indices 0\.\.2"):
        metrics.classification_metrics(np.array([0, 3]), np.array([0, 1]), 3)


# -- grouped metrics (HAM10000: akiec, bcc, mel are malignant) -----------------------------------
def test_grouped_label_metrics_hand_counted():
    """Malignant images 0,1,2,3,5,6: predicted malignant at 0 (akiec), 2 (bcc), 5 (mel); 1 is
    invalid (a miss), 3 and 6 say nv. Benign images 4,7,8,9: 9 is called mel."""
    targets = metrics.group_targets(HAM)
    assert [(t.grouping, t.positive) for t in targets] == [("malignancy", "malignant")]
    m = metrics.grouped_label_metrics(Y_TRUE, Y_PRED, K, targets)
    assert m == pytest.approx({"malignancy_sensitivity": 3 / 6, "malignancy_specificity": 3 / 4,
                               "malignancy_balanced_accuracy": (3 / 6 + 3 / 4) / 2})
    # an invalid answer on a benign image is not a correct rejection either
    pred = Y_PRED.copy()
    pred[4] = INVALID
    assert metrics.grouped_label_metrics(Y_TRUE, pred, K, targets)["malignancy_specificity"] == pytest.approx(2 / 4)
    only_benign = metrics.grouped_label_metrics(np.array([L["nv"], L["bkl"]]), np.array([L["nv"], L["mel"]]), K,
                                                targets)
    assert math.isnan(only_benign["malignancy_sensitivity"]) and only_benign["malignancy_specificity"] == 0.5
    assert only_benign["malignancy_balanced_accuracy"] == 0.5


def test_grouped_probability_metrics_sum_the_group():
    # P(malignant) = akiec + bcc + mel; per image 0.9, 0.6, 0.4 (malignant) and 0.5, 0.1 (benign)
    p = np.zeros((5, K))
    p[0, [L["akiec"], L["nv"]]] = [0.9, 0.1]
    p[1, [L["bcc"], L["mel"], L["nv"]]] = [0.3, 0.3, 0.4]
    p[2, [L["mel"], L["nv"]]] = [0.4, 0.6]
    p[3, [L["mel"], L["bkl"]]] = [0.5, 0.5]
    p[4, [L["akiec"], L["df"]]] = [0.1, 0.9]
    y = np.array([L["akiec"], L["bcc"], L["mel"], L["nv"], L["df"]])
    m = metrics.grouped_probability_metrics(y, p, metrics.group_targets(HAM))
    # pairs (malignant > benign): 0.9 beats both, 0.6 beats both, 0.4 beats 0.1 only: 5 of 6
    assert m["malignancy_auroc"] == pytest.approx(5 / 6)
    # spec >= 80% with 2 benign images allows no false positive: threshold above 0.5 catches 0.9, 0.6
    assert m["malignancy_sensitivity_at_spec80"] == pytest.approx(2 / 3)
    assert m["malignancy_sensitivity_at_spec90"] == pytest.approx(2 / 3)
    full, _ = metrics.probability_metrics(y, p, HAM)
    assert full["malignancy_auroc"] == m["malignancy_auroc"] and "mel_sensitivity_at_spec80" in full


TWO = LabelSet(codes=("benign", "malignant"), groupings={"malignancy": {"benign": "no", "malignant": "yes"}},
               positive={"malignancy": "yes"})


def test_two_classes_without_a_focus_class():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, y, 1 - y)
    pred[::17] = INVALID
    p = np.clip(np.eye(2)[y] * 0.4 + rng.random((200, 2)) * 0.6, 0, None)
    p /= p.sum(1, keepdims=True)
    m = metrics.classification_metrics(y, pred, 2)
    m.update(metrics.grouped_label_metrics(y, pred, 2, metrics.group_targets(TWO)))
    report = metrics.per_class_metrics(metrics.per_class_report(y, pred, TWO))
    # the grouping is the class itself: sensitivity = recall of malignant, specificity = recall of benign
    assert m["malignancy_sensitivity"] == pytest.approx(report["recall_malignant"])
    assert m["malignancy_specificity"] == pytest.approx(report["recall_benign"])
    assert m["malignancy_balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    probs, table = metrics.probability_metrics(y, p, TWO)
    assert not any(k.endswith("sensitivity_at_spec80") and not k.startswith("malignancy_") for k in probs)
    assert probs["malignancy_auroc"] == pytest.approx(probs["auroc_malignant"])
    assert list(table["label"]) == ["benign", "malignant"]
    assert metrics.focus_metric_names(TWO) == {}
    assert metrics.focus_metric_names(HAM) == {0.8: "mel_sensitivity_at_spec80", 0.9: "mel_sensitivity_at_spec90"}


def test_a_grouping_named_like_a_class_is_refused():
    bad = LabelSet(codes=("a", "b"), groupings={"a": {"a": "x", "b": "y"}}, positive={"a": "x"})
    with pytest.raises(ValueError, match="grouping 'a' has the name of a class"):
        metrics.group_targets(bad)


# -- probabilities ------------------------------------------------------------------------------
def _auroc_pairs(pos_scores, neg_scores) -> float:
    """Mann-Whitney: P(score of a positive > score of a negative), ties count 1/2."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos_scores for n in neg_scores)
    return wins / (len(pos_scores) * len(neg_scores))


def _average_precision_sweep(y, s) -> float:
    """AP as the step-wise area under precision-recall, thresholds swept by hand."""
    total = y.sum()
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        chosen = s >= t
        tp = (y & chosen).sum()
        precision, recall = tp / chosen.sum(), tp / total
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@pytest.fixture(scope="module")
def prob_case():
    rng = np.random.default_rng(3)
    n = 120
    y = rng.integers(0, K, n)
    y[:K] = np.arange(K)  # every class present
    logits = rng.normal(size=(n, K)) + 1.5 * np.eye(K)[y]
    logits = np.round(logits, 1)  # ties in scores, on purpose
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_auroc_and_average_precision_independent(prob_case):
    y, p = prob_case
    m, table = metrics.probability_metrics(y, p, HAM)
    aurocs, aps = [], []
    for c, label in enumerate(LABELS):
        pos = y == c
        auroc = _auroc_pairs(p[pos, c], p[~pos, c])
        ap = _average_precision_sweep(pos, p[:, c])
        assert m[f"auroc_{label}"] == pytest.approx(auroc)
        assert m[f"average_precision_{label}"] == pytest.approx(ap)
        aurocs.append(auroc)
        aps.append(ap)
    assert m["macro_auroc"] == pytest.approx(np.mean(aurocs))
    assert m["macro_average_precision"] == pytest.approx(np.mean(aps))
    assert list(table["label"]) == list(LABELS) and table["positives"].sum() == len(y)


def test_brier_is_mean_squared_distance_to_one_hot(prob_case):
    y, p = prob_case
    m, _ = metrics.probability_metrics(y, p, HAM)
    hand = np.mean([sum((p[i, c] - (1.0 if y[i] == c else 0.0)) ** 2 for c in range(K)) for i in range(len(y))])
    assert m["brier"] == pytest.approx(hand)
    # the two extremes: a perfect one-hot scores 0, a confident wrong one scores 2
    m0, _ = metrics.probability_metrics(np.arange(K), np.eye(K), HAM)
    m2, _ = metrics.probability_metrics(np.arange(K), np.roll(np.eye(K), 1, axis=1), HAM)
    assert m0["brier"] == 0 and m2["brier"] == pytest.approx(2)


def _probs_for_mel(mel_scores: list[float]) -> np.ndarray:
    p = np.zeros((len(mel_scores), K))
    p[:, L["mel"]] = mel_scores
    p[:, L["nv"]] = 1 - np.asarray(mel_scores)
    return p


def test_mel_sensitivity_at_specificity_hand_counted():
    # 10 non-melanomas at 0.05 .. 0.95, 5 melanomas
    neg = [0.05 + 0.1 * i for i in range(10)]
    pos = [0.99, 0.9, 0.8, 0.5, 0.3]
    y = np.array([L["nv"]] * 10 + [L["mel"]] * 5)
    m, _ = metrics.probability_metrics(y, _probs_for_mel(neg + pos), HAM)
    # spec >= 90% allows 1 false positive (0.95): threshold above 0.85 catches 0.99, 0.9
    assert m["mel_sensitivity_at_spec90"] == pytest.approx(2 / 5)
    # spec >= 80% allows 2 (0.95, 0.85): threshold above 0.75 also catches 0.8
    assert m["mel_sensitivity_at_spec80"] == pytest.approx(3 / 5)


def test_mel_sensitivity_keeps_collinear_roc_points():
    """Tied (melanoma, other) pairs at 0.9, 0.8, 0.7 make collinear ROC points; the middle one
    (FPR 0.2, TPR 0.4) is the answer at 80% specificity and must not be dropped."""
    scores = [0.9, 0.9, 0.8, 0.8, 0.7, 0.7] + [0.1] * 7 + [0.05] * 2
    y = np.array([L["mel"], L["nv"]] * 3 + [L["nv"]] * 7 + [L["mel"]] * 2)
    m, _ = metrics.probability_metrics(y, _probs_for_mel(scores), HAM)
    assert m["mel_sensitivity_at_spec80"] == pytest.approx(2 / 5)
    assert m["mel_sensitivity_at_spec90"] == pytest.approx(1 / 5)


def test_mel_sensitivity_brute_force(prob_case):
    y, p = prob_case
    pos = y == L["mel"]
    s = p[:, L["mel"]]
    for spec in (0.8, 0.9):
        best = 0.0
        for t in list(np.unique(s)) + [np.inf]:
            chosen = s >= t
            if np.sum(~chosen & ~pos) / np.sum(~pos) >= spec - 1e-12:
                best = max(best, np.sum(chosen & pos) / np.sum(pos))
        assert metrics.sensitivity_at_specificity(pos, s, spec) == pytest.approx(best)


def test_probability_metrics_skip_absent_classes():
    y = np.array([L["nv"], L["mel"], L["nv"], L["mel"]])
    p = _probs_for_mel([0.2, 0.8, 0.4, 0.6])
    m, table = metrics.probability_metrics(y, p, HAM)
    assert set(k for k in m if k.startswith("auroc_")) == {"auroc_mel", "auroc_nv"}
    assert m["macro_auroc"] == 1.0
    assert math.isnan(table.set_index("label").at["df", "auroc"])


def test_bad_probabilities_are_refused():
    p = np.full((2, K), 1 / K)
    p[1, 3] = np.nan
    with pytest.raises(ValueError, match="probabilities row 1"):
        metrics.probability_metrics(np.array([0, 1]), p, HAM)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        metrics.check_probabilities(np.full((2, K), 1 / K), 2, 3)


# -- calibration --------------------------------------------------------------------------------
def _row(top: float, cls: int) -> np.ndarray:
    row = np.full(K, (1 - top) / (K - 1))
    row[cls] = top
    return row


def test_ece_hand_computed():
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.45 (wrong), 15 bins of width 1/15
    y = np.array([0, 1, 2, 3])
    p = np.stack([_row(0.95, 0), _row(0.95, 0), _row(0.55, 2), _row(0.45, 5)])
    table = calibration.reliability_table(y, p, n_bins=15)
    ece = calibration.expected_calibration_error(table)
    assert ece == pytest.approx(2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.55) + 1 / 4 * abs(0 - 0.45))
    assert table["count"].sum() == 4 and (table["count"] > 0).sum() == 3
    perfect = calibration.reliability_table(np.zeros(4, int), np.stack([_row(1.0, 0)] * 4))
    assert calibration.expected_calibration_error(perfect) == 0


def test_reliability_table_matches_sklearn_calibration_curve(prob_case):
    y, p = prob_case
    table = calibration.reliability_table(y, p, n_bins=10)
    correct = (p.argmax(axis=1) == y).astype(int)
    prob_true, prob_pred = calibration_curve(correct, p.max(axis=1), n_bins=10)
    used = table[table["count"] > 0]
    np.testing.assert_allclose(used["accuracy"], prob_true)
    np.testing.assert_allclose(used["confidence"], prob_pred)
    # ECE the long way: per image, |bin accuracy - bin confidence| averaged over images
    ids = np.minimum((p.max(axis=1) * 10 - 1e-12).astype(int), 9)
    per_image = [abs(correct[ids == b].mean() - p.max(axis=1)[ids == b].mean()) for b in ids]
    assert calibration.expected_calibration_error(table) == pytest.approx(np.mean(per_image))


def test_all_invalid_answers_do_not_crash_the_evaluators():
    """A zero-shot VLM may answer nothing valid (the seed's p4 run had 677 invalid answers)."""
    from pathlib import Path

    import pandas as pd

    from derma_core.evaluation.evaluators import classification_evaluator, validity_evaluator
    from derma_core.interfaces import EvalInput, Predictions, Split
    from derma_core.testing import tiny_descriptor

    frame = pd.DataFrame({"id": ["a", "b", "c"], "label": ["nv", "mel", "bcc"], "group_id": ["1", "2", "3"],
                          "image_path": ["a.jpg", "b.jpg", "c.jpg"]})
    split = Split("test", frame, Path("."), label_set=HAM)
    preds = Predictions(ids=["a", "b", "c"], labels=[None, None, None], raw_text=["?", "", "no idea"], label_set=HAM)
    config = {"seed": 0, "evaluation": {"bootstrap": 20, "confidence": 0.95}}
    inputs = EvalInput(split, preds, config, dataset=tiny_descriptor())
    result = classification_evaluator(inputs)
    assert result.metrics["accuracy"] == 0.0 and result.metrics["macro_f1"] == 0.0
    assert result.metrics["malignancy_sensitivity"] == 0.0 and result.metrics["malignancy_specificity"] == 0.0
    assert validity_evaluator(inputs).metrics["invalid_rate"] == 1.0
