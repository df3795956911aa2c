"""AGW / CAJ baseline: two-stream ResNet with non-local blocks, GeM, BNNeck; CE + WRT / ADP / triplet.

See ``../shared/specs/method-baseline.md``. This module wires shared blocks (``vireid.models.agw``,
``vireid.losses``) and owns the baseline's loss composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vireid.config import ModelConfig, RunConfig


@dataclass
class IdLossConfig:
    weight: float = 1.0
    label_smoothing: float = 0.0


@dataclass
class TripletLossConfig:
    margin: float = 0.3


@dataclass
class AdpLossConfig:
    alpha: float = 1.0
    gamma: float = 1.0
    square: int = 1


@dataclass
class BaselineLossConfig:
    id: IdLossConfig = field(default_factory=IdLossConfig)
    metric: Literal["wrt", "adp", "triplet", "none"] = "wrt"
    metric_weight: float = 1.0
    triplet: TripletLossConfig = field(default_factory=TripletLossConfig)
    adp: AdpLossConfig = field(default_factory=AdpLossConfig)


@dataclass
class CajConfig:
    kl_weight: float = 0.0
    """CAJ's optional logit KL between visible-A and the paired thermal rows (``--kl``), off by default."""
    kl_temperature: float = 3.0


@dataclass
class BaselineConfig(RunConfig):
    method: str = "baseline"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: BaselineLossConfig = field(default_factory=BaselineLossConfig)
    caj: CajConfig = field(default_factory=CajConfig)


class BaselineMethod:
    name = "baseline"
    config_class = BaselineConfig


METHOD = BaselineMethod()
