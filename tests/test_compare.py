"""`derma compare` logic on constructed cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.evaluation import compare, paired, records, tables
from derma_core.evaluation.paired import PairingError
from derma_core.evaluation.records import RunRecord
from derma_core.labels import LabelSet

LABELS = HAM.codes
THREE = LabelSet(codes=("ack", "bcc", "nev"), groupings={"malignancy": {"ack": "m", "bcc": "m", "nev": "b"}},
                 positive={"malignancy": "m"})


def _table(n=140, wrong=(), invalid=(), ids=None, codes=LABELS, group_column="group_id"):
    """A predictions table (as `derma run` logs it): every prediction right except the given rows."""
    k = len(codes)
    labels = [codes[i % k] for i in range(n)]
    predicted = list(labels)
    for i in wrong:
        predicted[i] = codes[(codes.index(labels[i]) + 1) % k]
    for i in invalid:
        predicted[i] = ""
    frame = pd.DataFrame({"id": ids if ids is not None else [f"ISIC_{i:05d}" for i in range(n)],
                          group_column: [f"HAM_{i // 2:05d}" for i in range(n)],
                          "label": labels, "predicted": predicted})
    frame["raw_text"] = [f"it is {p}" for p in predicted]
    return frame


# -- McNemar ----------------------------------------------------------------------------------
def test_mcnemar_hand_computed():
    a = np.array([True] * 8 + [False] * 2 + [True] * 5 + [False] * 3)
    b = np.array([False] * 8 + [True] * 2 + [True] * 5 + [False] * 3)
    r = paired.mcnemar_test(a, b)
    assert (r.a_only, r.b_only, r.both, r.neither) == (8, 2, 5, 3)
    # exact: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert r.p_value == pytest.approx(112 / 1024)
    # chi2 with continuity correction: (|8 - 2| - 1)^2 / 10 = 2.5; 1-df survival = erfc(sqrt(x / 2))
    assert r.chi2 == pytest.approx(2.5)
    assert r.p_value_chi2 == pytest.approx(math.erfc(math.sqrt(2.5 / 2)))


def test_mcnemar_identical_and_one_sided():
    same = np.array([True, False, True, True])
    r = paired.mcnemar_test(same, same)
    assert r.p_value == 1 and r.p_value_chi2 == 1 and r.a_only == r.b_only == 0
    # A right wherever B is, plus 12 more images: p = 2 / 2^12
    a = np.ones(30, bool)
    b = np.array([True] * 18 + [False] * 12)
    r = paired.mcnemar_test(a, b)
    assert r.a_only == 12 and r.b_only == 0 and r.p_value == pytest.approx(2 / 2 ** 12)


# -- pairing ----------------------------------------------------------------------------------
def test_identical_runs_differ_by_nothing():
    t = _table(wrong=range(0, 140, 5), invalid=[3, 9])
    r = paired.paired_comparison(t, t.copy(), ("A", "B"), n_resamples=300, seed=0)
    assert set(r.differences) == {"accuracy", "balanced_accuracy", "macro_f1", "malignancy_sensitivity",
                                  "malignancy_specificity", "malignancy_balanced_accuracy"}  # HAM10000's, by fallback
    for d in r.differences.values():
        assert d.diff == 0 and d.ci_low == 0 and d.ci_high == 0
    assert r.mcnemar.p_value == 1 and r.mcnemar.a_only == 0 and r.mcnemar.b_only == 0
    assert r.n_images == 140 and r.n_groups == 70 and r.classes == LABELS
    assert set(compare.paired_table(r)["verdict"]) == {"no clear difference"}


def test_strictly_better_run_is_significant():
    good = _table(wrong=[0, 1])
    bad = _table(wrong=range(0, 140, 3))  # 47 wrong images, a superset of good's mistakes... almost
    bad.loc[1, "predicted"] = good.loc[1, "predicted"]
    r = paired.paired_comparison(good, bad, ("good", "bad"), n_resamples=500, seed=1)
    assert r.mcnemar.b_only == 0 and r.mcnemar.a_only == 46
    assert r.mcnemar.p_value == pytest.approx(2 * 0.5 ** 46)
    for m in ("macro_f1", "balanced_accuracy", "accuracy"):
        d = r.differences[m]
        assert d.diff > 0 and d.ci_low > 0 and d.excludes_zero
    assert r.differences["accuracy"].diff == pytest.approx(46 / 140)
    table = compare.paired_table(r).set_index("metric")
    assert list(table.index[:3]) == ["macro_f1", "balanced_accuracy", "accuracy"]
    assert set(table.loc[["macro_f1", "balanced_accuracy", "accuracy"], "verdict"]) == {"A better"}
    # swapping the runs flips every sign
    s = paired.paired_comparison(bad, good, ("bad", "good"), n_resamples=500, seed=1)
    assert s.differences["macro_f1"].diff == pytest.approx(-r.differences["macro_f1"].diff)
    assert s.differences["macro_f1"].ci_high == pytest.approx(-r.differences["macro_f1"].ci_low)
    assert compare.paired_table(s).set_index("metric").at["accuracy", "verdict"] == "B better"


def test_invalid_answers_count_wrong_in_pairing():
    valid_wrong = _table(wrong=[5, 6])
    invalid = _table(invalid=[5, 6])
    r = paired.paired_comparison(valid_wrong, invalid, n_resamples=0)
    assert r.differences["accuracy"].diff == 0 and r.mcnemar.a_only == r.mcnemar.b_only == 0
    assert math.isnan(r.differences["accuracy"].ci_low)  # no resamples, no interval


def test_row_order_does_not_matter():
    a = _table(wrong=range(0, 140, 4))
    b = _table(wrong=range(1, 140, 6))
    shuffled = b.sample(frac=1.0, random_state=0).reset_index(drop=True)
    r1 = paired.paired_comparison(a, b, n_resamples=200, seed=3)
    r2 = paired.paired_comparison(a, shuffled, n_resamples=200, seed=3)
    assert r1.as_dict() == r2.as_dict()


def test_pairing_refused_for_different_test_sets():
    a = _table()
    b = _table(ids=[f"ISIC_{i:05d}" for i in range(1, 141)])
    with pytest.raises(PairingError, match=r"different images .*1 only in A, e.g. \['ISIC_00000'\]"):
        paired.paired_comparison(a, b)
    relabelled = _table()
    relabelled.loc[7, "label"] = "mel" if relabelled.loc[7, "label"] != "mel" else "nv"
    with pytest.raises(PairingError, match="image 'ISIC_00007' has label"):
        paired.align_predictions(a, relabelled)
    with pytest.raises(PairingError, match="repeats image id"):
        paired.align_predictions(pd.concat([a, a.head(1)]), a)
    with pytest.raises(PairingError, match="lacks columns"):
        paired.align_predictions(a.drop(columns="predicted"), a)
    with pytest.raises(PairingError, match="lacks columns.*group_id"):
        paired.align_predictions(a.drop(columns="group_id"), a)


def test_older_tables_with_lesion_id_pair_with_new_ones():
    old = _table(wrong=[3, 4], group_column="lesion_id")
    new = _table(wrong=[5])
    joined = paired.align_predictions(old, new)
    assert list(joined.columns) == ["id", "group_id", "label", "pred_a", "pred_b"]
    r = paired.paired_comparison(old, new, n_resamples=50, seed=0)
    assert r.n_groups == 70 and r.differences["accuracy"].diff == pytest.approx(-1 / 140)


def test_label_sets_of_tables_and_runs_of_other_classes():
    ham = _table()
    assert paired.table_label_set(ham) == HAM  # an older run: every label fits HAM10000
    three = _table(n=60, codes=THREE.codes)
    assert paired.table_label_set(three).codes == ("ack", "bcc", "nev")
    with_probs = three.assign(**{"prob_nev": 0.2, "prob_ack": 0.5, "prob_bcc": 0.3})
    assert paired.table_label_set(with_probs).codes == ("nev", "ack", "bcc")  # the prob_ columns' order
    with pytest.raises(PairingError, match=r"A was evaluated on the classes akiec, .* \(7 classes\) but B on "
                                           r"ack, bcc, nev \(3 classes\); paired tests need runs over the same"):
        paired.paired_comparison(ham, three)
    # the same classes: the recorded label set's groupings give the grouped differences
    r = paired.paired_comparison(three, _table(n=60, codes=THREE.codes, wrong=[1]), n_resamples=100,
                                  label_sets=(THREE, THREE), unit="patients")
    assert r.differences["malignancy_sensitivity"].diff == pytest.approx(1 / 40)  # image 1 (bcc) called nev
    assert "(30 patients)" in compare.paired_text(r) and r.as_dict()["unit"] == "patients"
    renamed = LabelSet(codes=THREE.codes)  # same classes, no grouping: base metrics only
    r2 = paired.paired_comparison(three, three, n_resamples=0, label_sets=(THREE, renamed))
    assert set(r2.differences) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert tables.describe_classes(LabelSet(codes=tuple(f"c{i}" for i in range(114)))) == \
        "c0, c1, c2, c3, c4, c5, c6, c7, ... (114 classes)"


def test_summary_metrics_follow_the_runs_label_sets():
    cols = ["accuracy", "macro_f1", "mel_sensitivity_at_spec80", "mel_sensitivity_at_spec90", "malignancy_auroc",
            "malignancy_sensitivity", "malignancy_specificity", "malignancy_sensitivity_at_spec80",
            "subgroup_sex_male_malignancy_sensitivity", "subgroup_sex_male_malignancy_specificity",
            "conformal_lac_coverage", "ece", "recall_mel", "kind_sensitivity", "kind_specificity"]
    assert compare.summary_metrics(cols) == [
        "accuracy", "macro_f1", "mel_sensitivity_at_spec80", "mel_sensitivity_at_spec90",
        "kind_sensitivity", "kind_specificity", "malignancy_sensitivity", "malignancy_specificity",
        "malignancy_auroc", "ece"]


# -- side-by-side table -------------------------------------------------------------------------
def _records():
    base = {"seed": "42", "data_source": "ham10000", "image_size": "224"}
    return [
        RunRecord("aaaaaaaa1111", "floor", params={**base, "plugin": "prior"},
                  metrics={"test_accuracy": 0.670, "test_macro_f1": 0.115, "test_macro_f1_ci_low": 0.110,
                           "test_macro_f1_ci_high": 0.120, "val_macro_f1": 0.3},
                  tags={"derma.plugin": "prior", "derma.dataset": "ham10000", "derma.label_set": ",".join(LABELS)}),
        RunRecord("bbbbbbbb2222", "", params={**base, "plugin": "resnet18", "lr": "0.0005", "epochs": "20"},
                  metrics={"test_accuracy": 0.798, "test_macro_f1": 0.625, "test_macro_f1_ci_low": 0.6,
                           "test_macro_f1_ci_high": 0.65, "test_macro_auroc": 0.93},
                  tags={"derma.plugin": "resnet18", "derma.dataset": "ham10000", "derma.label_set": ",".join(LABELS)}),
    ]


def test_runs_frame_and_display_table():
    frame = records.runs_frame(_records(), "test")
    assert list(frame["plugin"]) == ["prior", "resnet18"] and list(frame["dataset"]) == ["ham10000", "ham10000"]
    assert frame.loc[1, "macro_f1_ci_high"] == 0.65 and "val_macro_f1" not in frame and "macro_f1" in frame
    assert "lora_r" not in frame  # params no run has are dropped
    assert records.key_params(frame) == ["epochs", "lr"]  # seed/data_source/image_size are the same
    ranked = compare.sort_runs(frame, "macro_f1")
    assert list(ranked["plugin"]) == ["resnet18", "prior"]
    assert list(compare.sort_runs(frame.assign(ece=[0.3, 0.1]), "ece")["plugin"]) == ["resnet18", "prior"]
    table = compare.display_table(ranked)
    assert list(table.columns) == ["run", "plugin", "epochs", "lr", "accuracy", "macro_f1", "macro_auroc"]
    row = table.iloc[0]
    assert row["run"] == "bbbbbbbb" and row["macro_f1"] == "0.625 [0.600, 0.650]" and row["accuracy"] == "0.798"
    assert table.iloc[1]["run"] == "floor (aaaaaaaa)" and table.iloc[1]["macro_auroc"] == "-"
    assert table.iloc[1]["lr"] == "-"
    single = compare.display_table(records.runs_frame(_records()[:1]))
    assert {"seed", "data_source", "image_size"} <= set(single.columns)  # one run: every param it has
    other = _records()
    other[1].tags["derma.label_set"] = "ack,bcc,nev"
    mixed = compare.display_table(records.runs_frame(other))
    assert list(mixed["classes"]) == ["7", "3"]  # shown only when the runs' classes differ
    with pytest.raises(PairingError, match="classes akiec, .* but .* on ack, bcc, nev"):
        records.check_same_classes_tags(*other)


def test_renderers():
    table = compare.display_table(records.runs_frame(_records()))
    md = tables.render_markdown(table).splitlines()
    assert md[0].startswith("| run | plugin |") and md[1].startswith("|---|") and len(md) == 4
    text = tables.render_text(table).splitlines()
    assert len(text) == 4 and set(text[1]) <= {"-", " "}
    assert text[0].index("plugin") == text[2].index("prior")  # columns line up
    escaped = tables.render_markdown(pd.DataFrame({"a": ["x|y"]}))
    assert "x\\|y" in escaped


def test_paired_text_mentions_everything():
    good, bad = _table(wrong=[0]), _table(wrong=range(0, 140, 2))
    r = paired.paired_comparison(good, bad, ("run-a", "run-b"), n_resamples=100)
    text = compare.paired_text(r)
    assert "A = run-a, B = run-b" in text and "McNemar" in text and "macro_f1" in text
    assert "140 images (70 groups)" in text
