"""LoRA/QLoRA training machinery shared by every VLM backend: answer-only examples, collation,
peft wrapping and a Trainer subclass.

An example is the prompt exactly as inference builds it (the codec's
:meth:`~derma_vlm.codec.PromptCodec.prompt_inputs`, generation prompt included), then the
answer's tokens as the model emits them and the end-of-turn token; only the answer tokens and
the end-of-turn token carry loss. So the fine-tuned model is evaluated with the template it
learnt.

The training loop itself is transformers' :class:`~transformers.Trainer`; the subclass here adds
what it lacks: a separate learning rate for the projector, per-class weighting of the answer-token
loss, a class-balanced sampler, inputs cast by the model's dtype policy
(:mod:`derma_vlm.precision`), and validation by label scoring (macro-F1) every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from derma_core.interfaces import Split

from .codec import IGNORE_INDEX, image_keys, per_token_keys
from .precision import DtypePolicy

log = logging.getLogger(__name__)

#: The language model's linear layers (Llama/Mistral/Gemma/Qwen names) LoRA may wrap.
LM_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Where the language model's decoder layers sit in transformers' image-text-to-text models.
LM_LAYERS = r"language_model\.layers"
#: The module trained in full (peft ``modules_to_save``) with its own learning rate, by default.
PROJECTOR = "multi_modal_projector"
_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}


# -- peft -------------------------------------------------------------------------------------
def lora_target_regex(names: Sequence[str], lm_layers: str = LM_LAYERS) -> str:
    """A peft ``target_modules`` regex matching ``names`` inside the language model's decoder
    layers only (``lm_layers``: a regex for their container). Vision encoders have ``q_proj``/
    ``k_proj``/``v_proj`` too: a plain list of names would wrap the (frozen) vision tower, which
    the regex rules out."""
    names = list(names)
    unknown = [n for n in names if n not in LM_LINEAR_LAYERS]
    if not names or unknown:
        raise ValueError(f"lora.target_modules: unknown {unknown or 'empty list'}; choose from "
                         f"{', '.join(LM_LINEAR_LAYERS)}")
    attn = [n for n in names if n in _ATTN]
    mlp = [n for n in names if n not in _ATTN]
    parts = []
    if attn:
        parts.append(rf"self_attn\.(?:{'|'.join(attn)})")
    if mlp:
        parts.append(rf"mlp\.(?:{'|'.join(mlp)})")
    return rf"(?:.*\.)?{lm_layers}\.\d+\.(?:{'|'.join(parts)})"


#: transformers 5 deprecates ``is_gradient_checkpointing`` (a FutureWarning on every read) in favour
#: of ``is_activation_checkpointing``; peft still reads the old name when it wraps a model
#: (``get_peft_model``, ``PeftModel.from_pretrained``). derma calls the new API itself; this
#: filters exactly that notice, only around derma's peft calls (a user cannot act on it).
PEFT_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated", r"`gradient_checkpointing_enable` is deprecated")


@contextlib.contextmanager
def peft_deprecations_filtered() -> Iterator[None]:
    """Around a peft call: transformers' checkpointing-rename FutureWarnings that peft triggers
    are not printed (every other warning is)."""
    with warnings.catch_warnings():
        for message in PEFT_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def build_lora_model(model, *, r: int, alpha: float, dropout: float, target_modules: Sequence[str],
                     quantized: bool, gradient_checkpointing: bool, lm_layers: str = LM_LAYERS,
                     trainable_modules: Sequence[str] = (PROJECTOR,), policy: DtypePolicy | None = None):
    """Wrap ``model`` with peft LoRA on the language model's linear layers and fully trainable
    copies of ``trainable_modules`` (peft ``modules_to_save``; the projector by default, none
    with an empty list).

    Quantised models go through ``prepare_model_for_kbit_training`` first (the QLoRA recipe:
    frozen 4-bit base, norms and other small float weights upcast to fp32). Trainable weights are
    kept in fp32 (the dtype policy's master weights) so bf16/fp16 mixed precision updates them
    without loss of precision; forwards run under the policy's autocast.
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if quantized:
        # freezes and upcasts; checkpointing below through transformers' current API (peft would call the
        # deprecated gradient_checkpointing_enable, which with use_reentrant=False is all it adds)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
    if gradient_checkpointing:
        # The frozen embeddings give checkpointed blocks inputs without grad; this keeps the graph.
        model.enable_input_require_grads()
        model.config.use_cache = False
    lora = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                      target_modules=lora_target_regex(target_modules, lm_layers),
                      modules_to_save=list(trainable_modules) or None, bias="none", task_type="CAUSAL_LM")
    with peft_deprecations_filtered():
        peft_model = get_peft_model(model, lora)
    (policy or DtypePolicy(torch.float32)).prepare_trainable(peft_model)
    return peft_model


