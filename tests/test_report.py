"""`derma report`: real runs (with metadata; two on HAM10000's classes, one on three other
classes) into a temporary MLflow store, the report read back from it, and the HTML rendered in
headless Chromium (skipped when it is absent)."""

import re
from html import unescape
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from derma_core import hookimpl, plugins
from derma_core.cli import cli
from derma_core.interfaces import Predictions
from derma_core.labels import LabelSet
from derma_core.testing import chromium, chromium_path, make_tiny_dataset

#: Not HAM10000's classes: three codes (one shared with HAM10000, bcc) and a malignancy grouping.
THREE_CLASSES = LabelSet(codes=("ack", "bcc", "nev"), names=("Actinic keratosis", "Basal cell carcinoma", "Nevus"),
                         groupings={"malignancy": {"ack": "malignant", "bcc": "malignant", "nev": "benign"}},
                         positive={"malignancy": "malignant"})

CHROMIUM = chromium_path()


def _tiny_with_metadata(config, label_set=None):
    ds = make_tiny_dataset(n_train=70, n_val=56, n_test=70, learnable=True, label_set=label_set)
    for split in ds.splits.values():
        n = len(split)
        split.frame["sex"] = np.where(np.arange(n) % 3 == 0, "female", "male")
        split.frame["age"] = [["25.0", "50.0", "70.0", ""][i % 4] for i in range(n)]
        split.frame["localization"] = np.where(np.arange(n) % 5 == 0, "face", "back")
    return ds


class Centroid:
    """Nearest class-mean colour, softmax of negative distances: a cheap model with real probabilities."""

    name = "centroid"

    def __init__(self, config):
        self.means = None

    def _x(self, split):
        return split.cache.reshape(len(split), -1, 3).mean(axis=1) / 255.0

    def fit(self, train, val, ctx):
        x = self._x(train)
        self.means = np.stack([x[train.y == c].mean(axis=0) for c in range(len(train.label_set))])

    def predict(self, split, ctx):
        d = ((self._x(split)[:, None, :] - self.means[None]) ** 2).sum(-1)
        z = -d * 40
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        codes = split.label_set.codes
        return Predictions(split.ids, [codes[i] for i in p.argmax(1)], p, label_set=split.label_set)


class ReportPlugin:
    @hookimpl
    def register_datasets(self, register):
        register("tiny_meta", _tiny_with_metadata)
        register("tiny3_meta", lambda config: _tiny_with_metadata(config, THREE_CLASSES))

    @hookimpl
    def register_classifiers(self, register):
        register("centroid", Centroid)


@pytest.fixture
def report_plugin():
    plugin = ReportPlugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-report-plugin")
    yield
    plugins.pm.unregister(plugin)


@pytest.fixture
def three_runs(mlflow_store, report_plugin):
    ids = []
    for plugin, dataset in (("prior", "tiny_meta"), ("centroid", "tiny_meta"), ("centroid", "tiny3_meta")):
        result = CliRunner().invoke(cli, ["run", "--plugin", plugin, "--dataset", dataset, "--tracking-uri",
                                          mlflow_store, "--quiet", "-o", "evaluation.bootstrap=50",
                                          "-o", "evaluation.subgroups.min_count=10", "-o", "tracking.log_model=false",
                                          "-o", "tracking.experiment=tiny"])
        assert result.exit_code == 0, result.output
        ids.append(re.search(r"MLflow run id: (\w+)", result.output).group(1))
    return mlflow_store, ids


