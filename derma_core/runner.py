"""One ``derma run``: dataset -> fit -> predict -> evaluators -> MLflow."""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__, plugins, tracking
from .config import dump_config, get_dotted, set_dotted
from .evaluation.crossdataset import CrossDataset
from .interfaces import Dataset, EvalInput, EvalReference, Predictions, RunContext, Split
from .reproducibility import resolve_device, seed_everything

#: Param name -> the keys of the RESOLVED config it is read from (the first one set to a value
#: other than null wins). The same names for every plugin, so the MLflow compare view lines runs
#: up. Plugins follow these key names, and report what they resolve from ``auto`` through an
#: optional ``resolve(config, dataset, ctx)`` method (see :func:`resolve_run_config`).
#: ``device``, ``world_size`` and ``train.effective_batch_size`` are filled in by the runner.
CURATED_PARAMS: dict[str, tuple[str, ...]] = {
    "plugin": ("plugin",),
    "seed": ("seed",),
    "data_source": ("data.source",),
    "image_size": ("train.image_size", "model.image_size", "data.size"),
    "eval_split": ("evaluation.split",),
    "model": ("model.arch", "model.name"),
    "weights": ("model.weights",),
    "dropout": ("model.dropout",),
    "epochs": ("train.epochs",),
    "batch_size": ("train.batch_size",),
    "lr": ("train.lr",),
    "weight_decay": ("train.weight_decay",),
    "optimizer": ("train.optimizer",),
    "scheduler": ("train.scheduler",),
    "sampler": ("train.sampler",),
    "label_smoothing": ("train.label_smoothing",),
    "class_weighting": ("class_weighting.mode",),
    "class_weight_cap": ("class_weighting.cap",),
    "prompt": ("prompt",),
    "answer_mode": ("answer_mode",),
    "parser": ("parser",),
    "precision": ("precision", "train.precision"),
    "channels_last": ("train.channels_last",),
    "quantization": ("quantization",),
    "lora_r": ("lora.r",),
    "lora_alpha": ("lora.alpha",),
    "lora_dropout": ("lora.dropout",),
    "device": ("device",),
    "world_size": ("world_size",),
    "effective_batch_size": ("train.effective_batch_size",),
}

_MISSING = object()

#: The run artifact holding the run's label set (``LabelSet.to_dict()``); compare and report read it.
LABEL_SET_ARTIFACT = "label_set.json"

def curated_params(config: dict) -> dict[str, Any]:
    """The curated params of a (resolved) config: per name, the first of its keys that holds a
    value other than null; null when the keys are present but all null; absent when none is."""
    out: dict[str, Any] = {}
    for name, keys in CURATED_PARAMS.items():
        found: Any = _MISSING
        for key in keys:
            value = get_dotted(config, key, _MISSING)
            if value is _MISSING:
                continue
            if value is not None:
                found = value
                break
            if found is _MISSING:
                found = None
        if found is not _MISSING:
            out[name] = found
    return out


