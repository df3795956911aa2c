"""Per-identity mean embeddings over all training images: MCE's memories and DAKD's class prototypes.

Both recipes summarise every training identity by the ℓ2-normalised mean of the ℓ2-normalised embeddings
of its training images, computed with a network in eval mode and the test transform, separately per
*image group*:

- ``rgb``: visible images; ``ir``: infrared images;
- ``ca``: visible images with CAJ's ChannelExchange(gray=2) applied after the test transform (MCE's
  channel-augmented memory; the channel is drawn per image from a seed, so the memory does not depend on
  the number of workers).

MCE rebuilds its memories at the start of every epoch with the network being trained; DAKD computes its
prototypes once with the frozen teacher (method-dakd.md sections 2.2 and 3.4).

Images come from the run's :class:`~vireid.data.datasets.CrossModalTrainDataset`, whose ``load`` returns the
image pre-resized to H x W with the run's filter (from the memory-mapped cache when ``data.cache`` is on).
ToTensor and Normalize then complete exactly the test transform (Resize -> ToTensor -> Normalize): the
pre-resize uses the same PIL filter as the test transform's Resize.

Each image is decoded once for all the groups of its modality. Under DDP each rank embeds a disjoint share
of the images and the per-identity sums and counts are summed across ranks, so every rank ends with the
same means at 1/world of the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vireid.data.records import Modality
from vireid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ChannelExchange, derive_seed, seeded
from vireid.errors import DataError

Embed = Callable[[torch.Tensor, int], torch.Tensor]
"""``embed(images (B, 3, H, W), modality) -> (B, D)`` retrieval embeddings of a network in eval mode."""


@dataclass(frozen=True)
class ImageGroup:
    """A set of training images summarised separately: a modality, optionally channel-exchanged."""

    name: str
    modality: Modality
    channel_exchange: bool = False


RGB = ImageGroup("rgb", Modality.VISIBLE)
IR = ImageGroup("ir", Modality.INFRARED)
CA = ImageGroup("ca", Modality.VISIBLE, channel_exchange=True)


class GroupImages(Dataset):
    """Every training image through the test transform, once per group that uses its modality.

    Item ``k`` is one decoded training image and every group view of it: ``(images (V, 3, H, W), label,
    group indices (V,))``; a visible image yields its ``rgb`` and ``ca`` views from a single decode.
    Use :func:`collate_group_images` to batch items.

    Args:
        source: the run's training dataset (``trainer.train_loader.loader.dataset``); any object with
            ``visible`` / ``infrared`` record lists and ``load(modality, index) -> PIL image (H x W)``.
        groups: the groups to produce (their order is the output order of the means).
        seed: seed of the ChannelExchange draws of ``ca`` views (image ``i`` of group ``g`` uses
            ``derive_seed(seed, g, i)``).
    """

    def __init__(self, source, groups: Sequence[ImageGroup], seed: int = 0):
        self.source = source
        self.groups = tuple(groups)
        self.seed = int(seed)
        self.items: list[tuple[Modality, int]] = []
        for modality in (Modality.VISIBLE, Modality.INFRARED):
            if any(g.modality == modality for g in self.groups):
                self.items.extend((modality, i) for i in range(len(self._records(modality))))
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.exchange = ChannelExchange(gray=2)

    def _records(self, modality: Modality):
        return self.source.visible if modality == Modality.VISIBLE else self.source.infrared

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        modality, index = self.items[k]
        image = self.to_tensor(self.source.load(modality, index))
        views, group_ids = [], []
        for g, group in enumerate(self.groups):
            if group.modality != modality:
                continue
            view = image
            if group.channel_exchange:
                with seeded(derive_seed(self.seed, g, index)):
                    view = self.exchange(image)
            views.append(view)
            group_ids.append(g)
        label = self._records(modality)[index].label
        return torch.stack(views), label, torch.tensor(group_ids, dtype=torch.int64)


def collate_group_images(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate :class:`GroupImages` items: images (N, 3, H, W), labels (N,), group indices (N,)."""
    images = torch.cat([views for views, _, _ in items])
    labels = torch.cat([torch.full((len(g),), label, dtype=torch.int64) for _, label, g in items])
    groups = torch.cat([g for _, _, g in items])
    return images, labels, groups


def identity_mean_embeddings(
    embed: Embed,
    source,
    groups: Sequence[ImageGroup],
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    workers: int = 0,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(G, num_classes, D): per group g and label k, ℓ2(mean over images of ℓ2(embed(image))).

    ``batch_size`` counts decoded images (a visible image with ``rgb`` and ``ca`` views adds two rows).
    ``embed`` must already be in eval mode; it runs under ``no_grad`` (and autocast with
    ``autocast_dtype`` when given; sums are accumulated in float32). Under DDP (an initialised process
    group) each rank embeds every ``world``-th image and the sums are all-reduced.

    Raises:
        DataError: a label in ``0..num_classes-1`` has no image in some group.
    """
    import torch.distributed as dist

    dataset = GroupImages(source, groups, seed=seed)
    indices = list(range(len(dataset)))
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        indices = indices[dist.get_rank() :: dist.get_world_size()]
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        collate_fn=collate_group_images,
        shuffle=False,
        num_workers=max(0, workers),
        pin_memory=torch.device(device).type == "cuda",
    )
    sums: torch.Tensor | None = None
    counts = torch.zeros(len(groups), num_classes, dtype=torch.float32, device=device)
    device_type = torch.device(device).type
    modality_of_group = torch.tensor([int(g.modality) for g in groups], device=device)
    with torch.no_grad():
        for images, labels, group_ids in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device)
            group_ids = group_ids.to(device)
            # One forward per modality present (the views of every group of that modality together).
            for modality in sorted({int(groups[g].modality) for g in group_ids.unique().tolist()}):
                rows = torch.nonzero(modality_of_group[group_ids] == modality).flatten()
                with torch.autocast(
                    device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
                ):
                    feats = embed(images[rows], modality)
                feats = F.normalize(feats.float(), dim=1)
                if sums is None:
                    sums = torch.zeros(len(groups), num_classes, feats.shape[1], dtype=torch.float32, device=device)
                flat = group_ids[rows] * num_classes + labels[rows]  # (group, label) cell of every row
                sums.view(-1, feats.shape[1]).index_add_(0, flat, feats)
                counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
    if distributed:
        dims = torch.tensor([0 if sums is None else sums.shape[2]], device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        if sums is None:
            sums = torch.zeros(len(groups), num_classes, int(dims.item()), dtype=torch.float32, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    if sums is None:
        raise DataError("there are no training images to summarise per identity.")
    empty = (counts == 0).nonzero().tolist()
    if empty:
        g, label = empty[0]
        raise DataError(
            f"training label {label} has no '{groups[g].name}' image, so its mean embedding is undefined "
            f"({len(empty)} empty (group, label) cells in all).",
            fix="use the reader's training split, which drops identities seen in one modality only.",
        )
    return F.normalize(sums / counts.unsqueeze(-1), dim=-1)
