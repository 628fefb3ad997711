"""The training loop: epochs, validation, best-epoch selection, checkpoints, resume and DDP.

Reproducibility: every epoch reseeds its own randomness (shuffle order, augmentation
parameters, dropout) from ``(seed, epoch, rank)``, so an epoch replays identically whether the
run went straight through or was resumed from the previous epoch's checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from derma_core.evaluation.metrics import classification_metrics, probability_metrics
from derma_core.evaluation.probabilities import softmax
from derma_core.interfaces import RunContext

from .augment import BatchAugment, eval_batch, train_batch
from .checkpoint import (checkpoint_path, load_checkpoint, require_same_labels, rng_state, save_checkpoint,
                         set_rng_state)
from .data import SplitImages, eval_loader, shard, train_loader
from .recipe import Recipe

#: Config keys whose change makes a resumed run a different experiment.
_TRAINING_KEYS = ("model", "train", "augmentation", "class_weighting", "seed", "data")


@dataclass
class Runtime:
    """Where and how tensors are computed in this process."""

    device: torch.device
    precision: str  # bf16 | fp16 | fp32 (resolved)
    channels_last: bool
    num_workers: int
    rank: int = 0
    world: int = 1
    quiet: bool = False

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bf16/fp16 autocast on this device (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """An independent 63-bit seed for one (epoch, rank, stream) of a run."""
    return int(np.random.SeedSequence([int(seed) % (2**32), epoch, rank, stream]).generate_state(2, np.uint64)[0]
               % (2**63))


def all_gather_rows(array: np.ndarray, rt: Runtime) -> np.ndarray:
    """Concatenate every rank's rows in rank order (the identity without DDP)."""
    if not rt.distributed:
        return array
    parts: list[Any] = [None] * rt.world
    dist.all_gather_object(parts, array)
    return np.concatenate(parts, axis=0)


def sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics), in place.

    DDP keeps the weights equal, but each rank's forward passes update its own BatchNorm
    running statistics on its own shard (DDP's broadcast_buffers copies rank 0's before each
    training forward, which then updates them per rank again); evaluated without this, each rank would predict its
    shard of val and test with different statistics. Called after every training epoch, before
    evaluation, so per-epoch validation, the best-epoch copy, checkpoints and test predictions
    use identical weights and statistics on every rank (the identity without DDP)."""
    if not rt.distributed:
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: SplitImages, rt: Runtime, batch_size: int, size: int,
                   desc: str = "predict", progress=None) -> np.ndarray:
    """float32 logits (N, K) for every row of ``dataset``, on every rank (each rank computes its
    shard; the shards are gathered)."""
    model.eval()
    rows = shard(len(dataset), rt.rank, rt.world) if rt.distributed else np.arange(len(dataset))
    loader = eval_loader(dataset, rows, batch_size, rt.num_workers, rt.pin_memory)
    out = []
    batches = progress(loader, total=len(loader), desc=desc) if progress is not None else loader
    for images, _ in batches:
        x = eval_batch(images.to(rt.device, non_blocking=True), size, rt.channels_last)
        with rt.autocast():
            logits = model(x)
        out.append(logits.float().cpu().numpy())
    local = np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)
    return all_gather_rows(local, rt)


def validation_metrics(y: np.ndarray, logits: np.ndarray, criterion: nn.Module, label_set) -> dict[str, float]:
    """val_loss (the training criterion), accuracy, balanced accuracy, macro-F1 and macro AUROC
    over the classes of ``label_set``."""
    loss = float(criterion(torch.from_numpy(logits).float(), torch.tensor(y, dtype=torch.int64)).item())
    probs = softmax(logits)
    cls = classification_metrics(y, probs.argmax(axis=1), len(label_set))
    auroc = probability_metrics(y, probs, label_set)[0]["macro_auroc"]
    return {"val_loss": loss, "val_accuracy": cls["accuracy"], "val_balanced_accuracy": cls["balanced_accuracy"],
            "val_macro_f1": cls["macro_f1"], "val_auroc": auroc}


def _score(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else float(value)


@dataclass
class TrainState:
    """What survives between epochs (and in the checkpoint)."""

    epoch: int = 0  # last completed epoch (1-based); 0 before training
    best_epoch: int = 0
    best_score: float = -math.inf
    best_model: dict[str, torch.Tensor] | None = None
    since_best: int = 0
    done: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """None (the seed's constant lr), cosine annealing or one-cycle, stepped every batch."""
    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if recipe.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total)
    return None


