"""What ran is what MLflow shows: curated params from the resolved config, run names.

The runner asks a classifier's optional ``resolve(config, dataset, ctx)`` what every ``auto``
resolved to before it logs anything; the curated params come from that resolved config, the raw
config stays in ``config.yaml`` and the resolved one is ``resolved_config.yaml``.
"""

from __future__ import annotations

import re

import mlflow
import pytest
import yaml

from derma_core import hookimpl, plugins, runner, tracking
from derma_core.config import resolve_config
from derma_core.evaluation.records import RunRecord, key_params, runs_frame
from derma_core.interfaces import Predictions
from derma_core.testing import make_context, make_tiny_dataset

NAME = re.compile(r"^(?P<head>[A-Za-z0-9._-]+)-(?P<day>\d{8})-(?P<time>\d{4})-(?P<token>[0-9a-f]{4})$")


class AutoPrecision:
    """Resolves ``precision: auto`` from the machine (here: an env var standing in for the
    hardware), as the GPU backends do; two identical configs can run differently."""

    name = "auto_precision"

    def __init__(self, config):
        self.config = config

    def resolve(self, config, dataset, ctx):
        import os

        out = {"model.name": "auto-precision-net"}
        if config.get("precision") == "auto":
            out["precision"] = "bf16" if os.environ.get("FAKE_NATIVE_BF16") else "fp32"
        return out

    def fit(self, train, val, ctx):
        pass

    def predict(self, split, ctx):
        return Predictions(ids=split.ids, labels=["nv"] * len(split), label_set=split.label_set)


class LeavesAuto(AutoPrecision):
    name = "leaves_auto"

    def resolve(self, config, dataset, ctx):
        return {"precision": "auto"}


class Plugin:
    @hookimpl
    def register_classifiers(self, register):
        register("auto_precision", AutoPrecision)
        register("leaves_auto", LeavesAuto)


@pytest.fixture
def toy_plugins():
    plugin = Plugin()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-run-params")
    yield
    plugins.pm.unregister(plugin)


def _config(plugin: str, **extra) -> dict:
    config = resolve_config("prior", overrides=["data.source=tiny", "quiet=true", "evaluation.bootstrap=0",
                                               "evaluation.evaluators=[classification]"])
    config.update(plugin=plugin, **extra)
    return config


def _runs(uri: str, experiment: str = "tiny"):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_runs_differing_only_in_a_resolved_auto_differ_in_the_compare_view(mlflow_store, tiny_source, toy_plugins,
                                                                         monkeypatch):
    config = _config("auto_precision", precision="auto")
    monkeypatch.delenv("FAKE_NATIVE_BF16", raising=False)
    a = runner.run(config)
    monkeypatch.setenv("FAKE_NATIVE_BF16", "1")
    b = runner.run(config)
    client, runs = _runs(mlflow_store)
    params = {r.info.run_id: r.data.params for r in runs}
    assert params[a.run_id]["precision"] == "fp32" and params[b.run_id]["precision"] == "bf16"
    assert all(p["device"] == "cpu" and p["world_size"] == "1" for p in params.values())
    assert params[a.run_id]["model"] == "auto-precision-net"
    frame = runs_frame([RunRecord.from_mlflow(r) for r in runs])
    assert "precision" in key_params(frame)
    # the raw config keeps auto; the resolved one says what ran
    raw = tracking.load_run_config(a.run_id, uri=mlflow_store)
    assert raw["precision"] == "auto"
    for result, want in ((a, "fp32"), (b, "bf16")):
        resolved = yaml.safe_load((result.work_dir / "resolved_config.yaml").read_text())
        assert resolved["precision"] == want and resolved["device"] == "cpu" and resolved["world_size"] == 1
        assert yaml.safe_load((result.work_dir / "config.yaml").read_text())["precision"] == "auto"
        assert "resolved_config.yaml" in {f.path for f in client.list_artifacts(result.run_id)}


def test_prior_params_are_resolved_and_data_size_is_the_prepared_size(mlflow_store, tiny_source):
    # the tiny source's images are 8 px while data.size says 64: the param says what was used
    result = runner.run(_config("prior"))
    _, (run,) = _runs(mlflow_store)
    params = run.data.params
    assert params["image_size"] == "8" and params["model"] == "class-prior" and params["device"] == "cpu"
    assert "auto" not in params.values(), params
    assert result.metrics["test_accuracy"] > 0


def test_a_resolve_that_leaves_auto_is_refused(mlflow_store, tiny_source, toy_plugins):
    with pytest.raises(runner.RunError, match="resolve\\(\\) returned precision: auto"):
        runner.run(_config("leaves_auto", precision="auto"))