def resolve_run_config(config: dict, classifier: Any, dataset: Dataset, ctx: RunContext) -> dict:
    """The config as it runs: ``config`` (unchanged) with every ``auto`` the run resolves
    replaced by its value. The curated MLflow params are read from it; it is saved as
    ``resolved_config.yaml`` next to the raw ``config.yaml``.

    The runner fills in ``device`` (the device in use), ``world_size`` (processes),
    ``data.size`` (the side of the train split's prepared images, when it has a cache) and
    ``train.effective_batch_size`` (``train.batch_size`` x ``train.grad_accum`` x world size,
    when the config has an integer batch size). A classifier may define
    ``resolve(config, dataset, ctx) -> dict[dotted_key, value]``, called once per run after the
    dataset is loaded and before anything is logged, returning the values it resolved
    (``{"model.weights": "none", "train.epochs": 8, "precision": "fp32",
    "train.image_size": 32}``); they win over the runner's and may add keys the schema lacks.
    A value still ``"auto"`` is refused.
    """
    resolved = copy.deepcopy(config)
    resolved["device"] = ctx.device
    resolved["world_size"] = int(ctx.world_size)
    train = dataset.splits.get("train")
    if train is not None and train.cache is not None and getattr(train.cache, "ndim", 0) == 4:
        height, width = int(train.cache.shape[1]), int(train.cache.shape[2])
        set_dotted(resolved, "data.size", height if height == width else f"{height}x{width}")
    hook = getattr(classifier, "resolve", None)
    values = hook(config, dataset, ctx) if callable(hook) else {}
    if values is None:
        values = {}
    name = config.get("plugin")
    if not isinstance(values, dict):
        raise TypeError(f"{name}: resolve() must return a dict of dotted config key -> value, "
                        f"got {type(values).__name__}")
    for key, value in values.items():
        if isinstance(value, str) and value == "auto":
            raise ValueError(f"{name}: resolve() returned {key}: auto; it must return the value auto resolves to")
        set_dotted(resolved, str(key), value)
    if "train.effective_batch_size" not in values:
        batch = get_dotted(resolved, "train.batch_size")
        accum = get_dotted(resolved, "train.grad_accum", 1) or 1
        if isinstance(batch, int) and not isinstance(batch, bool) and isinstance(accum, int):
            set_dotted(resolved, "train.effective_batch_size", batch * accum * int(ctx.world_size))
    return resolved


def _warn_unresolved(params: dict[str, Any], plugin: str) -> None:
    left = sorted(k for k, v in params.items() if isinstance(v, str) and v == "auto")
    if left:
        print(f"derma: warning: {plugin} logs {', '.join(left)} as 'auto'; the plugin should report the "
              "resolved values from resolve(config, dataset, ctx)", file=sys.stderr)


