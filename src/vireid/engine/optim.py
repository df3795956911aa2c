"""Optimisers with per-group learning-rate multipliers, and epoch-based learning-rate schedules.

Models expose ``param_groups()``, a list of :class:`ParamGroup`. A group named ``backbone`` gets
``optim.backbone_lr_mult`` (AGW trains the pretrained layers at 0.1 x the heads' rate); other groups use
their own ``lr_mult`` (DIKDNet's IRRA recipe gives new modules x5 and biases x2 with no weight decay).
Schedules return a factor per 0-based epoch and are applied with ``LambdaLR`` stepped once per epoch, so
the schedule state is part of the resumable trainer state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from vireid.config import OptimConfig, SchedConfig
from vireid.errors import ConfigError


@dataclass
class ParamGroup:
    """Parameters that share a learning-rate multiplier and (optionally) a weight-decay override."""

    name: str
    params: list[torch.nn.Parameter] = field(default_factory=list)
    lr_mult: float | None = None
    weight_decay: float | None = None


def build_optimizer(
    cfg: OptimConfig, groups: list[ParamGroup] | dict[str, list[torch.nn.Parameter]]
) -> torch.optim.Optimizer:
    """Build the optimiser of ``cfg`` over trainable parameters of ``groups`` (frozen ones are skipped).

    ``groups`` is a list of :class:`ParamGroup` or a ``{name: params}`` dict (as ``AGWNet.param_groups``).
    """
    if isinstance(groups, dict):
        groups = [ParamGroup(name, list(params)) for name, params in groups.items()]
    torch_groups = []
    seen: set[int] = set()
    for group in groups:
        params = [p for p in group.params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if not params:
            continue
        mult = (
            group.lr_mult if group.lr_mult is not None else (cfg.backbone_lr_mult if group.name == "backbone" else 1.0)
        )
        entry = {"params": params, "lr": cfg.lr * mult, "name": group.name, "lr_mult": mult}
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        torch_groups.append(entry)
    if not torch_groups:
        raise ConfigError("the model has no trainable parameters; check which parts are frozen.")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            torch_groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "adam":
        # Coupled L2 weight decay, as in the IDKL / MCE / DAKD releases (torch Adam's weight_decay).
        return torch.optim.Adam(torch_groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(torch_groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimiser '{cfg.name}'; use sgd, adam or adamw.")  # pragma: no cover


def lr_factor(cfg: SchedConfig, epoch: int, total_epochs: int) -> float:
    """Learning-rate factor for 0-based ``epoch``.

    - ``warmup_step``: warm-up, then x gamma at each milestone reached (AGW: 0.1 at 20, 0.01 at 50).
    - ``multistep``: milestones only, no warm-up (IDKL: x0.1 at 55 and 95).
    - ``cosine``: warm-up, then half a cosine from 1 down to ``min_lr_factor`` at the last epoch (IRRA).
    - ``constant``: warm-up, then 1 (DAKD student).
    """
    warm = 0 if cfg.name == "multistep" else cfg.warmup_epochs
    if epoch < warm:
        if cfg.warmup_curve == "agw":
            return (epoch + 1) / warm
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * epoch / warm
    if cfg.name in ("warmup_step", "multistep"):
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    if cfg.name == "cosine":
        span = max(1, total_epochs - warm)
        progress = min(1.0, (epoch - warm) / span)
        return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    cfg: SchedConfig, optimizer: torch.optim.Optimizer, total_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch by the trainer."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e, total_epochs))