def _note(rt: Runtime, message: str) -> None:
    if rt.rank == 0:
        print(f"resnet18: {message}", file=sys.stderr, flush=True)


def train(model: nn.Module, train_set: SplitImages, val_set: SplitImages, recipe: Recipe, rt: Runtime,
          ctx: RunContext, size: int, class_weights: np.ndarray | None, config: dict) -> TrainState:
    """Train ``model`` in place (ending with the best epoch's weights loaded); returns the state.

    Per epoch it reports (``ctx.report_epoch``, step = epoch) train_loss, val_loss, val_accuracy,
    val_balanced_accuracy, val_macro_f1, val_auroc, lr, epoch_seconds and images_per_second,
    then writes the checkpoint (rank 0). ``ctx.report_epoch`` may raise TrialPruned: it propagates.
    """
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    criterion_cpu = nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(rt.device),
                                    label_smoothing=recipe.label_smoothing)
    loader = train_loader(train_set, recipe.batch_size, recipe.sampler, ctx.seed, rt.rank, rt.world,
                          rt.num_workers, rt.pin_memory)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(loader))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    augment = BatchAugment(recipe.augmentation)
    aug_gen = torch.Generator()
    ddp_model: nn.Module = model
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)

    state = TrainState()
    ckpt_file = checkpoint_path(ctx.work_dir)
    label_set = train_set.split.label_set
    if ctx.resume and ckpt_file.exists():
        state = _restore(ckpt_file, model, optimizer, scheduler, scaler, rt, config, label_set)
        _note(rt, f"resuming after epoch {state.epoch} from {ckpt_file}")
    elif ctx.resume:
        _note(rt, f"--resume: no checkpoint in {ctx.work_dir}; training from the start")

    val_y = val_set.y
    saved_epoch = state.epoch  # the epoch the checkpoint on disk holds
    try:
        while not state.done and state.epoch < recipe.epochs:
            epoch = state.epoch + 1
            metrics = _train_epoch(ddp_model, model, loader, optimizer, scheduler, scaler, criterion, augment,
                                   aug_gen, rt, ctx, epoch, recipe, size)
            sync_buffers(model, rt)  # rank 0's BatchNorm statistics on every rank, before evaluating
            t_val = time.perf_counter()
            val_logits = predict_logits(model, val_set, rt, max(recipe.batch_size, 64), size)
            metrics.update(validation_metrics(val_y, val_logits, criterion_cpu, label_set))
            metrics["epoch_seconds"] += time.perf_counter() - t_val
            score = _score(metrics["val_macro_f1"])
            state.epoch = epoch
            if score > state.best_score:
                state.best_score, state.best_epoch, state.since_best = score, epoch, 0
                state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                state.since_best += 1
            state.history.append({"epoch": float(epoch), **{k: float(v) for k, v in metrics.items()}})
            ctx.report_epoch(epoch, metrics)
            early = recipe.patience > 0 and state.since_best >= recipe.patience
            state.done = early or epoch >= recipe.epochs
            if rt.rank == 0:
                _save(ckpt_file, model, optimizer, scheduler, scaler, state, config, size, label_set)
            saved_epoch = epoch
            if early and epoch < recipe.epochs:
                _note(rt, f"early stop after epoch {epoch}: no val macro-F1 gain for {recipe.patience} epochs")
    except KeyboardInterrupt:
        # what the backend knows (which checkpoint is kept); how to continue is said once, by the command
        # that was interrupted (`derma run --resume RUN`, or `derma tune ... --resume` for a trial)
        if rt.rank == 0:
            kept = f"the checkpoint of epoch {saved_epoch} is kept at {ckpt_file}" if saved_epoch else \
                "no epoch finished, so there is no checkpoint"
            _note(rt, f"interrupted: {kept}")
        raise
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return state


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler, rt: "Runtime") -> torch.Tensor:
    """One optimisation step in derma's precision: forward under autocast, loss in fp32,
    scaled backward and step. Returns the loss (the throughput benchmark times exactly this)."""
    with rt.autocast():
        logits = model(x)
    loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def _train_epoch(ddp_model, model, loader, optimizer, scheduler, scaler, criterion, augment, aug_gen, rt: Runtime,
                 ctx: RunContext, epoch: int, recipe: Recipe, size: int) -> dict[str, float]:
    # every source of randomness of this epoch is a function of (seed, epoch, rank)
    loader.sampler.set_epoch(epoch)
    aug_gen.manual_seed(epoch_seed(ctx.seed, epoch, rt.rank, 1))
    torch.manual_seed(epoch_seed(ctx.seed, epoch, rt.rank, 2))  # dropout (and CUDA) streams
    ddp_model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    seen = 0
    lr = optimizer.param_groups[0]["lr"]
    for images, labels in ctx.progress(loader, total=len(loader), desc=f"epoch {epoch}/{recipe.epochs}"):
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        x = train_batch(images, size, augment, aug_gen, rt.channels_last)
        loss = train_step(ddp_model, x, labels, criterion, optimizer, scaler, rt)
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().double() * len(labels)
        seen += len(labels)
    total_loss, total_seen = all_reduce_sum([float(loss_sum.item()), float(seen)], rt)
    seconds = time.perf_counter() - t0
    return {"train_loss": total_loss / max(total_seen, 1.0), "lr": float(lr), "epoch_seconds": seconds,
            "images_per_second": total_seen / seconds if seconds > 0 else float("nan")}