def trainable_summary(model, trainable_modules: Sequence[str] = (PROJECTOR,)) -> dict[str, int]:
    """Counts of trainable parameters: LoRA, projector, anything else (should be 0), total."""
    out = {"lora": 0, "projector": 0, "other": 0, "total_params": 0}
    for name, p in model.named_parameters():
        out["total_params"] += p.numel()
        if not p.requires_grad:
            continue
        if "lora_" in name:
            out["lora"] += p.numel()
        elif any(m in name for m in trainable_modules):
            out["projector"] += p.numel()
        else:
            out["other"] += p.numel()
    return out


# -- data ---------------------------------------------------------------------------------------
def answer_only_example(prompt: dict, answer_ids: Sequence[int], end_of_turn_id: int) -> dict[str, Any]:
    """One training example from a one-row prompt input dict: ``input_ids`` = prompt + answer +
    end-of-turn, ``labels`` -100 on the prompt; per-image tensors kept with their leading dim."""
    import torch

    from .codec import append_tokens

    target = list(answer_ids) + [int(end_of_turn_id)]
    full = append_tokens(prompt, target)
    n = prompt["input_ids"].shape[1]
    ids = full["input_ids"][0]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[n:] = torch.tensor(target, dtype=ids.dtype)
    mask = full["attention_mask"][0]
    if not bool(mask.all()):
        raise ValueError("a one-row prompt must not be padded")
    example = {"input_ids": ids, "labels": labels}
    for k in per_token_keys(prompt):
        example[k] = full[k][0]
    for k in image_keys(prompt):
        example[k] = prompt[k]
    return example


class AnswerOnlyDataset:
    """Supervised examples of one split: the row's image, the question, and the row's class as the
    answer -- its code in the split's label set unless ``answers`` maps codes to other strings
    (loss on the answer and end-of-turn only)."""

    def __init__(self, split: Split, codec, question: str, max_length: int | None = None,
                 answers: dict[str, str] | None = None) -> None:
        self.split = split
        self.label_set = split.label_set
        self.codec = codec
        self.question = question
        self.max_length = max_length
        self.y = split.y
        codes = self.label_set.codes
        self.answers = {code: code for code in codes} if answers is None else dict(answers)
        missing = [c for c in codes if c not in self.answers]
        if missing:
            raise ValueError(f"training answers: no answer string for the classes {', '.join(missing)}")
        self.answer_ids = {label: list(codec.answer_ids(self.answers[label])) for label in codes}
        if len(split) and max_length is not None:
            first = self.split.load_image(0)
            for label in codes:  # fail before training starts, not in the middle of it
                self._check_length(self._example(first, label), label)

    def _example(self, image, label: str) -> dict[str, Any]:
        prompt = self.codec.prompt_inputs([image], [self.question])
        return answer_only_example(prompt, self.answer_ids[label], self.codec.end_of_turn_id)

    def _check_length(self, example: dict, label: str) -> None:
        n = len(example["input_ids"])
        if self.max_length is not None and n > self.max_length:
            raise ValueError(
                f"train.max_length={self.max_length} is shorter than a training example ({n} tokens: image "
                f"tokens + prompt + answer {self.answers[label]!r}); raise train.max_length (examples are never "
                "truncated: cutting the answer would train on a wrong target)")

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        y = int(self.y[i])
        label = self.label_set.codes[y]
        example = self._example(self.split.load_image(i), label)
        self._check_length(example, label)
        example["class_index"] = y
        return example