def test_runs_log_everything_and_the_report_renders_offline(three_runs, tmp_path):
    uri, (prior_id, centroid_id, three_id) = three_runs
    run = mlflow.MlflowClient(uri).get_run(centroid_id)
    m, params = run.data.metrics, run.data.params
    for key in ("test_subgroup_sex_male_macro_f1", "test_subgroup_sex_male_macro_f1_ci_low",
                "test_subgroup_sex_female_accuracy", "test_subgroup_sex_female_balanced_accuracy",
                "test_subgroup_age_gap_macro_f1", "test_subgroup_age_45_59_n", "test_calibrated_ece",
                "test_malignancy_sensitivity", "test_malignancy_sensitivity_ci_low", "test_malignancy_auroc",
                "test_mel_sensitivity_at_spec80", "test_subgroup_sex_male_malignancy_sensitivity",
                "test_classwise_ece", "test_calibrated_brier", "test_conformal_lac_coverage",
                "test_conformal_aps_coverage", "test_conformal_lac_coverage_sex_male", "test_selective_aurc",
                "test_selective_accuracy_refer10"):
        assert key in m, key
    # every third image is the common class, and so is every female one: a single-class group, where
    # macro-F1 means nothing (not logged; the report flags the group)
    assert "test_subgroup_sex_female_macro_f1" not in m
    assert "test_subgroup_sex_gap_macro_f1" not in m  # one group left to compare: no gap
    assert float(params["calibration_temperature"]) > 0 and params["conformal_alpha"] == "0.1"
    assert m["test_accuracy"] > 0.5  # the centroid model learns the colours
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(centroid_id, "tables")}
    assert {"tables/test_subgroups.csv", "tables/test_subgroup_gaps.csv", "tables/test_conformal.csv"} <= artifacts
    assert "predictions_val.csv" in {a.path for a in mlflow.MlflowClient(uri).list_artifacts(centroid_id)}
    three = mlflow.MlflowClient(uri).get_run(three_id).data.metrics
    assert "test_f1_ack" in three and "test_malignancy_sensitivity" in three
    assert not any(k.endswith("_sensitivity_at_spec80") and not k.startswith("test_malignancy") for k in three)

    # -- the report, read back from the store (one test: the two runs cost seconds each)
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(cli, ["report", "--experiment", "tiny", "--tracking-uri", uri,
                                      "--baseline", prior_id, "--out", str(out), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    run = mlflow.MlflowClient(uri).get_run(centroid_id)
    # the table shows the logged numbers, not recomputed ones
    acc = run.data.metrics["test_accuracy"]
    low, high = run.data.metrics["test_accuracy_ci_low"], run.data.metrics["test_accuracy_ci_high"]
    assert f"{acc:.3f} [{low:.3f}, {high:.3f}]" in text and f"{acc:.3f} [{low:.3f}, {high:.3f}]" in md
    assert run.data.params["calibration_temperature"] in text
    assert run.data.tags["derma.dataset_digest"] in text
    assert (out.parent / "report_files").is_dir() and "](report_files/" in md
    assert "vs" in md and "McNemar" in md  # the paired test against the baseline
    assert "| sex | female |" in md and "one class: read accuracy" in md and "- (one class)" in md
    # results first, then the configuration differences (only keys that differ), then the rest
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections[:2] == ["Results", "Configuration differences"], sections
    assert "calibration split" in md and "fitted on the val split" not in md
    # each run with its own classes: one per-class table per label set, no paired test across them
    assert "### akiec, bcc, bkl, df, mel, nv, vasc (7 classes)" in md
    assert "### ack, bcc, nev (3 classes)" in md
    assert "paired tests need runs over the same classes" in md
    f1_ack = mlflow.MlflowClient(uri).get_run(three_id).data.metrics["test_f1_ack"]
    assert f"| ack | Actinic keratosis |" in md and f"{f1_ack:.3f}" in md

    if CHROMIUM is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium); the static checks above passed")
    dom = chromium(out.resolve().as_uri(), window=(1400, 900))
    assert "<table" in dom
    for cls in ("results", "per-class", "paired", "calibration", "selective", "conformal", "subgroups", "gaps"):
        assert f'<table class="{cls}"' in dom, cls
    for name in ("confusion_matrix_normalized", "per_class", "reliability_diagram", "calibrated_reliability_diagram",
                 "risk_coverage", "subgroups"):
        assert f'class="fig-{name}"' in dom, name
    assert len(re.findall(r'src="data:image/png;base64,', dom)) >= 8  # both runs' figures embedded
    # the first table is the results, and the page fits a 1,400 px window (a wide table scrolls in its box)
    assert first_table_headers(dom) == list(RESULTS_HEADERS), first_table_headers(dom)
    width, viewport, results_width, results_box = page_width(out, tmp_path, 1400)
    assert 0 < width <= 1400 and viewport <= 1400, (width, viewport)
    assert 0 < results_width <= results_box, (results_width, results_box)  # the results need no scrolling


#: The results table's columns, in order.
RESULTS_HEADERS = ("run", "backend", "model", "dataset", "test images", "test groups", "accuracy [CI]",
                   "balanced accuracy [CI]", "macro-F1 [CI]", "AUROC", "invalid rate")


def first_table_headers(dom: str) -> list[str]:
    table = re.search(r"<table\b.*?</table>", dom, flags=re.S).group(0)
    return [unescape(re.sub(r"<[^>]+>", "", h)).strip() for h in re.findall(r"<th\b[^>]*>(.*?)</th>", table, flags=re.S)]


def page_width(report: Path, tmp_path: Path, width: int) -> tuple[int, int, int, int]:
    """(document.documentElement.scrollWidth, window.innerWidth, the results table's width, the
    width of the box it scrolls in) of the report in a ``width`` px window. The report forbids
    scripts (its Content-Security-Policy), so a copy without that meta tag gets one script that
    writes the numbers into the DOM; the layout is the report's."""
    text = report.read_text(encoding="utf-8")
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text, count=1)
    script = ("<script>function derma_measure(){var e=document.documentElement;"
              "e.setAttribute('data-scroll-width',e.scrollWidth);e.setAttribute('data-inner-width',innerWidth);"
              "var t=document.querySelector('table.results');if(t){e.setAttribute('data-results-width',t.scrollWidth);"
              "e.setAttribute('data-results-box',t.parentElement.clientWidth)}}"
              "derma_measure();addEventListener('load',derma_measure)</script>")
    copy = tmp_path / "report_measured.html"
    copy.write_text(probe.replace("</body>", script + "</body>"), encoding="utf-8")
    dom = chromium(copy.resolve().as_uri(), window=(width, 900), virtual_time_budget_ms=5000)
    found = [re.search(rf'data-{name}="(\d+)"', dom) for name in ("scroll-width", "inner-width", "results-width",
                                                                     "results-box")]
    assert all(found), dom[:500]
    return tuple(int(f.group(1)) for f in found)