@dataclass
class RunResult:
    run_id: str
    experiment: str
    metrics: dict[str, float]
    predictions: Predictions | None = None
    work_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class RunError(RuntimeError):
    """A run failed; ``run_id`` and ``work_dir`` say where its partial results are."""

    def __init__(self, message: str, run_id: str | None, work_dir: Path | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.work_dir = work_dir


def load_dataset(config: dict) -> Dataset:
    """The dataset ``data.source`` names, through the dataset-source registry."""
    source = plugins.get_dataset_source(config["data"]["source"])
    return source.obj(config)


def check_dataset_splits(dataset: Dataset, reg: plugins.Registration, eval_split: str) -> None:
    """Before any MLflow run exists: every split the run needs (the evaluated one; train when the
    backend trains; val when it selects on val) has rows, or one line saying how many rows and
    groups there are and what is missing (:mod:`derma_core.data.feasibility`)."""
    from .data.feasibility import check_run_splits, run_needs

    check_run_splits(dataset, run_needs(reg.obj, eval_split), reg.name)


def _distributed() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(device: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _plugin_version(reg: plugins.Registration) -> str | None:
    for info in plugins.plugin_infos():
        if info.name == reg.plugin:
            return info.version
    return None


def evaluate(split: Split, predictions: Predictions, config: dict, dataset: Dataset,
             reference: EvalReference | None = None) -> tuple[dict[str, float], list]:
    """Run every selected evaluator on one :class:`~derma_core.interfaces.EvalInput`; returns
    unprefixed metrics and the EvalResults.

    ``reference`` (the calibration split and its predictions) is handed only to evaluators
    registered with ``needs_reference=True`` (calibration, conformal sets)."""
    selected = get_dotted(config, "evaluation.evaluators")
    regs = plugins.evaluators()
    if selected is not None:
        unknown = [name for name in selected if name not in regs]
        if unknown:
            raise plugins.UnknownComponentError(
                f"evaluation.evaluators: unknown {unknown}; installed: {', '.join(sorted(regs))}")
        regs = {name: regs[name] for name in selected}
    metrics: dict[str, float] = {}
    results = []
    for name, reg in regs.items():
        needs = bool(reg.options.get("needs_reference", False))
        inputs = EvalInput(split, predictions, config, dataset=dataset.descriptor,
                           reference=reference if needs else None)
        result = reg.obj(inputs)
        metrics.update(result.metrics)
        results.append((name, result))
    return metrics, results


def log_evaluation(tracker: tracking.Tracker, split: Split, predictions: Predictions,
                   metrics: dict[str, float], results: list, prefix: str, step: int = 0) -> dict[str, float]:
    """Log prefixed metrics, tables, figures and the predictions table of an evaluated split."""
    prefixed = {f"{prefix}_{k}": v for k, v in metrics.items()}
    tracker.log_metrics(prefixed, step=step)
    for _, result in results:
        for tname, table in result.tables.items():
            tracker.log_table(table, f"tables/{prefix}_{tname}.csv")
        for fname, fig in result.figures.items():
            tracker.log_figure(fig, f"figures/{prefix}_{fname}.png")
        if getattr(result, "params", None):
            tracker.log_params(result.params)
    frame = predictions.to_frame(split)
    tracker.log_table(frame, "predictions.csv" if prefix == "test" else f"predictions_{prefix}.csv")
    return prefixed


def run(config: dict, **kwargs: Any) -> RunResult:
    """Run the backend ``config["plugin"]`` end to end and record it in MLflow (keywords as
    :func:`_run`). Under ``torchrun`` the process group it creates is destroyed at the end,
    whether the run succeeds or fails; a group the caller created is left to the caller."""
    if _distributed()[1] <= 1:
        return _run(config, **kwargs)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    try:
        return _run(config, **kwargs)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _run(
    config: dict,
    *,
    resume_run_id: str | None = None,
    reporter: Callable[[int, dict], None] | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the backend ``config["plugin"]`` end to end and record it in MLflow.

    Raises :class:`RunError` (with the run id and the folder holding partial results) when
    the backend fails; the MLflow run is then marked FAILED with the error attached.
    """
    plugin_name = config["plugin"]
    reg = plugins.get_classifier(plugin_name)
    rank, world = _distributed()
    device = resolve_device(config.get("device", "auto"))
    if world > 1:
        _init_distributed(device)
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    seed_everything(int(config["seed"]), bool(config.get("deterministic", True)))
    dataset = load_dataset(config)
    eval_split_name = get_dotted(config, "evaluation.split", "test")
    check_dataset_splits(dataset, reg, eval_split_name)
    # other datasets to evaluate on (--eval-dataset): loaded, label-mapped and leakage-checked before any work
    cross = CrossDataset.load(config, dataset, log=None if rank == 0 else (lambda line: None))
    experiment = get_dotted(config, "tracking.experiment") or dataset.name
    run_name = get_dotted(config, "tracking.run_name")
    # derma names every run itself (MLflow's drawn names repeat: derma has seeded its RNG)
    auto_name = not run_name and resume_run_id is None
    if auto_name:
        run_name = tracking.default_run_name(plugin_name, dataset.name)
    work_root = Path(get_dotted(config, "output.work_dir", "mlruns/work")).resolve()

    tags = {
        tracking.TAG_PLUGIN: plugin_name,
        tracking.TAG_PLUGIN_VERSION: _plugin_version(reg),
        tracking.TAG_DATASET: dataset.name,
        tracking.TAG_DATASET_DIGEST: dataset.digest,
        tracking.TAG_LABEL_SET: ",".join(dataset.label_set.codes),
        tracking.TAG_DATASET_LICENCE: dataset.descriptor.licence or None,
        tracking.TAG_DATASET_CITATION: dataset.descriptor.citation or None,
        tracking.TAG_SYNTHETIC: str(dataset.synthetic).lower(),
        tracking.TAG_VERSION: __version__,
        tracking.TAG_GIT_SHA: tracking.git_sha(),
        **(extra_tags or {}),
    }

    if rank != 0:
        run_id = _broadcast(None)
        return _run_body(config, reg, dataset, tracking.NullTracker(), run_id, device, work_root,
                         eval_split_name, resume_run_id is not None, reporter, rank, world, experiment, cross=cross)

    work_dir: Path | None = None
    run_id: str | None = None
    try:
        with tracking.start_run(experiment, run_name=run_name, tags=tags,
                                uri=get_dotted(config, "tracking.uri"), resume_run_id=resume_run_id,
                                parent_run_id=parent_run_id) as tracker:
            run_id = tracker.run_id
            work_dir = work_root / run_id
            if world > 1:
                _broadcast(run_id)
            if on_started is not None:
                on_started(run_id)
            return _run_body(config, reg, dataset, tracker, run_id, device, work_root, eval_split_name,
                             resume_run_id is not None, reporter, rank, world, experiment,
                             rename=run_name if auto_name else None, cross=cross)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the run was ended KILLED; say where it is
        exc.run_id, exc.work_dir = run_id, work_dir  # type: ignore[attr-defined]
        raise
    except plugins.UnknownComponentError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "TrialPruned":
            raise
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise RunError(message, run_id, work_dir) from exc


def _run_body(config, reg, dataset: Dataset, tracker: tracking.Tracker, run_id: str, device: str,
              work_root: Path, eval_split_name: str, resume: bool, reporter, rank: int, world: int,
              experiment: str, rename: str | None = None, cross: CrossDataset | None = None) -> RunResult:
    from .atomic import write_text as atomic_write_text

    work_dir = work_root / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(config=config, tracker=tracker, device=device, seed=int(config["seed"]),
                     work_dir=work_dir, quiet=bool(config.get("quiet")), resume=resume,
                     rank=rank, world_size=world, reporter=reporter, dataset=dataset.descriptor)
    classifier = reg.obj(config)
    # the values every `auto` resolves to, before anything is logged (see resolve_run_config)
    resolved = resolve_run_config(config, classifier, dataset, ctx)
    if rank == 0:
        atomic_write_text(work_dir / "config.yaml", dump_config(config))
        atomic_write_text(work_dir / "resolved_config.yaml", dump_config(resolved))
        params = curated_params(resolved)
        _warn_unresolved(params, str(config["plugin"]))
        tracker.log_params(params)
        tracker.log_text(dump_config(config), "config.yaml")
        tracker.log_text(dump_config(resolved), "resolved_config.yaml")
        if rename:
            tracker.set_run_name(tracking.default_run_name(str(config["plugin"]), dataset.name,
                                                           _model_id(resolved), like=rename))
        tracker.log_dict({"name": dataset.name, "digest": dataset.digest, "synthetic": dataset.synthetic,
                          "dir": str(dataset.dir) if dataset.dir else None, "facts": dataset.descriptor.facts(),
                          "manifest": dataset.manifest}, "dataset.json")
        tracker.log_dict(dataset.label_set.to_dict(), LABEL_SET_ARTIFACT)
    from .data.calibration_split import ARTIFACT as CALIBRATION_SPLIT_ARTIFACT, calibration_split

    # val in two: `val` (selection: what fit and a val evaluation see) and the calibration split (images no
    # training or selection saw; calibration and conformal sets are fitted on them)
    cal_split = calibration_split(dataset["val"], config, classifier)
    train, val = dataset["train"], cal_split.selection
    if rank == 0:
        for split in (train, val) + ((cal_split.calibration,) if cal_split.mode == "carved" else ()):
            _log_split(tracker, dataset, split)
        tracker.log_params(cal_split.params())
        tracker.log_table(cal_split.table(), CALIBRATION_SPLIT_ARTIFACT)
        if cal_split.warning:
            print(f"derma: warning: {cal_split.warning}", file=sys.stderr)
    classifier.fit(train, val, ctx)
    eval_split = val if eval_split_name == "val" else dataset[eval_split_name]
    predictions = classifier.predict(eval_split, ctx)
    _check_label_set(predictions, dataset, str(config["plugin"]))
    reference = None
    from .evaluation.evaluators import calibration_warnings, wants_reference

    need_val = predictions.probabilities is not None and wants_reference(config, eval_split_name)
    if world > 1:  # every rank must take part in predict(val) or none
        need_val = _broadcast(need_val)
    if need_val:
        # calibration and conformal sets are fitted on the calibration split, never on the evaluated split
        cal = cal_split.calibration
        cal_predictions = classifier.predict(cal, ctx)
        if rank == 0:
            _check_label_set(cal_predictions, dataset, str(config["plugin"]))
            reference = EvalReference(cal, cal_predictions.aligned_to(cal))
            for line in calibration_warnings(config, cal):
                print(f"derma: warning: {line}", file=sys.stderr)
    cross_predictions = cross.predict(classifier, ctx) if cross is not None else {}  # every rank takes part
    if rank != 0:
        return RunResult(run_id, experiment, {}, predictions, work_dir)
    predictions = predictions.aligned_to(eval_split)
    (work_dir / f"predictions_{eval_split_name}.csv").write_text(tracking.table_csv(predictions.to_frame(eval_split)),
                                                                  encoding="utf-8")
    if eval_split_name == "test":
        _log_split(tracker, dataset, eval_split)
    metrics, results = evaluate(eval_split, predictions, config, dataset, reference)
    if reference is not None:
        tracker.log_table(reference.predictions.to_frame(reference.split), "predictions_val.csv")
    if predictions.info:
        tracker.log_dict(_jsonable(predictions.info), f"{eval_split_name}_prediction_info.json")
    step = ctx.final_step(f"{eval_split_name}_{k}" for k in metrics)
    prefixed = log_evaluation(tracker, eval_split, predictions, metrics, results, eval_split_name, step)
    if cross is not None:  # the other datasets: eval_<name>_* metrics (derma_core/evaluation/crossdataset.py)
        prefixed.update(cross.evaluate(cross_predictions, tracker, step))
    if get_dotted(config, "tracking.log_model", True) and hasattr(classifier, "log_model"):
        classifier.log_model(ctx)
    return RunResult(run_id, experiment, prefixed, predictions, work_dir)


def _check_label_set(predictions: Predictions, dataset: Dataset, plugin: str) -> None:
    """A backend must predict over the run's dataset's classes."""
    if not predictions.label_set.same_classes(dataset.label_set):
        raise ValueError(f"{plugin} predicted over the classes {', '.join(predictions.label_set.codes)} but dataset "
                         f"{dataset.name} has {', '.join(dataset.label_set.codes)}; build Predictions with "
                         "label_set=split.label_set")


def _model_id(resolved: dict) -> str | None:
    """The model a resolved config runs (its ``model`` curated param), for the run name."""
    value = curated_params(resolved).get("model")
    return None if value is None else str(value)


def split_digest(dataset: Dataset, split: Split) -> str:
    """A short digest of one split's manifest (ids, labels, groups) within its dataset."""
    import hashlib

    h = hashlib.sha256(dataset.digest.encode())
    cols = split.frame[["id", "label", "group_id"]].astype(str)
    h.update(pd_util_hash(cols))
    return h.hexdigest()[:16]


def pd_util_hash(frame) -> bytes:
    import pandas as pd

    return pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()


def _log_split(tracker: tracking.Tracker, dataset: Dataset, split: Split) -> None:
    """Record a split's manifest (not its images) through mlflow.data, one dataset per split."""
    tracker.log_input(split.frame[["id", "label", "group_id", "image_path"]], name=f"{dataset.name}/{split.name}",
                      context=split.name, digest=split_digest(dataset, split),
                      source=str(dataset.dir) if dataset.dir else None)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