class AnswerOnlyCollator:
    """Right-pads a batch (loss positions are unaffected: padding comes after the end-of-turn token
    and carries no loss); per-image tensors are concatenated along dim 0."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        token_keys = [k for k, v in features[0].items() if k not in ("input_ids", "labels", "class_index")
                      and isinstance(v, torch.Tensor) and v.dim() == 1 and len(v) == len(features[0]["input_ids"])]
        extra = {k: torch.zeros((n, width), dtype=features[0][k].dtype) for k in token_keys}
        for k, f in enumerate(features):
            m = len(f["input_ids"])
            input_ids[k, :m] = f["input_ids"]
            labels[k, :m] = f["labels"]
            attention[k, :m] = 1
            for key in token_keys:
                extra[key][k, :m] = f[key]
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, **extra,
                 "class_index": torch.tensor([f["class_index"] for f in features], dtype=torch.long)}
        for key, value in features[0].items():
            if key in batch or key in token_keys or not isinstance(value, torch.Tensor):
                continue
            batch[key] = torch.cat([f[key] for f in features], dim=0)
        return batch


# -- trainer --------------------------------------------------------------------------------------
# long: one class statement (defined here so importing this module does not import transformers); each method is short
def make_trainer_class():
    """The Trainer subclass (built lazily so importing this module does not import transformers)."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class VlmLoraTrainer(Trainer):
        """transformers' Trainer with a projector learning rate, class-weighted answer loss,
        an optional class-balanced sampler and label-scoring validation metrics.

        ``label_scorer(model) -> {"macro_f1": ..., ...}`` runs after every evaluation pass; its
        metrics join the ``eval_`` metrics, so ``metric_for_best_model="macro_f1"`` selects on it.
        """

        def __init__(self, *args, projector_lr: float | None = None, class_weights: np.ndarray | None = None,
                     balanced_sampler: bool = False, label_scorer: Callable | None = None,
                     trainable_modules: Sequence[str] = (PROJECTOR,), dtype_policy: DtypePolicy | None = None,
                     **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.projector_lr = projector_lr
            self.loss_class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
            self.balanced_sampler = balanced_sampler
            self.label_scorer = label_scorer
            self.trainable_modules = tuple(trainable_modules)
            self.dtype_policy = dtype_policy
            # compute_loss below normalises by the token count of the whole accumulated batch
            # (num_items_in_batch), as the model's own loss does; tell Trainer so it counts them.
            self.model_accepts_loss_kwargs = True

        # optimizer with two learning rates -------------------------------------------------
        def create_optimizer(self, model=None):
            if self.optimizer is not None:
                return self.optimizer
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, p in opt_model.named_parameters():
                if not p.requires_grad:
                    continue
                is_projector = any(m in name for m in self.trainable_modules)
                groups.setdefault((is_projector, name in decay), []).append(p)
            projector_lr = self.projector_lr if self.projector_lr is not None else self.args.learning_rate
            param_groups = []
            for (is_projector, decays), params in sorted(groups.items()):
                param_groups.append({"params": params, "weight_decay": self.args.weight_decay if decays else 0.0,
                                     "lr": projector_lr if is_projector else self.args.learning_rate})
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in {"params", "model"}}
            optimizer_kwargs.pop("lr", None)  # every group carries its own
            self.optimizer = optimizer_cls(param_groups, lr=self.args.learning_rate, **optimizer_kwargs)
            return self.optimizer

        # sampler ---------------------------------------------------------------------------
        def _get_train_sampler(self, train_dataset=None):
            if not self.balanced_sampler:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            y = np.asarray(dataset.y)
            counts = np.bincount(y, minlength=len(dataset.label_set)).astype(np.float64)
            weights = 1.0 / counts[y]
            # Draws from torch's global RNG, which Trainer seeds and restores on resume.
            return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                                          num_samples=len(y), replacement=True)

        # loss ------------------------------------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            class_index = inputs.pop("class_index", None)
            policy = getattr(self, "dtype_policy", None)
            if policy is not None:  # pixel values in the compute dtype, as at inference
                inputs = policy.cast_inputs(inputs, labels.device)
            # Project onto the vocabulary only where an answer token is predicted: from the
            # position before the batch's first answer token on (the 576 image and the prompt
            # positions carry no loss). Saves most of the lm_head work and logits memory.
            has_target = labels.ne(IGNORE_INDEX).any(dim=0).nonzero()
            first = max(1, int(has_target[0])) if len(has_target) else labels.shape[1] - 1
            outputs = model(**inputs, use_cache=False, logits_to_keep=labels.shape[1] - first + 1)
            logits = outputs.logits[:, :-1, :]
            target = labels[:, first:].to(logits.device)
            token_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         ignore_index=IGNORE_INDEX, reduction="none").view_as(target)
            if model.training and self.loss_class_weights is not None and class_index is not None:
                w = self.loss_class_weights.to(token_loss.device)[class_index.to(token_loss.device)]
                token_loss = token_loss * w.unsqueeze(1)
            total = token_loss.sum()
            if num_items_in_batch is not None:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    # Trainer sums the token count over processes and DDP averages gradients.
                    loss = loss * self.accelerator.num_processes
            else:
                loss = total / target.ne(IGNORE_INDEX).sum().clamp(min=1)
            return (loss, outputs) if return_outputs else loss

        # validation ------------------------------------------------------------------------
        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            if self.label_scorer is not None:
                model = self.accelerator.unwrap_model(self.model)
                was_training = model.training
                model.eval()
                try:
                    extra = self.label_scorer(model)
                finally:
                    model.train(was_training)
                for key, value in extra.items():
                    output.metrics[f"{metric_key_prefix}_{key}"] = value
            return output

    return VlmLoraTrainer


