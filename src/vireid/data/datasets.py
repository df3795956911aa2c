"""Torch datasets for training (cross-modal draws) and evaluation (plain image lists).

Training: :class:`CrossModalTrainDataset` receives :class:`~vireid.data.samplers.SamplerDraw` objects from
the batch sampler (the DataLoader passes whatever the batch sampler yields), loads the visible and infrared
image of the draw, and runs every view's pipeline under a seed derived from the draw's ``aug_seed``, so
the tensors of a draw are a pure function of (seed, epoch, position): identical for any number of
workers and after a resume. :func:`collate_cross_modal` turns the per-draw samples into a
:class:`~vireid.data.batch.CrossModalBatch` with every pairing field filled.

Evaluation: :class:`ImageListDataset` returns (tensor, index) for feature extraction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vireid.config import RunConfig
from vireid.data.batch import CrossModalBatch
from vireid.data.cache import CrossModalCache, ImageCache, build_cross_modal_cache, decode_resized
from vireid.data.image_io import load_image
from vireid.data.records import ImageRecord, Modality
from vireid.data.samplers import CrossModalityIdentitySampler, SamplerDraw
from vireid.data.transforms.presets import TrainViews, build_train_views
from vireid.data.transforms.seeding import derive_seed, seeded
from vireid.errors import ConfigError, DataError


@dataclass
class CrossModalSample:
    """Everything one sampler draw contributes to a batch.

    Shapes: ``visible`` (V_vis, 3, H, W), one row per visible view; ``infrared`` (V_ir, 3, H, W).
    """

    visible: torch.Tensor
    infrared: torch.Tensor
    label: int
    vis_camid: int
    ir_camid: int
    pair_index: int
    slot: int
    inst: int


def view_seed(aug_seed: int, modality: Modality, view: int) -> int:
    """Seed of one view of one draw: every (modality, view) draws its own randomness."""
    return derive_seed(aug_seed, int(modality), view)


class CrossModalTrainDataset(Dataset):
    """Visible-infrared training images addressed by sampler draws.

    The records are split into a visible list and an infrared list (record order kept); these two index
    spaces are what :class:`~vireid.data.samplers.CrossModalityIdentitySampler` indexes
    (``visible_labels`` / ``infrared_labels`` are its inputs).

    Args:
        records: training records with contiguous labels (``label >= 0``).
        views: the view pipelines (:func:`~vireid.data.transforms.build_train_views`).
        height, width: input size; default (and must equal) ``views.height`` / ``views.width``.
        cache: pre-resized images of exactly these records (:func:`~vireid.data.cache.build_cross_modal_cache`);
            ``None`` decodes and resizes the files on every access.
        gray3_infrared: decode infrared images as grayscale x3 (``data.thermal_gray3``; uncached path only,
            the cache is built with its own flag).

    ``dataset[draw]`` returns a :class:`CrossModalSample`.

    Raises:
        DataError: a record without a training label, or a cache that does not match the records.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        views: TrainViews,
        height: int | None = None,
        width: int | None = None,
        cache: CrossModalCache | None = None,
        *,
        gray3_infrared: bool = False,
    ):
        height = views.height if height is None else height
        width = views.width if width is None else width
        if (height, width) != (views.height, views.width):
            raise ConfigError(
                f"dataset size {height}x{width} differs from the views' {views.height}x{views.width}.",
                fix="build the views with the same data.height/data.width.",
            )
        for r in records:
            if r.label < 0:
                raise DataError(
                    f"training record {r.path} has no training label (label={r.label}).",
                    fix="use the reader's training split, whose records carry contiguous labels.",
                )
        self.views, self.height, self.width = views, height, width
        self.visible = [r for r in records if r.modality == Modality.VISIBLE]
        self.infrared = [r for r in records if r.modality == Modality.INFRARED]
        self.gray3_infrared = gray3_infrared
        if cache is not None:
            for name, recs, part in (
                ("visible", self.visible, cache.visible),
                ("infrared", self.infrared, cache.infrared),
            ):
                if [r.path for r in recs] != part.paths or (part.height, part.width) != (height, width):
                    raise DataError(
                        f"the {name} image cache {part.index_path} does not match these training records or size.",
                        fix="build the cache from the same records with build_cross_modal_cache.",
                    )
        self.cache = cache

    @property
    def visible_labels(self) -> list[int]:
        return [r.label for r in self.visible]

    @property
    def infrared_labels(self) -> list[int]:
        return [r.label for r in self.infrared]

    def __len__(self) -> int:
        return len(self.visible) + len(self.infrared)

    def load(self, modality: Modality, index: int) -> Image.Image:
        """The pre-resized (H x W) RGB image ``index`` of ``modality``, from the cache or decoded."""
        if self.cache is not None:
            part: ImageCache = self.cache.visible if modality == Modality.VISIBLE else self.cache.infrared
            return part.image(index)
        record = (self.visible if modality == Modality.VISIBLE else self.infrared)[index]
        gray3 = self.gray3_infrared and modality == Modality.INFRARED
        return decode_resized(record.path, self.height, self.width, self.views.interpolation, gray3)

    def _views(self, img: Image.Image, pipelines: Sequence[Callable], aug_seed: int, modality: Modality):
        out = []
        for v, pipe in enumerate(pipelines):
            with seeded(view_seed(aug_seed, modality, v)):
                out.append(pipe(img))
        return torch.stack(out)

    def __getitem__(self, draw: SamplerDraw) -> CrossModalSample:
        if not isinstance(draw, tuple) or len(draw) != len(SamplerDraw._fields):
            raise TypeError(
                f"CrossModalTrainDataset is indexed by SamplerDraw, got {draw!r}; "
                "use CrossModalityIdentitySampler as the DataLoader's batch_sampler"
            )
        draw = SamplerDraw(*draw)
        vis_rec, ir_rec = self.visible[draw.vis_index], self.infrared[draw.ir_index]
        if vis_rec.label != ir_rec.label:
            raise DataError(
                f"draw {draw.pair_index} pairs {vis_rec.path} (label {vis_rec.label}) with {ir_rec.path} "
                f"(label {ir_rec.label}); a draw must pair images of one identity.",
                fix="build the sampler from this dataset's visible_labels and infrared_labels.",
            )
        vis = self._views(
            self.load(Modality.VISIBLE, draw.vis_index), self.views.visible, draw.aug_seed, Modality.VISIBLE
        )
        ir = self._views(
            self.load(Modality.INFRARED, draw.ir_index), self.views.infrared, draw.aug_seed, Modality.INFRARED
        )
        return CrossModalSample(
            visible=vis,
            infrared=ir,
            label=vis_rec.label,
            vis_camid=vis_rec.camid,
            ir_camid=ir_rec.camid,
            pair_index=draw.pair_index,
            slot=draw.slot,
            inst=draw.inst,
        )


