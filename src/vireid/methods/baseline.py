"""AGW / CAJ baseline: two-stream ResNet with non-local blocks, GeM, BNNeck; CE + WRT / ADP / triplet.

See ``../shared/specs/method-baseline.md``. This module wires shared blocks (``vireid.models.agw``,
``vireid.losses``) and owns the baseline's loss composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from vireid.config import ModelConfig, RunConfig, bounded
from vireid.data.batch import CrossModalBatch
from vireid.losses import (
    adaptive_weighted_triplet,
    batch_hard_triplet,
    cross_entropy_ls,
    kl_div_temperature,
    weighted_regularized_triplet,
)
from vireid.methods.base import ImageMethodBase, LossOutput, StepContext
from vireid.models.agw import AGWNet
from vireid.models.outputs import ReIDOutput


@dataclass
class IdLossConfig:
    weight: float = bounded(1.0, ge=0.0)
    label_smoothing: float = bounded(0.0, ge=0.0, lt=1.0)


@dataclass
class TripletLossConfig:
    margin: float = bounded(0.3, ge=0.0)


@dataclass
class AdpLossConfig:
    alpha: float = bounded(1.0, ge=0.0)
    gamma: float = bounded(1.0, ge=0.0)
    square: int = bounded(1, ge=0, le=1)


@dataclass
class BaselineLossConfig:
    id: IdLossConfig = field(default_factory=IdLossConfig)
    metric: Literal["wrt", "adp", "triplet", "none"] = "wrt"
    metric_weight: float = bounded(1.0, ge=0.0)
    triplet: TripletLossConfig = field(default_factory=TripletLossConfig)
    adp: AdpLossConfig = field(default_factory=AdpLossConfig)


@dataclass
class CajConfig:
    kl_weight: float = bounded(0.0, ge=0.0)
    """CAJ's optional logit KL between visible-A and the paired thermal rows (``--kl``), off by default."""
    kl_temperature: float = bounded(3.0, gt=0.0)


@dataclass
class BaselineConfig(RunConfig):
    method: str = "baseline"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: BaselineLossConfig = field(default_factory=BaselineLossConfig)
    caj: CajConfig = field(default_factory=CajConfig)


class BaselineMethod(ImageMethodBase):
    """AGW (CE + WRT), CAJ (CE + ADP on three views, optional logit KL) and AGW-base (CE + triplet)."""

    name = "baseline"
    config_class = BaselineConfig

    def build_model(self, cfg: BaselineConfig, num_classes: int) -> AGWNet:
        return AGWNet(cfg.model, num_classes)

    def forward(self, model, batch: CrossModalBatch, ctx: StepContext) -> ReIDOutput:
        return model(batch.images, batch.modality)

    def loss(self, out: ReIDOutput, batch: CrossModalBatch, ctx: StepContext) -> LossOutput:
        lc = ctx.cfg.loss
        parts: dict[str, torch.Tensor] = {}
        label = batch.label
        parts["id"] = lc.id.weight * cross_entropy_ls(out.logits, label, lc.id.label_smoothing)
        if lc.metric == "wrt":
            parts["wrt"] = lc.metric_weight * weighted_regularized_triplet(out.pooled, label)
        elif lc.metric == "adp":
            parts["adp"] = lc.metric_weight * adaptive_weighted_triplet(
                out.pooled, label, alpha=lc.adp.alpha, gamma=lc.adp.gamma, square=lc.adp.square
            )
        elif lc.metric == "triplet":
            parts["triplet"] = lc.metric_weight * batch_hard_triplet(out.pooled, label, margin=lc.triplet.margin)
        caj = ctx.cfg.caj
        if caj.kl_weight > 0:
            # CAJ --kl: visible view A against the detached logits of the paired thermal rows (T = 3).
            iv, ii = batch.pair_rows(view=0)
            kl = kl_div_temperature(out.logits[iv], out.logits[ii].detach(), caj.kl_temperature, target_eps=1e-7)
            parts["kl"] = caj.kl_weight * kl
        total = torch.stack(list(parts.values())).sum()
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()}, terms=parts)


METHOD = BaselineMethod()