def make_run_context_callback(ctx, extra_epoch_metrics: Callable[[], dict] | None = None):
    """A TrainerCallback that logs into the core's MLflow run through ``ctx`` (no second run):
    per-step ``train_step_loss``/``learning_rate`` at step = global step, and per epoch
    ``train_loss``, ``val_loss``, ``val_macro_f1``... via ``ctx.report_epoch`` (which a tuner may
    use to prune: :class:`derma_core.interfaces.TrialPruned` propagates out of training)."""
    from transformers import TrainerCallback

    class RunContextCallback(TrainerCallback):
        def __init__(self) -> None:
            self._losses: list[float] = []
            self.epochs_reported: list[int] = []
            #: (epoch, metrics) as reported to the run, epoch 0 included when evaluated.
            self.history: list[tuple[int, dict]] = []
            self.first_step: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.first_step is None:
                self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs and "eval_loss" not in logs:
                self._losses.append(float(logs["loss"]))
                step_metrics = {"train_step_loss": float(logs["loss"])}
                if "learning_rate" in logs:
                    step_metrics["learning_rate"] = float(logs["learning_rate"])
                if logs.get("grad_norm") is not None and math.isfinite(float(logs["grad_norm"])):
                    step_metrics["grad_norm"] = float(logs["grad_norm"])
                ctx.log_metrics(step_metrics, step=state.global_step)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            epoch = int(round(state.epoch or 0))
            out = {}
            if self._losses:
                out["train_loss"] = float(np.mean(self._losses))
            self._losses = []
            for key, value in metrics.items():
                if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(
                        ("_runtime", "_per_second")):
                    out["val_" + key[len("eval_"):]] = float(value)
            if extra_epoch_metrics is not None:
                out.update(extra_epoch_metrics())
            self.epochs_reported.append(epoch)
            self.history.append((epoch, out))
            ctx.report_epoch(epoch, out)

    return RunContextCallback()
