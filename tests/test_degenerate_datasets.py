"""Degenerate datasets are refused before any work (derma_core/data/feasibility.py): metadata with
too few rows or lesions to fill val and test stops ``derma prep`` with one line (how many rows and
lesions, what each split got and needs) and nothing written; a run whose dataset has an empty
split it needs stops before an MLflow run is created (the store holds no run afterwards)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derma_core import hookimpl, plugins
from derma_core.data.datasets.ham10000 import DESCRIPTOR as HAM
from derma_core.data.feasibility import (InfeasibleSplitError, check_prep_splits, check_run_splits, run_needs,
                                         seed_min_groups)
from derma_core.data.raw import PrepError
from derma_core.testing import invoke_cli, make_tiny_dataset, one_line

CODES = list(HAM.labels.codes)


def _meta(per_class: dict[str, int], images_per_lesion: int = 1) -> pd.DataFrame:
    rows = []
    for dx, lesions in per_class.items():
        for k in range(lesions):
            for j in range(images_per_lesion):
                rows.append({"group_id": f"HAM_{dx}_{k}", "image_id": f"ISIC_{dx}_{k}_{j}", "dx": dx})
    return pd.DataFrame(rows)


def _refusal(meta, policy="grouped", ratios=(0.7, 0.1, 0.2)) -> str:
    with pytest.raises(PrepError) as info:
        check_prep_splits(meta, policy, ratios, 42, HAM, "meta.csv")
    message = str(info.value)
    assert "\n" not in message and message.startswith("error: meta.csv: ")
    return message


# ---------------------------------------------------------------- the check itself

def test_one_lesion_per_class_cannot_fill_val_and_test():
    message = _refusal(_meta({c: 1 for c in CODES[:5]}, images_per_lesion=2))
    assert ("10 rows in 5 lesions cannot fill the val and test splits: a grouped split at ratios 0.7,0.1,0.2 gives "
            "train 10 rows in 5 lesions, val 0, test 0; each of train, val, test needs at least 1 lesion") in message
    assert "val needs a class with at least 3 lesions and test one with at least 2" in message
    assert message.endswith("(the largest class, akiec, has 1); add data")


def test_two_lesions_per_class_fill_test_but_not_val():
    message = _refusal(_meta({"mel": 2, "nv": 2}))
    assert "cannot fill the val split: " in message and "test 2 rows in 2 lesions" in message
    assert "val needs a class with at least 3 lesions (the largest class, mel, has 2)" in message


def test_three_lesions_of_one_class_fill_every_split():
    check_prep_splits(_meta({"nv": 3, "mel": 1}), "grouped", (0.7, 0.1, 0.2), 42, HAM, "meta.csv")


def test_a_split_without_a_share_need_not_be_filled():
    check_prep_splits(_meta({"nv": 2}), "grouped", (0.8, 0.0, 0.2), 42, HAM, "meta.csv")
    assert "cannot fill the test split" in _refusal(_meta({"nv": 1}), ratios=(0.8, 0.0, 0.2))


def test_seed_split_too_few_lesions_is_one_line_not_scikit_learns_traceback():
    message = _refusal(_meta({"mel": 3, "nv": 1}), policy="seed")
    assert ("4 rows in 4 lesions are too few for the seed split (the original study's): it needs at least "
            f"{seed_min_groups(2)} lesions for 2 classes and at least 2 lesions of every class (nv has fewer)") in message
    assert seed_min_groups(7) == 69  # HAM10000's seven classes: test 14, val 7, train 48


def test_official_split_without_test_rows_is_refused_and_grouped_suggested():
    meta = _meta({"nv": 6, "mel": 6}).assign(split="train")
    message = _refusal(meta, policy="official")
    assert "cannot fill the test split: the official split (its split column) gives train" in message
    assert message.endswith("; add data, or use --split grouped")


def test_datasets_without_grouping_count_images():
    from derma_core.data.datasets.ddi import DESCRIPTOR as DDI

    meta = _meta({DDI.labels.codes[0]: 1})
    with pytest.raises(PrepError, match=r"1 row in 1 image cannot fill the val and test splits"):
        check_prep_splits(meta, "grouped", (0.7, 0.1, 0.2), 0, DDI, "ddi.csv")


# ---------------------------------------------------------------- derma prep

def _raw(folder: Path, per_class: dict[str, int]) -> Path:
    """A HAM10000-layout raw folder with 24x24 JPEGs (above --min-side), one image per lesion."""
    images = folder / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    meta = _meta(per_class).rename(columns={"group_id": "lesion_id"})
    rng = np.random.default_rng(0)
    for image in meta["image_id"]:
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"{image}.jpg")
    meta[["lesion_id", "image_id", "dx"]].assign(dx_type="histo", age="50", sex="male", localization="back").to_csv(
        folder / "HAM10000_metadata.csv", index=False)
    return folder


def test_prep_refuses_too_few_lesions_and_writes_nothing(tmp_path):
    raw = _raw(tmp_path / "raw", {"nv": 2, "mel": 1, "bkl": 1})
    out = tmp_path / "out"
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q")
    assert code == 1, output
    line = one_line(output, "error:", str(raw / "HAM10000_metadata.csv"), "4 rows in 4 lesions",
                    "cannot fill the val split", "val needs a class with at least 3 lesions")
    assert line.startswith("error: ")
    assert not (out / "manifest.json").exists() and not (out / "splits").exists() and not (out / "cache").exists()
    assert "--split grouped" not in output  # the default already: no advice to use it


def test_prep_of_just_enough_lesions_succeeds(tmp_path):
    raw = _raw(tmp_path / "raw", {"nv": 3})
    out = tmp_path / "out"
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q")
    assert code == 0, output
    assert all(len(pd.read_csv(out / "splits" / f"{s}.csv")) == 1 for s in ("train", "val", "test"))


def test_prep_refuses_when_refused_images_empty_a_split(tmp_path):
    """The metadata fills every split, but an image below --min-side is dropped after decoding and
    leaves its split with none: one line naming the split and the remedy, no manifest written."""
    raw = _raw(tmp_path / "raw", {"nv": 3})
    first = sorted((raw / "HAM10000_images_part_1").glob("*.jpg"))[0]
    Image.new("RGB", (4, 4), (120, 80, 60)).save(first)
    out = tmp_path / "out"
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q")
    assert code == 1, output
    line = one_line(output, "error:", "cannot fill the", "after the 1 refused images were dropped",
                    "--min-side")
    assert line.startswith("error: ")
    assert not (out / "manifest.json").exists()
    # relaxing the minimum makes the same folder prepare, reusing what was resized
    code, output = invoke_cli("prep", "--raw", raw, "--out", out, "--size", "8", "--workers", "1", "-q", "--min-side", "4")
    assert code == 0, output
    assert all(len(pd.read_csv(out / "splits" / f"{s}.csv")) == 1 for s in ("train", "val", "test"))


# ---------------------------------------------------------------- derma run

class _Degenerate:
    @hookimpl
    def register_datasets(self, register):
        register("no_test", lambda config: make_tiny_dataset(n_test=0, name="no_test"))
        register("no_train", lambda config: make_tiny_dataset(n_train=0, name="no_train"))


class _ZeroShot:
    """A backend that trains nothing and selects nothing on val (like clip_zeroshot)."""

    selects_on_val = False


@pytest.fixture
def degenerate():
    plugin = _Degenerate()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-degenerate-sources")
    yield
    plugins.pm.unregister(plugin)


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("source, empty", [("no_test", "test"), ("no_train", "train")])
def test_run_on_a_dataset_with_an_empty_needed_split_is_refused_before_mlflow(degenerate, mlflow_store, source,
                                                                               empty):
    code, output = invoke_cli("run", "--plugin", "prior", "--dataset", source, "--tracking-uri", mlflow_store, "-q")
    assert code == 1, output
    one_line(output, "error: dataset", source, f"cannot fill the {empty} split", f"{empty} 0",
             "prior needs train and test, at least 1 lesion each")
    assert _runs(mlflow_store) == [], "no MLflow run may be created"
    assert mlflow.MlflowClient(mlflow_store).get_experiment_by_name(source) is None
    assert not list(Path("mlruns").glob("work/*")), "no work folder either"


def test_run_needs_follow_the_backend():
    from derma_core.prior import PriorClassifier

    assert run_needs(PriorClassifier, "test") == ["train", "test"]
    assert run_needs(_ZeroShot, "test") == ["test"]
    assert run_needs(object, "test") == ["train", "val", "test"]  # a backend that trains and selects on val
    assert run_needs(_ZeroShot, "val") == ["val"]
    check_run_splits(make_tiny_dataset(n_train=0, n_val=0), run_needs(_ZeroShot, "test"), "zs")  # zero-shot: fine
    with pytest.raises(InfeasibleSplitError, match=r"^dataset tiny: 35 rows in \d+ lesions cannot fill the val split"):
        check_run_splits(make_tiny_dataset(n_train=0, n_val=0), run_needs(_ZeroShot, "val"), "zs")