def _save(path, model, optimizer, scheduler, scaler, state: TrainState, config: dict, size: int,
          label_set) -> None:
    save_checkpoint(path, {
        "epoch": state.epoch,
        "done": state.done,
        "model": model.state_dict(),
        "best_model": state.best_model,
        "best_epoch": state.best_epoch,
        "best_score": state.best_score,
        "since_best": state.since_best,
        "history": state.history,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "image_size": int(size),
        "config": config,
        "labels": label_set.to_dict(),
    })


def _restore(path, model, optimizer, scheduler, scaler, rt: Runtime, config: dict, label_set) -> TrainState:
    ck = load_checkpoint(path)
    require_same_labels(ck, label_set, f"the checkpoint {path}",
                        "resume it on the dataset it was trained on, or start a new run")
    changed = [k for k in _TRAINING_KEYS if (ck.get("config") or {}).get(k) != config.get(k)]
    if changed:
        _note(rt, f"warning: the config differs from the checkpoint's in {', '.join(changed)}; "
                  "continuing with the current config")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    if scheduler is not None and ck.get("scheduler"):
        scheduler.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return TrainState(epoch=int(ck["epoch"]), best_epoch=int(ck["best_epoch"]), best_score=float(ck["best_score"]),
                      best_model=ck.get("best_model"), since_best=int(ck["since_best"]), done=bool(ck["done"]),
                      history=list(ck.get("history") or []))


def curves_figure(history: list[dict[str, float]], best_epoch: int):
    """Training curves: train/val loss, and val accuracy / balanced accuracy / macro-F1 / AUROC."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    for key, label in (("val_accuracy", "accuracy"), ("val_balanced_accuracy", "balanced accuracy"),
                       ("val_macro_f1", "macro-F1"), ("val_auroc", "macro AUROC")):
        ax2.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    if best_epoch:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax2.annotate(f"best epoch {best_epoch}", (best_epoch, 0.02), color="grey")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.legend(loc="lower right")
    fig.suptitle("ResNet-18 training curves")
    fig.tight_layout()
    return fig
