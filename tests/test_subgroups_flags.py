"""Subgroup metrics that cannot mislead: single-class and small groups are flagged, balanced
accuracy is over the classes present, each present class's recall is listed, and macro-F1 is not
given where it means nothing (a group with one true class). Values computed by hand."""

import io

import numpy as np
import pytest

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation import figures, subgroups
from derma_core.evaluation.metrics import classification_metrics
from derma_core.report import subgroup_display

K = len(HAM)
BCC, MEL, NV = (HAM.codes.index(c) for c in ("bcc", "mel", "nv"))
OTHERS = [c for c in range(K) if c != NV]  # the six classes a nevus can be mistaken for


def _data():
    """nevi: 100 nevi, 86 right, 14 wrong spread over the six other classes (3, 3, 2, 2, 2, 2);
    mixed: 10 melanomas (5 right, 5 called nv) and 10 nevi (all right); tiny: 5 bcc, all right."""
    y = [NV] * 100 + [MEL] * 10 + [NV] * 10 + [BCC] * 5
    wrong = [c for c, n in zip(OTHERS, (3, 3, 2, 2, 2, 2)) for _ in range(n)]
    pred = [NV] * 86 + wrong + [MEL] * 5 + [NV] * 5 + [NV] * 10 + [BCC] * 5
    group = ["nevi"] * 100 + ["mixed"] * 20 + ["tiny"] * 5
    n = len(y)
    return np.array(y), np.array(pred), np.array([f"L{i}" for i in range(n)]), {"g": np.array(group)}


def _analysis(n_resamples=0):
    y, pred, lesions, groups = _data()
    return subgroups.subgroup_analysis(y, pred, lesions, groups, K, n_resamples=n_resamples, min_count=15,
                                       codes=HAM.codes)


def test_single_class_group_reads_accuracy_not_macro_f1():
    y, pred, _, groups = _data()
    table, _ = _analysis()
    nevi = table.set_index("group").loc["nevi"]
    assert nevi["single_class"] and nevi["classes_present"] == 1 and not nevi["small"]
    assert nevi["accuracy"] == pytest.approx(0.86)
    assert nevi["balanced_accuracy"] == pytest.approx(0.86)  # the recall of the one class present
    assert nevi["present_recall"] == "nv 0.860 (86/100)"
    assert np.isnan(nevi["macro_f1"]) and np.isnan(nevi["macro_f1_ci_low"])
    # what macro-F1 over the true-or-predicted classes would have said: F1(nv) = 2*86 / (2*86 + 14)
    # averaged with six zeros, 0.132, while the majority-class baseline scores 1.000
    m = groups["g"] == "nevi"
    assert classification_metrics(y[m], pred[m], K)["macro_f1"] == pytest.approx(172 / 186 / 7)
    baseline = classification_metrics(y[m], np.full(m.sum(), NV), K)
    assert baseline["macro_f1"] == 1.0 and baseline["accuracy"] == 1.0 and baseline["balanced_accuracy"] == 1.0


def test_multi_class_group_balanced_accuracy_over_present_classes_and_macro_f1():
    table, _ = _analysis()
    mixed = table.set_index("group").loc["mixed"]
    assert not mixed["single_class"] and mixed["classes_present"] == 2 and not mixed["small"]
    assert mixed["accuracy"] == pytest.approx(15 / 20)
    assert mixed["balanced_accuracy"] == pytest.approx((5 / 10 + 10 / 10) / 2)  # mel and nv only, not 7 classes
    # F1(mel) = 2*5 / (2*5 + 0 + 5), F1(nv) = 2*10 / (2*10 + 5 + 0)
    assert mixed["macro_f1"] == pytest.approx((10 / 15 + 20 / 25) / 2)
    assert mixed["present_recall"] == "mel 0.500 (5/10); nv 1.000 (10/10)"


def test_small_groups_flagged_and_gaps_leave_out_what_means_nothing():
    table, gaps = _analysis(n_resamples=50)
    assert table.set_index("group")["small"].to_dict() == {"mixed": False, "nevi": False, "tiny": True}
    assert (table["min_count"] == 15).all()
    by = gaps.set_index("metric")
    # balanced accuracy: nevi 0.86 vs mixed 0.75 (tiny is small: left out)
    assert by.at["balanced_accuracy", "groups_compared"] == 2
    assert (by.at["balanced_accuracy", "worst_group"], by.at["balanced_accuracy", "best_group"]) == ("mixed", "nevi")
    assert by.at["balanced_accuracy", "gap"] == pytest.approx(0.86 - 0.75)
    # macro-F1: nevi has none and tiny is small, one group is left: no gap
    assert by.at["macro_f1", "groups_compared"] == 1 and np.isnan(by.at["macro_f1", "gap"])
    names = subgroups.subgroup_metrics(table, gaps)
    assert names["subgroup_g_nevi_accuracy"] == pytest.approx(0.86)
    assert "subgroup_g_nevi_macro_f1" not in names and "subgroup_g_gap_macro_f1" not in names
    assert names["subgroup_g_mixed_macro_f1"] == pytest.approx((10 / 15 + 20 / 25) / 2)
    assert names["subgroup_g_gap_balanced_accuracy"] == pytest.approx(0.11)


def test_report_table_shows_the_flags_and_the_figure_draws():
    table, _ = _analysis()
    shown = subgroup_display(table, "lesions").set_index("group")
    assert shown.at["nevi", "flag"] == "one class: read accuracy"
    assert shown.at["mixed", "flag"] == ""
    assert shown.at["tiny", "flag"] == "small (< 15 images); one class: read accuracy"
    assert shown.at["nevi", "macro_f1"] == "- (one class)" and shown.at["mixed", "macro_f1"] == "0.733"
    assert shown.at["nevi", "balanced accuracy (present classes)"] == "0.860"
    assert shown.at["mixed", "recall of present classes"] == "mel 0.500 (5/10); nv 1.000 (10/10)"
    assert shown.at["nevi", "classes present"] == "1" and shown.at["nevi", "lesions"] == 100
    fig = figures.subgroup_figure(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "nevi (n=100, one class)" in labels and "tiny (n=5, small, one class)" in labels
    assert "balanced accuracy" in fig.axes[-1].get_xlabel()
    fig.savefig(io.BytesIO(), format="png")


def test_figures_draw_an_interval_that_misses_its_point():
    """A percentile interval need not contain the point estimate (a small group's resamples see other
    classes present); the plots draw it instead of failing the run (`'xerr' must not contain negative values`)."""
    table, _ = _analysis()
    table = table.copy()
    table["balanced_accuracy_ci_low"] = table["balanced_accuracy"] + 0.05  # above the point
    table["balanced_accuracy_ci_high"] = table["balanced_accuracy"] + 0.10
    figures.subgroup_figure(table).savefig(io.BytesIO(), format="png")
    figures.compare_figure(["a", "b"], [0.5, 0.6], [0.55, 0.4], [0.7, 0.58], "macro_f1").savefig(io.BytesIO(),
                                                                                                format="png")
