""":class:`VlmLoraClassifier`: LoRA / QLoRA fine-tuning of a VLM, evaluated like zero-shot.

``fit`` trains a peft LoRA adapter on the language model's linear layers (q, k, v, o, gate, up,
down; the vision encoder is frozen and never wrapped) plus fully trained copies of the family's
``trainable_modules`` (the projector), on answer-only examples built with the codec inference
uses (loss on the answer and the end-of-turn token only). ``quantization: 4bit`` is QLoRA (nf4,
double quantisation, k-bit training preparation). Validation runs every epoch by label scoring
(val macro-F1); the best epoch's adapter is kept, training stops early after ``train.patience``
epochs without improvement (0 or null: never), and a killed run resumes from its last
checkpoint (``derma run --resume``). Every forward -- training, per-epoch scoring, test
prediction -- follows the model's one dtype policy (:mod:`derma_vlm.precision`).

The adapter is saved as safetensors under ``<work_dir>/adapter`` with the base model's id
(``adapter_config.json`` and tag ``derma.base_model``) and the label set it was trained on
(``derma_adapter.json``), and logged with the run; an adapter is used only on a dataset with the
same classes in the same order (anything else is refused in one line). ``predict`` is
:class:`~derma_vlm.classifier.VlmClassifier`'s, unchanged: the base model is loaded exactly as
for zero-shot and the adapter put on it. ``lora.adapter: PATH`` skips training and evaluates an
existing adapter; ``merge: true`` also writes a merged full model. Under torchrun (or
``accelerate launch``) Trainer's DDP trains one adapter, written by rank 0.

A family subclasses it with ``load_base``, ``trainable_modules``, ``lm_layers`` and ``template``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from derma_core.atomic import atomic_dir
from derma_core.config import get_dotted as _get
from derma_core.interfaces import RunContext, Split
from derma_core.labels import LabelSet
from derma_core.weighting import class_weights

from .classifier import VlmClassifier
from .training import LM_LAYERS, PROJECTOR

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "lora_checkpoints"
MERGED_DIR = "merged"
#: Written last into a finished adapter folder: its presence means training completed.
ADAPTER_INFO = "derma_adapter.json"
TAG_BASE_MODEL = "derma.base_model"
TAG_ADAPTER = "derma.adapter_sha256"
SAMPLERS = ("none", "balanced")


def adapter_checksum(folder: Path) -> str:
    """SHA-256 of the adapter weights (what changes the answers)."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in Path(folder).glob("*.safetensors")):
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def adapter_label_set(info: dict, folder: Path) -> LabelSet | None:
    """The label set an adapter folder's ``derma_adapter.json`` (``info``) records. derma wrote
    adapters before it recorded label sets only for HAM10000 (its one dataset then), so a derma
    adapter without one is HAM10000's; a folder without ``derma_adapter.json`` gives None."""
    if "label_set" in info:
        try:
            return LabelSet.from_dict(info["label_set"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{folder / ADAPTER_INFO}: label_set is not a valid label set ({exc})") from None
    if info:
        from derma_core.data.datasets.ham10000 import LABEL_SET

        return LABEL_SET
    return None


def _stderr_is_terminal() -> bool:
    """Whether stderr (where tqdm draws) is a terminal; False when redirected to a file or pipe."""
    import sys

    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _unwrap_peft(model):
    """The base model inside a PeftModel (its layers carry the adapter in place)."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model


class VlmLoraClassifier(VlmClassifier):
    """A VLM + a LoRA adapter trained in ``fit``; ``predict`` is the zero-shot one."""

    #: LoRA picks its epoch on val: calibration gets images selection never saw
    selects_on_val = True

    name = "vlm_lora"
    #: Modules trained in full (peft ``modules_to_save``): the projector / connector.
    trainable_modules: tuple[str, ...] = (PROJECTOR,)
    #: Regex of the language model's decoder-layer container (LoRA wraps only inside it).
    lm_layers: str = LM_LAYERS
    #: The training template, recorded with the adapter.
    template: str = "the model's chat template: user turn (image + question), assistant turn {answer}<end-of-turn>"

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.adapter_dir: Path | None = None
        self.adapter_sha: str | None = None
        self.base_model_id: str | None = None
        #: Extra transformers TrainerCallbacks (tests, custom logging).
        self.extra_callbacks: list = []
        #: After fit: training summary (best epoch, metrics, resume point).
        self.train_info: dict[str, Any] = {}
        #: After fit, until predict loads the saved adapter: (peft model, Loaded) of training.
        self.trained: tuple[Any, Any] | None = None
        #: The label set the adapter in use was trained on (None: not known, see _use_adapter).
        self.adapter_label_set: LabelSet | None = None

    # -- config --------------------------------------------------------------------------------
    def _c(self, key: str, default: Any = None) -> Any:
        return _get(self.config, key, default)

    def _validate(self) -> None:
        sampler = self._c("train.sampler", "none") or "none"
        if sampler not in SAMPLERS:
            raise ValueError(f"train.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        for key in ("lora.r", "train.epochs", "train.batch_size", "train.grad_accum"):
            value = self._c(key)
            if value is not None and int(value) < 1:
                raise ValueError(f"{key} must be at least 1, got {value!r}")
        warmup = float(self._c("train.warmup_ratio", 0.0) or 0.0)
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {warmup!r}")
        if self._c("quantization") and self._c("precision") == "fp16":
            log.warning("QLoRA with fp16 compute is less stable than bf16; prefer precision: bf16")

    # -- training ------------------------------------------------------------------------------
    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        self._validate()
        self.check_label_set(train.label_set)
        given = self._c("lora.adapter")
        if given:
            folder = Path(given).expanduser()
            if not (folder / "adapter_config.json").exists():
                raise FileNotFoundError(f"lora.adapter {str(folder)!r} has no adapter_config.json: not a peft "
                                        "adapter folder (a LoRA run writes one to <work_dir>/adapter)")
            self._use_adapter(folder, ctx, trained_here=False, label_set=train.label_set)
            return
        out = Path(ctx.work_dir) / ADAPTER_DIR
        if ctx.resume and (out / ADAPTER_INFO).exists():
            log.info("%s: resuming a run whose training had finished; reusing %s", self.name, out)
            self.train_info = json.loads((out / ADAPTER_INFO).read_text()).get("training", {})
            self._use_adapter(out, ctx, trained_here=False, label_set=train.label_set)
            return
        self._train(train, val, ctx, out)

    def check_label_set(self, label_set: LabelSet) -> None:
        """The zero-shot checks, and an adapter in use must have been trained on these classes."""
        super().check_label_set(label_set)
        if self.adapter_label_set is not None:
            label_set.require_same(self.adapter_label_set, f"the LoRA adapter {self.adapter_dir}",
                                   "train an adapter on this dataset (leave lora.adapter unset) or pass one "
                                   "trained on its classes")

    def _train(self, train: Split, val: Split, ctx: RunContext, out: Path) -> None:
        from .training import AnswerOnlyDataset

        started = time.perf_counter()
        loaded = self.load_base(self.config, ctx.device)
        self.base_model_id = loaded.model_id
        model, counts = self._lora_model(loaded, ctx)
        label_set = train.label_set
        question = self.question(label_set)
        max_length = self._c("train.max_length")
        train_ds = AnswerOnlyDataset(train, loaded.codec, question, max_length)
        val_ds = AnswerOnlyDataset(val, loaded.codec, question, max_length)
        weights = self._loss_class_weights(train, ctx)
        args = self._training_arguments(ctx, Path(ctx.work_dir) / CHECKPOINT_DIR, loaded.policy, len(train_ds))
        trainer, reporter = self._trainer(model, args, loaded, train_ds, val_ds, weights, val, question, ctx)
        state, best_epoch = self._run_trainer(trainer, args, reporter, counts, ctx)
        if ctx.is_main_process:
            summary = {"lora_train_seconds": time.perf_counter() - started}
            if state.best_metric is not None:
                summary["best_val_macro_f1"] = float(state.best_metric)
            if best_epoch is not None:
                summary["best_epoch"] = float(best_epoch)
            ctx.log_metrics(summary)
            self._save_adapter(model, out, loaded.model_id, ctx, label_set)
            if not self._c("train.keep_checkpoints", False):
                shutil.rmtree(args.output_dir, ignore_errors=True)
        if ctx.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
        self.trained = (model, dataclasses.replace(loaded, model=_unwrap_peft(model)))
        del trainer
        self._use_adapter(out, ctx, trained_here=True, label_set=label_set)
        if self._c("merge", False) and ctx.is_main_process:
            self.release_training_model()
            self.export_merged(ctx)

    def _lora_model(self, loaded, ctx: RunContext):
        """The base model with LoRA adapters (and the trainable projector), and its trainable
        parameter counts; the base model and the counts are logged."""
        from .training import build_lora_model, trainable_summary

        quantized = bool(self._c("quantization"))
        gc_on = bool(self._c("train.gradient_checkpointing", True))
        model = build_lora_model(loaded.model, r=self._c("lora.r", 128), alpha=self._c("lora.alpha", 256),
                                 dropout=self._c("lora.dropout", 0.05),
                                 target_modules=self._c("lora.target_modules") or
                                 ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                 quantized=quantized, gradient_checkpointing=gc_on, lm_layers=self.lm_layers,
                                 trainable_modules=self.trainable_modules, policy=loaded.policy)
        counts = trainable_summary(model, self.trainable_modules)
        if counts["other"]:
            raise RuntimeError(f"{self.name}: {counts['other']} trainable parameters outside LoRA and the projector")
        if ctx.is_main_process:
            ctx.tracker.set_tags({TAG_BASE_MODEL: loaded.model_id})
            ctx.tracker.log_params({"base_model": loaded.model_id, **self._train_params(),
                                    "trainable_lora_params": counts["lora"],
                                    "trainable_projector_params": counts["projector"]})
        return model, counts

    def _loss_class_weights(self, train: Split, ctx: RunContext):
        """The core's class weights (one formula for every trained backend): `balanced` is
        N / (K * count_c), capped when class_weighting.cap is set; None without weighting."""
        label_set = train.label_set
        mode, cap = self._c("class_weighting.mode", "none"), self._c("class_weighting.cap")
        if mode == "balanced" and cap is not None:
            mode = "capped"
        weights = class_weights(train.y, mode or "none", 3.0 if cap is None else float(cap), num_classes=len(label_set))
        if weights is not None and ctx.is_main_process:
            ctx.tracker.log_params({f"class_weight_{label}": round(float(w), 4)
                                    for label, w in zip(label_set.codes, weights)})
        return weights

    def _trainer(self, model, args, loaded, train_ds, val_ds, weights, val: Split, question, ctx: RunContext):
        """The Trainer (reporting into the run, with early stopping when train.patience is set)
        and its reporting callback."""
        from transformers import EarlyStoppingCallback

        from .training import AnswerOnlyCollator, make_run_context_callback, make_trainer_class

        Trainer = make_trainer_class()
        reporter = make_run_context_callback(ctx)
        callbacks = [reporter, *self.extra_callbacks]
        patience = self._c("train.patience")
        if patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(patience)))
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          data_collator=AnswerOnlyCollator(loaded.codec.pad_token_id), callbacks=callbacks,
                          projector_lr=self._c("train.projector_lr"), class_weights=weights,
                          balanced_sampler=(self._c("train.sampler", "none") == "balanced"),
                          label_scorer=self._label_scorer(loaded, val, question, ctx),
                          trainable_modules=self.trainable_modules, dtype_policy=loaded.policy)
        return trainer, reporter

    def _run_trainer(self, trainer, args, reporter, counts: dict, ctx: RunContext):
        """Train (resuming from the last checkpoint on a resumed run); records ``train_info`` and
        returns the trainer's state and the best epoch (None: none selected)."""
        from transformers.trainer_utils import get_last_checkpoint

        resume_from = None
        if ctx.resume and Path(args.output_dir).exists():
            resume_from = get_last_checkpoint(args.output_dir)
        if resume_from:
            log.info("%s: resuming training from %s", self.name, resume_from)
        elif self._c("train.eval_at_start", True):
            # Epoch 0: the untrained model on val (loss and label-scoring macro-F1), the baseline
            # every later epoch is compared with. Not a candidate for the best checkpoint.
            trainer.evaluate()
        result = trainer.train(resume_from_checkpoint=resume_from)
        state = trainer.state
        best_epoch = None
        if state.best_model_checkpoint:
            best_step = int(Path(state.best_model_checkpoint).name.split("-")[-1])
            best_epoch = next((round(h["epoch"]) for h in state.log_history
                               if h.get("step") == best_step and "eval_loss" in h), None)
        self.train_info = {
            "resumed_from": resume_from, "first_step": reporter.first_step, "global_step": state.global_step,
            "epochs_run": [e for e in reporter.epochs_reported if e > 0], "best_val_macro_f1": state.best_metric,
            "best_epoch": best_epoch, "best_checkpoint": state.best_model_checkpoint,
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
            "eval_history": [{"epoch": epoch, **metrics} for epoch, metrics in reporter.history],
            **{f"trainable_{k}": v for k, v in counts.items()},
        }
        return state, best_epoch

    def _train_params(self) -> dict[str, Any]:
        keys = ("lora.target_modules", "train.projector_lr", "train.grad_accum", "train.warmup_ratio",
                "train.gradient_checkpointing", "train.max_length", "train.patience")
        return {k.split(".")[-1] if k.startswith("train.") else k.replace(".", "_"): self._c(k) for k in keys}

    def _training_arguments(self, ctx: RunContext, output_dir: Path, policy, n_train: int):
        from transformers import TrainingArguments

        batch = int(self._c("train.batch_size", 2))
        steps_per_epoch = max(1, -(-n_train // (batch * int(self._c("train.grad_accum", 8)) * ctx.world_size)))
        logging_steps = int(self._c("train.logging_steps", 10) or 10)
        return TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=float(self._c("train.epochs", 3)),
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=int(self._c("inference.batch_size", batch)),
            gradient_accumulation_steps=int(self._c("train.grad_accum", 8)),
            learning_rate=float(self._c("train.lr", 2e-5)),
            weight_decay=float(self._c("train.weight_decay", 0.01)),
            lr_scheduler_type=self._c("train.scheduler", "cosine"),
            warmup_steps=float(self._c("train.warmup_ratio", 0.03)),  # a float < 1 is a ratio of all steps
            optim=self._c("train.optimizer", "adamw_torch"),
            **policy.trainer_flags(),  # the same autocast as scoring and prediction
            activation_checkpointing=bool(self._c("train.gradient_checkpointing", True)),
            activation_checkpointing_kwargs={"use_reentrant": False},
            eval_strategy="epoch",
            save_strategy="epoch",
            logging_strategy="steps",
            logging_steps=max(1, min(logging_steps, steps_per_epoch)),
            load_best_model_at_end=True,
            metric_for_best_model="macro_f1",
            greater_is_better=True,
            save_total_limit=2,  # the best and the last (resume point); Trainer never deletes the best
            prediction_loss_only=True,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=int(self._c("train.num_workers", 0)),
            report_to="none",  # metrics go to the core's MLflow run through ctx, not a second run
            # no bar redraws in a log: without a terminal the Trainer prints a line per logging step instead
            disable_tqdm=bool(ctx.quiet or not ctx.is_main_process or not _stderr_is_terminal()),
            seed=int(ctx.seed),
            use_cpu=str(ctx.device) == "cpu",
            ddp_find_unused_parameters=False,  # every trainable weight is used on every step
        )

    def _label_scorer(self, loaded, val: Split, question: str, ctx: RunContext):
        """``scorer(model) -> metrics``: label scoring of the val split (sharded over DDP ranks),
        each class scored by the code the model is trained to answer."""
        from derma_core.evaluation.metrics import classification_metrics

        from .scoring import score_labels

        codes = list(val.label_set.codes)

        batch = int(self._c("inference.batch_size", 8))
        length_normalize = bool(self._c("inference.length_normalize", False))
        include_eos = bool(self._c("inference.include_eos", True))
        rank, world = ctx.rank, ctx.world_size

        def scorer(model) -> dict[str, float]:
            scoring = dataclasses.replace(loaded, model=_unwrap_peft(model))
            idx = np.arange(len(val))[rank::world]
            scores = np.zeros((len(idx), len(codes)))
            for start in range(0, len(idx), 64):  # 64 images in memory at a time
                rows = idx[start:start + 64]
                images = [val.load_image(int(i)) for i in rows]
                scores[start:start + len(rows)] = score_labels(scoring, images, question, codes, batch_size=batch,
                                                               length_normalize=length_normalize,
                                                               include_eos=include_eos)
            pred = scores.argmax(axis=1)
            if world > 1:
                from .distributed import gather_dicts

                gathered = gather_dicts({int(i): int(p) for i, p in zip(idx, pred)}, world)
                pred = np.array([gathered[i] for i in range(len(val))], dtype=np.int64)
            m = classification_metrics(val.y, pred, len(codes))
            return {k: m[k] for k in ("macro_f1", "accuracy", "balanced_accuracy")}

        return scorer

    # -- the adapter -----------------------------------------------------------------------------
    def _save_adapter(self, model, out: Path, base_model_id: str, ctx: RunContext, label_set: LabelSet) -> None:
        """Write the (best) adapter atomically as safetensors and log it with the base model's id
        and the label set it was trained on."""
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            # Record the base model's id (not the local cache folder peft writes) for whoever loads it.
            cfg_path = tmp / "adapter_config.json"
            adapter_cfg = json.loads(cfg_path.read_text())
            adapter_cfg["base_model_name_or_path"] = base_model_id
            cfg_path.write_text(json.dumps(adapter_cfg, indent=2))
            info = {"base_model": base_model_id, "prompt": self.config.get("prompt"),
                    "question": self.question(label_set), "label_set": label_set.to_dict(), "template": self.template,
                    "precision": self._c("precision"), "quantization": self._c("quantization"),
                    "lora": self._c("lora"), "train": self._c("train"), "class_weighting": self._c("class_weighting"),
                    "training": {k: v for k, v in self.train_info.items() if k != "eval_history"},
                    "eval_history": self.train_info.get("eval_history")}
            (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2, default=str))
        sha = adapter_checksum(out)
        ctx.tracker.set_tags({TAG_BASE_MODEL: base_model_id, TAG_ADAPTER: sha})
        if _get(self.config, "tracking.log_model", True):
            ctx.tracker.log_artifacts(out, ADAPTER_DIR)

    def _use_adapter(self, folder: Path, ctx: RunContext, trained_here: bool, label_set: LabelSet) -> None:
        """Use the adapter in ``folder`` for ``label_set``'s classes: refused in one line when it
        was trained on other classes."""
        folder = Path(folder)
        info_path = folder / ADAPTER_INFO
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        trained_on = adapter_label_set(info, folder)
        if trained_on is not None:
            label_set.require_same(trained_on, f"the LoRA adapter {folder}",
                                   "train an adapter on this dataset (leave lora.adapter unset) or pass one "
                                   "trained on its classes")
        else:
            log.warning("%s: %s records no label set (not written by derma); assuming it answers with this "
                        "dataset's codes %s", self.name, folder, ", ".join(label_set.codes))
        self.adapter_label_set = trained_on
        self.adapter_dir = folder
        self.adapter_sha = adapter_checksum(self.adapter_dir)
        base = info.get("base_model")
        if base is None:
            cfg = json.loads((self.adapter_dir / "adapter_config.json").read_text())
            base = cfg.get("base_model_name_or_path")
        self.base_model_id = self.base_model_id or base
        if not trained_here and ctx.is_main_process:
            ctx.tracker.set_tags({TAG_BASE_MODEL: base, TAG_ADAPTER: self.adapter_sha,
                                  "derma.adapter_path": str(self.adapter_dir.resolve())})
        if info.get("question") and info["question"] != self.question(label_set):
            log.warning("%s: the adapter was trained with a different question (prompt %r) than this "
                        "run asks (prompt %r)", self.name, info.get("prompt"), self.config.get("prompt"))

    def release_training_model(self) -> None:
        """Free the training copy of the model (before loading the saved adapter for inference)."""
        if self.trained is None:
            return
        self.trained = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    # -- inference: the zero-shot predict with the adapter loaded ------------------------------
    def _signature_extra(self) -> Any:
        return {"adapter_sha256": self.adapter_sha}

    def _load(self, ctx: RunContext):
        """The base model loaded exactly as zero-shot loads it, with the saved adapter on it."""
        if self.loaded is None:
            if self.adapter_dir is None:
                raise RuntimeError(f"{self.name}: predict() needs a trained adapter: call fit() first or set "
                                   "lora.adapter to an adapter folder")
            self.release_training_model()
            from peft import PeftModel

            from .training import peft_deprecations_filtered

            base = self.load_base(self.config, ctx.device)
            with peft_deprecations_filtered():
                peft_model = PeftModel.from_pretrained(base.model, str(self.adapter_dir), is_trainable=False)
            peft_model.eval()
            self._peft_model = peft_model
            self.loaded = dataclasses.replace(
                base, model=_unwrap_peft(peft_model),
                model_id=f"{base.model_id} + LoRA {self.adapter_sha[:12]}",
                info={**base.info, "adapter": str(self.adapter_dir), "adapter_sha256": self.adapter_sha})
        return self.loaded

    def export_merged(self, ctx: RunContext) -> Path:
        """``merge: true``: the base model with the adapter merged in, as a standalone HF folder
        (``<work_dir>/merged``). A quantised base is reloaded unquantised for the merge."""
        from peft import PeftModel

        from .training import peft_deprecations_filtered

        config = {**self.config, "quantization": None}
        base = self.load_base(config, "cpu" if self._c("quantization") else ctx.device)
        with peft_deprecations_filtered():
            merged = PeftModel.from_pretrained(base.model, str(self.adapter_dir)).merge_and_unload()
        out = Path(ctx.work_dir) / MERGED_DIR
        with atomic_dir(out) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            base.processor.save_pretrained(tmp)
            merged_info = {"base_model": base.model_id, "adapter_sha256": self.adapter_sha, "merged": True}
            if self.adapter_label_set is not None:
                merged_info["label_set"] = self.adapter_label_set.to_dict()
            (tmp / ADAPTER_INFO).write_text(json.dumps(merged_info, indent=2))
        ctx.tracker.set_tags({"derma.merged_model": str(out.resolve())})
        del merged, base
        gc.collect()
        return out

    def log_model(self, ctx: RunContext) -> None:
        """The adapter is logged as soon as training ends (see ``fit``); nothing more to log."""