def test_report_errors_are_one_line(mlflow_store):
    result = CliRunner().invoke(cli, ["report", "--experiment", "nope", "--tracking-uri", mlflow_store,
                                      "--out", "r.html"])
    assert result.exit_code != 0 and "nope" in result.output
    result = CliRunner().invoke(cli, ["report", "--out", "r.html", "--tracking-uri", mlflow_store])
    assert result.exit_code == 2 and "--experiment" in result.output


def test_confusion_matrix_title_says_valid_answers_only_for_free_text_backends():
    """The CNN / probe / prior cannot give an invalid answer: their confusion matrix holds every
    image, and its title says so; a free-text VLM's says it shows the valid answers only."""
    from derma_core.evaluation.evaluators import EVALUATORS
    from derma_core.interfaces import EvalInput

    ds = make_tiny_dataset(n_test=21)
    test = ds["test"]
    codes = test.label_set.codes
    labels = [codes[i] for i in test.y]

    def title(predictions):
        result = EVALUATORS["classification"].evaluator(EvalInput(test, predictions, {"evaluation": {"bootstrap": 0}},
                                                                     dataset=ds.descriptor))
        return result.figures["confusion_matrix_normalized"].axes[0].get_title()

    closed = title(Predictions(test.ids, labels, label_set=test.label_set))
    assert "valid answers" not in closed and "(21 images)" in closed, closed
    free = title(Predictions(test.ids, labels, label_set=test.label_set, raw_text=labels))
    assert "(valid answers only)" in free, free
    some_invalid = [None if i % 7 == 0 else c for i, c in enumerate(labels)]
    free = title(Predictions(test.ids, some_invalid, label_set=test.label_set, raw_text=labels))
    assert "valid answers only: 18 of 21; 3 invalid not shown" in free, free
