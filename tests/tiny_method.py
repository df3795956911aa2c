"""A method defined outside vireid, as a plugin package would define one (tests of the method registry).

It honours the method contract of ``docs/architecture.md`` with the least code: a config class, a two-layer
conv net with ``extract``, the shared cross-modal loader (``ImageMethodBase``), a forward that returns a
dataclass of per-row tensors, and an identity cross-entropy loss. The tests register it with
``vireid.register_method`` and, as an installed plugin, through a ``vireid.methods`` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vireid.config import RunConfig
from vireid.methods.base import ImageMethodBase, LossOutput


@dataclass
class TinyNetConfig:
    channels: int = 8


@dataclass
class TinyConfig(RunConfig):
    method: str = "tiny"
    net: TinyNetConfig = field(default_factory=TinyNetConfig)


@dataclass
class TinyOutput:
    embedding: torch.Tensor
    logits: torch.Tensor


class TinyNet(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.stems = nn.ModuleList([nn.Conv2d(3, channels, 3, stride=2, padding=1) for _ in range(2)])
        self.body = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.bn = nn.BatchNorm1d(channels)
        self.classifier = nn.Linear(channels, max(num_classes, 1))

    def embed(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        visible = self.stems[0](images)
        infrared = self.stems[1](images)
        per_row = torch.where((modality == 0)[:, None, None, None], visible, infrared)
        return self.bn(self.body(per_row))

    def forward(self, images: torch.Tensor, modality: torch.Tensor) -> TinyOutput:
        embedding = self.embed(images, modality)
        return TinyOutput(embedding=embedding, logits=self.classifier(embedding))

    def extract(self, images: torch.Tensor, modality: int, feature: str = "bn") -> torch.Tensor:
        rows = torch.full((len(images),), int(modality), device=images.device)
        return self.embed(images, rows)


class TinyMethod(ImageMethodBase):
    name = "tiny"
    config_class = TinyConfig

    def build_model(self, cfg: TinyConfig, num_classes: int) -> TinyNet:
        return TinyNet(cfg.net.channels, num_classes)

    def forward(self, model, batch, ctx) -> TinyOutput:
        return model(batch.images, batch.modality)

    def loss(self, out: TinyOutput, batch, ctx) -> LossOutput:
        ce = F.cross_entropy(out.logits, batch.label)
        return LossOutput(total=ce, parts={"id": ce.detach()})


METHOD = TinyMethod()
