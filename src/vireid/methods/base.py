"""The contract between the training engine and a method.

A method (``baseline``, ``idkl``, ``dakd``, ``dikdnet``) supplies: its config class, how to build its model
and its training data loader, a per-rank ``forward`` producing a typed output, and a ``loss`` over that
output. The engine runs ``forward`` on each rank's shard, gathers every per-row output field across ranks
(:func:`vireid.engine.distributed.gather_batch_fields`), then calls ``loss`` on the global batch, so a
method's objective does not change with the number of GPUs. Inference goes through ``embedder``, which
computes only the retrieval features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from vireid.engine.distributed import DistContext


@dataclass
class LossOutput:
    """The scalar to optimise and its named parts (detached copies, for logging)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        values = {"loss": float(self.total.detach())}
        values.update({k: float(v.detach()) for k, v in self.parts.items()})
        return values


@dataclass
class TrainLoader:
    """A training data loader plus the sampler the engine must drive (``set_epoch``/``set_position``)."""

    loader: Any
    sampler: Any
    images_per_batch: int
    """Images per global batch (for images/s)."""


@dataclass
class StepContext:
    """What a method's loss may need besides the batch: progress and the distributed context."""

    epoch: int
    iteration: int
    global_step: int
    dist: DistContext
    extras: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """What every method module's ``METHOD`` object provides."""

    name: str
    config_class: type
    task: str  # "vireid" (image <-> image) or "text" (text -> RGB+T pair)

    def build_model(self, cfg: Any, num_classes: int) -> torch.nn.Module: ...

    def build_train_loader(self, cfg: Any, split: Any, dist: DistContext) -> TrainLoader: ...

    def forward(self, model: torch.nn.Module, batch: Any, ctx: StepContext) -> Any: ...

    def loss(self, outputs: Any, batch: Any, ctx: StepContext) -> LossOutput: ...

    def embedder(self, model: torch.nn.Module, cfg: Any) -> Any: ...
