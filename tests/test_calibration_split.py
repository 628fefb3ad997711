"""The calibration split (derma_core/data/calibration_split.py): val carved, grouped and
stratified, into the part model selection uses and the part calibration uses; the runner fits
on the first and calibrates on the second; tuning never sees the second.

The coverage tests fail when calibration reuses the images selection used: on arrays (a model
picked among noisy candidates on val, the realistic case) and through ``derma run`` (a backend
that overfits the val it is given, the limit of the same thing).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest

from derma_core import hookimpl, plugins, runner, tracking
from derma_core.config import ConfigError, resolve_config
from derma_core.data.calibration_split import (ARTIFACT, CALIBRATION, calibration_settings, calibration_split, carve,
                                               selects_on_val)
from derma_core.evaluation import conformal
from derma_core.interfaces import Dataset, Predictions, Split
from derma_core.labels import LabelSet
from derma_core.testing import tiny_descriptor

THREE = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"))
K = 3


def _val(n_groups: int, seed: int = 0, label_set: LabelSet = THREE, shares=None) -> Split:
    """A val split of ``n_groups`` lesions of 1-3 images, labels drawn with ``shares``."""
    rng = np.random.default_rng(seed)
    codes = label_set.codes
    shares = np.full(len(codes), 1 / len(codes)) if shares is None else np.asarray(shares)
    rows = []
    for g in range(n_groups):
        label = codes[int(rng.choice(len(codes), p=shares))]
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"id": f"img{len(rows):05d}", "label": label, "group_id": f"les{g:05d}", "image_path": "x.jpg"})
    return Split("val", pd.DataFrame(rows), ".", label_set=label_set)


# ---------------------------------------------------------------------------------------------
# carving


def test_carve_is_grouped_stratified_disjoint_and_about_the_share():
    val = _val(400, shares=[0.1, 0.2, 0.7])
    sel, cal = carve(val, share=0.5, seed=0)
    assert sel.name == "val" and cal.name == CALIBRATION
    assert sorted(sel.ids + cal.ids) == sorted(val.ids) and not set(sel.ids) & set(cal.ids)
    assert not set(sel.group_ids) & set(cal.group_ids)  # no lesion on both sides
    assert abs(len(cal) / len(val) - 0.5) < 0.03
    for code in THREE.codes:  # stratified: each class split about evenly
        n = int((val.frame["label"] == code).sum())
        assert abs(int((cal.frame["label"] == code).sum()) - n / 2) <= max(3, 0.06 * n), code
    # a third, and a count of images
    _, third = carve(val, share=1 / 3, seed=0)
    assert abs(len(third) / len(val) - 1 / 3) < 0.03
    _, counted = carve(val, images=100, seed=0)
    assert abs(len(counted) - 100) <= 6


def test_carve_depends_on_its_own_seed_only():
    val = _val(200)
    a, b = carve(val, seed=0)[1], carve(val, seed=0)[1]
    assert a.ids == b.ids
    assert carve(val, seed=1)[1].ids != a.ids
    config = resolve_config(None, overrides=["seed=7"])
    assert calibration_split(val, config).calibration.ids == a.ids  # the run's seed does not move it
    moved = resolve_config(None, overrides=["evaluation.calibration_split.seed=1"])
    assert calibration_split(val, moved).calibration.ids == carve(val, seed=1)[1].ids


@pytest.mark.parametrize("k", [2, 6, 114])
def test_every_class_with_two_groups_is_on_both_sides(k):
    labels = LabelSet(codes=tuple(f"c{i:03d}" for i in range(k)))
    val = _val(4 * k, seed=k, label_set=labels)
    sel, cal = carve(val)
    groups = val.frame.groupby("label")["group_id"].nunique()
    for code, n in groups.items():
        if n >= 2:
            assert code in set(sel.labels) and code in set(cal.labels), code


def test_val_that_cannot_be_carved_says_so_in_one_line():
    one = Split("val", pd.DataFrame({"id": ["a", "b"], "label": ["ack", "ack"], "group_id": ["L", "L"],
                                     "image_path": "x"}), ".", label_set=THREE)
    with pytest.raises(ValueError, match=r"^val has 2 images in 1 group\(s\) .*evaluation\.calibration_split\.source: "
                                         r"val$"):
        carve(one)
    with pytest.raises(ValueError, match=r"^evaluation\.calibration_split\.images = 50 but val has only \d+ images"):
        carve(_val(10), images=50)
    # auto falls back to reusing val, and says so; an explicit carve refuses
    fallback = calibration_split(one, resolve_config(None), _Selecting())
    assert fallback.mode == "val_reused" and fallback.calibration.ids == ["a", "b"]
    assert fallback.warning.startswith("val has 2 images in 1 group(s)") and fallback.warning.endswith(
        "calibrating on all of val, which selection also used (calibration_source: val_reused)")
    assert calibration_split(_val(10), resolve_config(None), _Selecting()).warning is None
    with pytest.raises(ValueError, match=r"^val has 2 images in 1 group\(s\)"):
        calibration_split(one, resolve_config(None, overrides=["evaluation.calibration_split.source=carve"]))
    with pytest.raises(ConfigError, match=r"evaluation\.calibration_split\.share must be between 0\.05 and 0\.95"):
        resolve_config(None, overrides=["evaluation.calibration_split.share=1.0"])
    with pytest.raises(ConfigError, match=r"evaluation\.calibration_split\.source must be one of auto, carve, val"):
        resolve_config(None, overrides=["evaluation.calibration_split.source=test"])


class _Selecting:
    pass


class _ZeroShot:
    selects_on_val = False


def test_the_source_decides_who_calibrates_on_what():
    val = _val(100)
    auto = resolve_config(None)
    assert calibration_settings(auto).source == "auto" and calibration_settings(auto).share == 0.5
    assert selects_on_val(_Selecting()) and not selects_on_val(_ZeroShot())
    carved = calibration_split(val, auto, _Selecting())
    assert carved.mode == "carved" and carved.disjoint
    p = carved.params()
    assert p["calibration_images"] == len(carved.calibration) and p["selection_images"] == len(carved.selection)
    assert p["calibration_groups"] + p["selection_groups"] == len(set(val.group_ids))
    table = carved.table()
    assert set(table["role"]) == {"selection", "calibration"} and sorted(table["id"]) == sorted(val.ids)
    assert table.loc[table["role"] == "calibration", "id"].tolist() == carved.calibration.ids

    unselected = calibration_split(val, auto, _ZeroShot())  # nothing selects on val: all of it calibrates
    assert unselected.mode == "val_unselected" and unselected.selection is val
    assert unselected.calibration.ids == val.ids and unselected.calibration.name == CALIBRATION
    assert set(unselected.table()["role"]) == {"calibration"}
    forced = calibration_split(val, resolve_config(None, overrides=["evaluation.calibration_split.source=carve"]),
                               _ZeroShot())
    assert forced.mode == "carved"
    reused = calibration_split(val, resolve_config(None, overrides=["evaluation.calibration_split.source=val"]),
                               _Selecting())
    assert reused.mode == "val_reused" and not reused.disjoint
    assert set(reused.table()["role"]) == {"selection+calibration"}


# ---------------------------------------------------------------------------------------------
# coverage: selection on val, then calibration on the same or on other images


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_selection_on_val_under_covers_and_the_carved_split_restores_coverage():
    """A model picked on val among 300 candidates whose errors differ by chance (epochs, seeds,
    hyperparameters of a model that can overfit): the pick looks better on the images it was
    picked on than on new ones. LAC calibrated on those same images under-covers the test
    images (about 0.85 for a 0.90 target); calibrated on the carved calibration split, which the
    pick never saw, coverage is the finite-sample level ceil((n + 1) 0.9) / (n + 1)."""
    rng = np.random.default_rng(0)
    reps, n_groups, n_test, n_candidates, alpha = 60, 150, 1000, 300, 0.1
    reuse, carved, expected = [], [], []
    for r in range(reps):
        val = _val(n_groups, seed=r)
        y = val.y
        base = 2.0 * np.eye(K)[y] + rng.normal(0, 1, (len(y), K))  # what the model family sees in each image
        candidates = 3.0 * rng.normal(0, 1, (n_candidates, len(y), K))  # each candidate's own errors
        yt = rng.integers(0, K, n_test)
        p_test = _softmax(2.0 * np.eye(K)[yt] + rng.normal(0, 1, (n_test, K)) + 3.0 * rng.normal(0, 1, (n_test, K)))

        def pick(rows):
            z = base[rows][None] + candidates[:, rows]
            log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
            return int(np.argmax(log_p[:, np.arange(len(rows)), y[rows]].sum(axis=1)))

        def coverage(cal_rows, chosen):
            p_val = _softmax(base + candidates[chosen])
            _, sets = conformal.calibrate_and_predict("lac", p_val[cal_rows], y[cal_rows], p_test, alpha)
            return sets[np.arange(n_test), yt].mean()

        everything = np.arange(len(y))
        reuse.append(coverage(everything, pick(everything)))  # selection and calibration on all of val
        sel, cal = carve(val, share=0.5, seed=r)
        position = {i: k for k, i in enumerate(val.ids)}
        sel_rows = np.array([position[i] for i in sel.ids])
        cal_rows = np.array([position[i] for i in cal.ids])
        carved.append(coverage(cal_rows, pick(sel_rows)))
        expected.append(math.ceil((len(cal_rows) + 1) * (1 - alpha)) / (len(cal_rows) + 1))
    reuse, carved = np.array(reuse), np.array(carved)
    se_reuse, se_carved = reuse.std(ddof=1) / math.sqrt(reps), carved.std(ddof=1) / math.sqrt(reps)
    assert reuse.mean() < 1 - alpha - 8 * se_reuse, (reuse.mean(), se_reuse)
    assert abs(carved.mean() - np.mean(expected)) < 4 * se_carved + 2e-3, (carved.mean(), se_carved)


# ---------------------------------------------------------------------------------------------
# through derma run


def _dataset(config) -> Dataset:
    """Three classes; every image carries the logits an honest model gives it (columns z_<code>):
    about 70% accurate. Single-image groups in val and test, lesions of two images in train."""
    rng = np.random.default_rng(5)
    splits = {}
    for name, n in (("train", 40), ("val", 400), ("test", 2000)):
        y = rng.integers(0, K, n)
        z = 1.5 * np.eye(K)[y] + rng.normal(0, 1, (n, K))
        ids = [f"{name}_{i:05d}" for i in range(n)]
        frame = pd.DataFrame({"id": ids, "label": [THREE.codes[i] for i in y],
                              "group_id": [f"L{name}{i // 2:05d}" for i in range(n)] if name == "train" else ids,
                              "image_path": "x.jpg", **{f"z_{c}": z[:, j] for j, c in enumerate(THREE.codes)}})
        splits[name] = Split(name, frame, ".", label_set=THREE)
    return Dataset("calib", "digest-calib", splits, descriptor=tiny_descriptor(THREE, "calib"), synthetic=True)


class Overfitter:
    """A backend that selects on val with enough capacity to fit it: on the images of the val it
    was given its probabilities are sharp and right, elsewhere they are the honest ones."""

    name = "overfitter"
    seen: dict[str, set] = {}

    def __init__(self, config):
        self.memory: dict[str, int] = {}

    def fit(self, train, val, ctx):
        Overfitter.seen["fit_val"] = set(val.ids)
        self.memory = dict(zip(val.ids, val.y))

    def predict(self, split, ctx):
        z = split.frame[[f"z_{c}" for c in THREE.codes]].to_numpy()
        p = _softmax(z)
        for i, image in enumerate(split.ids):
            if image in self.memory:
                p[i] = np.full(K, 0.01)
                p[i, self.memory[image]] = 1 - 0.01 * (K - 1)
        Overfitter.seen.setdefault("predicted", set()).update(split.ids)
        return Predictions(split.ids, split.label_set.decode(p.argmax(axis=1)), p, label_set=split.label_set)


class ZeroShot(Overfitter):
    name = "zeroshot_like"
    selects_on_val = False

    def fit(self, train, val, ctx):
        Overfitter.seen["fit_val"] = set(val.ids)  # remembers nothing


class _Plugin:
    @hookimpl
    def register_classifiers(self, register):
        register("overfitter", Overfitter)
        register("zeroshot_like", ZeroShot)

    @hookimpl
    def register_datasets(self, register):
        register("calib", _dataset)


@pytest.fixture
def calib_plugin():
    plugin = _Plugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-calibration-split")
    Overfitter.seen = {}
    yield
    plugins.pm.unregister(plugin)


def _run(plugin, *overrides):
    config = resolve_config(plugin, overrides=["data.source=calib", "quiet=true", "evaluation.bootstrap=0",
                                               "tracking.log_model=false", *overrides])
    return runner.run(config)


def _sd(alpha, n_test, n_cal):
    """sd of a run's test coverage: binomial on the test images plus the calibrated quantile's spread."""
    return math.sqrt(alpha * (1 - alpha) * (1 / n_test + 1 / n_cal))


def test_a_run_calibrates_on_images_its_selection_never_saw(mlflow_store, calib_plugin):
    result = _run("overfitter")
    client = mlflow.MlflowClient(mlflow_store)
    params, m = client.get_run(result.run_id).data.params, result.metrics
    n_cal = int(params["conformal_calibration_images"])
    # coverage within sampling error of the target: marginal, and per class for the classwise sets
    sd = _sd(0.1, 2000, n_cal)
    for method in ("lac", "aps"):
        assert abs(m[f"test_conformal_{method}_coverage"] - 0.9) < 4 * sd + 1 / (n_cal + 1), method
    assert m["test_conformal_lac_coverage_ci_low"] < m["test_conformal_lac_coverage"] < m["test_conformal_lac_coverage_ci_high"]
    listing = tracking.load_run_table(result.run_id, ARTIFACT, uri=mlflow_store)
    calibrated = listing[listing["role"] == "calibration"]
    for code in THREE.codes:
        n_c = int((calibrated["label"] == code).sum())
        assert abs(m[f"test_conformal_lac_classwise_coverage_{code}"] - 0.9) < 4 * _sd(0.1, 600, n_c) + 1 / (n_c + 1)
    assert float(params["calibration_temperature"]) > 0.5  # fitted on honest probabilities, not on memorised ones
    # what was used for what: logged, and disjoint
    assert params["calibration_source"] == "carved"
    n_sel = int(params["selection_images"])
    assert int(params["calibration_images"]) == n_cal and n_cal + n_sel == 400 and abs(n_cal - 200) < 20
    assert int(params["calibration_groups"]) == n_cal  # single-image groups here
    cal_ids = set(calibrated["id"])
    assert len(cal_ids) == n_cal and not cal_ids & Overfitter.seen["fit_val"]
    assert set(listing.loc[listing["role"] == "selection", "id"]) == Overfitter.seen["fit_val"]
    reference = tracking.load_run_table(result.run_id, "predictions_val.csv", uri=mlflow_store)
    assert set(reference["id"]) == cal_ids  # the calibration predictions are of those images only


def test_calibrating_on_the_selection_images_under_covers(mlflow_store, calib_plugin):
    """source: val, the behaviour before the calibration split: the thresholds are fitted on the
    images the backend overfitted, and the sets cover far less than 90% of the test images."""
    result = _run("overfitter", "evaluation.calibration_split.source=val")
    params = mlflow.MlflowClient(mlflow_store).get_run(result.run_id).data.params
    assert params["calibration_source"] == "val_reused" and params["calibration_images"] == "400"
    assert result.metrics["test_conformal_lac_coverage"] < 0.9 - 4 * _sd(0.1, 2000, 400)
    assert result.metrics["test_conformal_lac_coverage_ci_high"] < 0.9


def test_a_backend_that_does_not_select_calibrates_on_all_of_val(mlflow_store, calib_plugin):
    result = _run("zeroshot_like")
    params = mlflow.MlflowClient(mlflow_store).get_run(result.run_id).data.params
    assert params["calibration_source"] == "val_unselected" and params["calibration_images"] == "400"
    assert len(Overfitter.seen["fit_val"]) == 400


def test_tuning_trials_never_see_the_calibration_images(mlflow_store, calib_plugin):
    """A trial (evaluation.split=val) fits and is scored on val's selection part; the calibration
    images are neither given to fit nor predicted, also for a backend that does not select by
    itself (the study sets source: carve)."""
    from derma_core.tuning.study import best_config, trial_config

    base = resolve_config("zeroshot_like", overrides=["data.source=calib", "quiet=true", "evaluation.bootstrap=0",
                                                      "tracking.log_model=false"])
    config = trial_config({"base_config": base}, {}, experiment="calib-study", run_name="trial 0",
                          tracking_uri=mlflow_store, log_models=False, quiet=True)
    assert config["evaluation"]["calibration_split"]["source"] == "carve"
    result = runner.run(config)
    carved = calibration_split(_dataset(config)["val"], config)
    assert Overfitter.seen["fit_val"] == set(carved.selection.ids)
    assert not Overfitter.seen["predicted"] & set(carved.calibration.ids)
    scored = tracking.load_run_table(result.run_id, "predictions_val.csv", uri=mlflow_store)
    assert set(scored["id"]) == set(carved.selection.ids)
    assert "val_conformal_lac_coverage" not in result.metrics

    from optuna.trial import TrialState

    study = SimpleNamespace(get_trials=lambda deepcopy=False: [SimpleNamespace(state=TrialState.COMPLETE)],
                            best_trial=SimpleNamespace(user_attrs={}))
    final = best_config(study, {"base_config": base})
    assert final["evaluation"]["calibration_split"]["source"] == "carve"  # the final run calibrates on the same unseen images
    assert calibration_split(_dataset(final)["val"], final).calibration.ids == carved.calibration.ids


def test_a_calibration_split_too_small_for_alpha_says_so(mlflow_store, tiny_source, capsys):
    config = resolve_config("prior", overrides=["data.source=tiny", "quiet=true", "evaluation.bootstrap=0",
                                                "evaluation.calibration_split.source=carve",
                                                "evaluation.conformal.alpha=0.02"])
    result = runner.run(config)  # tiny's val: 28 images, 14 of them calibrate; alpha 0.02 needs 49
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "fewer than the 49 that conformal sets at alpha = 0.02" in line]
    assert len(lines) == 1 and lines[0].startswith("derma: warning: the calibration split has ")
    assert "test_conformal_lac_qhat" not in result.metrics  # no meaningless threshold
    assert result.metrics["test_conformal_lac_coverage"] == 1.0  # every set holds every class


def test_the_tiny_dataset_runs_with_the_defaults(mlflow_store, tiny_source):
    """make_tiny_dataset's val (28 images, lesions of one or two) carves, and the classwise
    methods report the classes they cannot calibrate rather than a threshold."""
    result = runner.run(resolve_config("prior", overrides=["data.source=tiny", "quiet=true", "evaluation.bootstrap=0",
                                                           "evaluation.calibration_split.source=carve"]))
    table = tracking.load_run_table(result.run_id, "tables/test_conformal_per_class.csv", uri=mlflow_store)
    classwise = table[table["method"] == "lac_classwise"]
    assert classwise["note"].str.contains("too few calibration images").all()
    assert pd.to_numeric(classwise["qhat"], errors="coerce").isna().all()
