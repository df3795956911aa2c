"""Distributed (DDP) context and the row gathering that makes batch-level losses global.

vireid runs the same code on one process and under ``torchrun``. Losses such as the batch-hard triplet,
WRT or IDKL's graph alignment look at the whole batch, so computing them on each rank's shard would change
the objective with the number of GPUs. The engine therefore gathers every per-row output of the model
across ranks (with gradients, :func:`gather_rows`) before the loss runs: every rank computes the loss of the
global batch, and the gradient that reaches each rank's parameters equals the single-process gradient once
DDP averages it (the backward of ``all_gather`` sums the identical per-rank gradients, and DDP divides by
the world size).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL is used on CUDA, gloo on the CPU. Without ``torchrun`` this returns a single-process context.
    ``device`` overrides the automatic choice (``cuda:<local_rank>`` when CUDA is available, else CPU).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        from vireid.devices import resolve_device

        dev = resolve_device(device)  # an unavailable device is one clear error, not a CUDA traceback
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)  # under torchrun each rank takes its own GPU
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (rows along dim 0) from every rank, in rank order, keeping gradients.

    All ranks must pass the same number of rows. Identity when not distributed.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    if tensor.requires_grad:
        parts = all_gather(tensor)
    else:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(list(parts), dim=0)


def gather_batch_fields(obj, num_rows: int, exclude: tuple[str, ...] = ()):
    """Apply :func:`gather_rows` to every tensor field of a dataclass whose first dimension is ``num_rows``.

    Fields that are not per-row (scalars, prototypes, ``None``) and fields named in ``exclude`` (e.g. the
    batch's images, which no loss needs) are left as they are.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    changes = {}
    for f in dataclasses.fields(obj):
        if f.name in exclude:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_rows:
            changes[f.name] = gather_rows(value)
    return dataclasses.replace(obj, **changes)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
