"""Prediction under torchrun: each rank predicts its own shard, rank 0 gathers.

Rank ``r`` of ``w`` takes rows ``r, r + w, r + 2w, ...``; no row is predicted twice. Gathering
uses ``torch.distributed.all_gather_object`` on the process group the core runner started
(gloo on the CPU, NCCL on GPUs); with one process (or none initialised) everything is local.
"""

from __future__ import annotations

from typing import Any


def is_distributed(world_size: int) -> bool:
    """Whether a process group of more than one rank is active."""
    if world_size <= 1:
        return False
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized()


def shard(items: list, rank: int, world_size: int) -> list:
    """This rank's share of ``items`` (strided, so shards differ in size by at most one)."""
    return list(items)[rank::world_size] if world_size > 1 else list(items)


def gather_dicts(part: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Every rank's ``part`` merged (on every rank); ``part`` itself without a process group."""
    if not is_distributed(world_size):
        return dict(part)
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, part)
    merged: dict[str, Any] = {}
    for p in parts:
        merged.update(p)
    return merged


def barrier(world_size: int) -> None:
    """Wait for every rank (a no-op without a process group)."""
    if is_distributed(world_size):
        import torch.distributed as dist

        dist.barrier()
