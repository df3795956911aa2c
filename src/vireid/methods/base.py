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
    """The scalar to optimise, its named parts (detached copies, for logging) and diagnostics.

    ``parts`` add up to ``total``; ``diagnostics`` are logged values that are not terms of the loss (for
    example a cosine or a gradient norm a method wants to watch).
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """The weighted parts *with* their autograd graphs (``parts`` are detached copies): what a diagnostic
    differentiates term by term (``benchmarks/loss_term_gradients.py``). Empty where a method does not expose
    them; the trainer never reads it."""

    def scalars(self) -> dict[str, float]:
        values = {"loss": float(self.total.detach())}
        values.update({k: float(v.detach()) for k, v in self.parts.items()})
        values.update({k: float(v.detach()) for k, v in self.diagnostics.items()})
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
    cfg: Any = None
    """The run's config (a method reads its own sections from it)."""
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


class ImageEmbedder:
    """Retrieval features of an image model for the protocol runner: ``model.extract`` only, no losses.

    ``embed_images(images, modality)`` routes the batch through the stem of ``modality`` and returns the
    configured feature (``eval.feature``); the runner L2-normalises.
    """

    def __init__(self, model: torch.nn.Module, feature: str = "bn"):
        self.model = model
        self.feature = feature

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, modality) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model.extract(images, int(modality), feature=self.feature)
        finally:
            self.model.train(was_training)

    __call__ = embed_images


class ImageMethodBase:
    """Shared wiring of the image-to-image VI-ReID methods (baseline, IDKL, DAKD).

    Subclasses set ``name``/``config_class`` and implement ``build_model``, ``forward`` and ``loss``.
    """

    task = "vireid"

    def build_train_loader(self, cfg: Any, split: Any, dist: DistContext) -> TrainLoader:
        import dataclasses

        from vireid.data.datasets import build_cross_modal_loader

        if cfg.train.iters_per_epoch > 0:  # CPU demos cap the epoch length
            cfg = dataclasses.replace(
                cfg, sampler=dataclasses.replace(cfg.sampler, epoch_length=str(cfg.train.iters_per_epoch))
            )
        loader = build_cross_modal_loader(
            split.records,
            cfg,
            rank=dist.rank,
            world_size=dist.world_size,
            cache_dir=cfg.data.cache_dir,
        )
        views = loader.dataset.views
        per_draw = views.num_visible_views + views.num_infrared_views
        return TrainLoader(
            loader=loader, sampler=loader.batch_sampler, images_per_batch=cfg.sampler.P * cfg.sampler.K * per_draw
        )

    def embedder(self, model: torch.nn.Module, cfg: Any) -> ImageEmbedder:
        return ImageEmbedder(model, feature=cfg.eval.feature)

    def test_transform(self, cfg: Any):
        from vireid.data.transforms import build_test_transform

        interpolation = "bilinear" if cfg.aug.preset == "idkl" else "lanczos"
        return build_test_transform(cfg.data.height, cfg.data.width, interpolation=interpolation)