def test_every_run_gets_its_own_descriptive_name_despite_the_seeded_rng(mlflow_store, tiny_source, toy_plugins):
    config = _config("auto_precision", precision="fp32")
    a, b = runner.run(config), runner.run(config)
    named = runner.run(_config("prior", tracking={**config["tracking"], "run_name": "mine"}))
    _, runs = _runs(mlflow_store)
    names = {r.info.run_id: r.info.run_name for r in runs}
    assert names[named.run_id] == "mine"  # a user's tracking.run_name wins
    assert names[a.run_id] != names[b.run_id]
    for run_id in (a.run_id, b.run_id):
        match = NAME.match(names[run_id])
        assert match, names[run_id]
        # plugin, then the resolved model (known only after resolve: the run is renamed), then dataset
        assert match["head"] == "auto_precision-auto-precision-net-tiny", names[run_id]


def test_default_run_name():
    name = tracking.default_run_name("llava_zeroshot", "ham10000", "microsoft/llava-med-v1.5-mistral-7b")
    match = NAME.match(name)
    assert match and match["head"] == "llava_zeroshot-llava-med-v1.5-mistral-7b-ham10000", name
    # the plugin's own name is not repeated; odd characters become _
    assert NAME.match(tracking.default_run_name("resnet18", "my data", "resnet18"))["head"] == "resnet18-my_data"
    # renaming keeps the time and the random suffix
    again = tracking.default_run_name("llava_zeroshot", "ham10000", "tiny-random", like=name)
    assert again.endswith(name[-18:]) and again.startswith("llava_zeroshot-tiny-random-ham10000-")
    import random

    suffixes = set()
    for _ in range(3):  # the suffix does not follow Python's seeded RNG (as MLflow's names did)
        random.seed(0)
        suffixes.add(tracking.default_run_name("prior", "x")[-4:])
    assert len(suffixes) > 1


def test_resnet18_resolves_weights_epochs_precision_and_the_prepared_image_size():
    pytest.importorskip("derma_resnet18")
    from derma_resnet18.classifier import ResNet18Classifier

    config = resolve_config("resnet18", values={"data.source": "synthetic", "device": "cpu"})
    assert config["data"]["size"] == 64 and config["model"]["weights"] == "auto"
    dataset = make_tiny_dataset(size=32)  # a 32 px prepared folder
    ctx = make_context(config)
    values = ResNet18Classifier(config).resolve(config, dataset, ctx)
    assert values["train.image_size"] == 32 and values["model.weights"] == "none"
    assert values["train.epochs"] == 8 and values["precision"] in {"fp32", "bf16"}
    real = resolve_config("resnet18", values={"data.source": "ham10000", "device": "cpu", "train.image_size": 48})
    values = ResNet18Classifier(real).resolve(real, dataset, ctx)
    assert values["model.weights"] == "imagenet" and values["train.epochs"] == 20 and values["train.image_size"] == 48
    resolved = runner.resolve_run_config(real, ResNet18Classifier(real), dataset, ctx)
    params = runner.curated_params(resolved)
    assert params["image_size"] == 48 and params["epochs"] == 20 and params["effective_batch_size"] == 32
    assert real["train"]["epochs"] == "auto"  # the raw config is not touched
    assert not [k for k, v in params.items() if v == "auto"]


def _flat_keys(node: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in node.items():
        keys.add(f"{prefix}{key}")
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def test_no_param_repeats_a_resolved_value_under_a_resolved_name(mlflow_store, tiny_source):
    """The curated params already hold what every ``auto`` resolved to (epochs, channels_last,
    ...); a backend logging ``resolved_<name>`` beside them says the same thing twice."""
    pytest.importorskip("derma_resnet18")
    config = resolve_config("resnet18", overrides=[
        "data.source=tiny", "quiet=true", "device=cpu", "evaluation.bootstrap=0",
        "evaluation.evaluators=[classification]", "train.epochs=1", "model.weights=none", "tracking.log_model=false"])
    result = runner.run(config)
    params = mlflow.MlflowClient(mlflow_store).get_run(result.run_id).data.params
    resolved = yaml.safe_load((result.work_dir / "resolved_config.yaml").read_text())
    names = set(runner.CURATED_PARAMS) | {key.rsplit(".", 1)[-1] for key in _flat_keys(resolved)}
    repeated = sorted(k for k in params if k.startswith("resolved_") and k[len("resolved_"):] in names)
    assert not repeated, f"params repeating the resolved config / curated params: {repeated}"
    assert params["epochs"] == "1" and params["channels_last"] in {"True", "False"}