def collate_cross_modal(samples: Sequence[CrossModalSample]) -> CrossModalBatch:
    """Assemble draws into a :class:`CrossModalBatch`.

    Row order: visible view 0 of every draw, then visible view 1 (CAJ's channel-augmented B), ..., then
    infrared view 0 (and further infrared views). Every field (label, modality, view, pair_index, slot,
    inst, camid) is filled, so ``batch.pair_rows(view)`` pairs each visible row of ``view`` with the
    infrared row of the same draw. Shapes: ``images`` (B * (V_vis + V_ir), 3, H, W).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n = len(samples)
    vis = torch.stack([s.visible for s in samples], dim=1)  # (V_vis, n, 3, H, W)
    ir = torch.stack([s.infrared for s in samples], dim=1)  # (V_ir, n, 3, H, W)
    n_vis, n_ir = vis.shape[0], ir.shape[0]

    def column(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    label = column([s.label for s in samples])
    pair_index = column([s.pair_index for s in samples])
    slot = column([s.slot for s in samples])
    inst = column([s.inst for s in samples])
    vis_cam = column([s.vis_camid for s in samples])
    ir_cam = column([s.ir_camid for s in samples])
    views = n_vis + n_ir
    return CrossModalBatch(
        images=torch.cat([vis.flatten(0, 1), ir.flatten(0, 1)]),
        label=label.repeat(views),
        modality=torch.cat([torch.zeros(n * n_vis, dtype=torch.int64), torch.ones(n * n_ir, dtype=torch.int64)]),
        view=torch.cat([torch.arange(n_vis).repeat_interleave(n), torch.arange(n_ir).repeat_interleave(n)]).to(
            torch.int64
        ),
        pair_index=pair_index.repeat(views),
        slot=slot.repeat(views),
        inst=inst.repeat(views),
        camid=torch.cat([vis_cam.repeat(n_vis), ir_cam.repeat(n_ir)]),
    )


class ImageListDataset(Dataset):
    """Images of a record list through one transform, for feature extraction.

    ``dataset[i]`` is ``(transform(image_i), i)``: the index lets the extractor put features back in
    record order whatever the loader does. The transform takes an RGB ``PIL.Image``.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        gray3_infrared: bool = False,
    ):
        self.records = list(records)
        self.transform = transform
        self.gray3_infrared = gray3_infrared

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        gray3 = self.gray3_infrared and record.modality == Modality.INFRARED
        return self.transform(load_image(record.path, gray3=gray3)), index


def _worker_init(_: int) -> None:
    # One intra-op thread per worker: the workers already use the cores, more threads only contend.
    torch.set_num_threads(1)


def build_cross_modal_loader(
    records: Sequence[ImageRecord],
    cfg: RunConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """The training DataLoader of a VI-ReID run: views, optional cache, sampler, collate, workers.

    Uses ``cfg.data`` (size, workers, cache, thermal_gray3), ``cfg.sampler``, ``cfg.aug``, ``cfg.cutswap``
    and ``cfg.train.seed``. ``loader.batch_sampler`` is the :class:`CrossModalityIdentitySampler`: call its
    ``set_epoch(epoch, position)`` before each epoch. ``loader.dataset.views.describe()`` lists the views.
    Each rank yields ``P / world_size`` identities per batch.

    Args:
        cache_dir: folder of the pre-resized cache when ``cfg.data.cache`` is true (default
            ``cfg.data.cache_dir``; the trainer passes ``<run>/cache``).
        pin_memory: default: pin when CUDA is available.

    Raises:
        ConfigError: ``data.cache`` is true but no cache folder is given, or a sampler/augmentation setting
            is invalid.
    """
    data = cfg.data
    views = build_train_views(cfg.aug, cfg.cutswap, data.height, data.width)
    cache = None
    if data.cache:
        where = cache_dir or data.cache_dir
        if not where:
            raise ConfigError(
                "data.cache is true but no cache folder is set.", fix="set data.cache_dir (or pass cache_dir)."
            )
        cache = build_cross_modal_cache(
            records,
            where,
            data.height,
            data.width,
            interpolation=views.interpolation,
            gray3_infrared=data.thermal_gray3,
            workers=max(1, data.workers),
        )
    dataset = CrossModalTrainDataset(records, views, cache=cache, gray3_infrared=data.thermal_gray3)
    sampler = CrossModalityIdentitySampler(
        dataset.visible_labels,
        dataset.infrared_labels,
        cfg.sampler.P,
        cfg.sampler.K,
        epoch_length=cfg.sampler.epoch_length,
        mode=cfg.sampler.mode,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = max(0, data.workers)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_cross_modal,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        # Every new iterator (each epoch) draws a base seed from this generator; a private one keeps that draw
        # out of the global torch RNG, which dropout uses and which a resumed run restores mid-epoch.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
