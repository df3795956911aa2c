"""Training data for text -> RGB+thermal pair retrieval: caption draws -> tokens + augmented image pairs.

:class:`~vireid.data.samplers.CaptionIdentitySampler` yields P identities x K captions per batch
(:class:`~vireid.data.samplers.CaptionDraw`). For every draw :class:`TextPairTrainDataset` returns

- the caption's tokens (and those of its colour-free variant, and optionally an MLM-corrupted copy),
- the *anchor* pair (the RGB+TIR pair the caption describes) and, for multi-view teachers
  (method-dikdnet.md 5.2), V - 1 further pairs of the same identity drawn without replacement (reused
  with fresh augmentation when the identity has too few),

each pair through :class:`~vireid.data.transforms.PairedTrainTransform` (the same flip and crop for the two
images of a pair). Every random choice of a draw (extra views, augmentation of each view, MLM corruption)
is seeded from the draw's ``aug_seed`` with :func:`~vireid.data.transforms.seeding.derive_seed`, so a batch
is a pure function of (seed, epoch, position): identical for any number of workers and after a resume.

:func:`collate_text_pairs` stacks the draws into a :class:`TextPairBatch`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch.utils.data import DataLoader, Dataset

from vireid.data.image_io import load_image
from vireid.data.records import CaptionRecord, ImageRecord
from vireid.data.samplers import CaptionDraw, CaptionIdentitySampler
from vireid.data.transforms.paired import PairedTrainTransform
from vireid.data.transforms.seeding import derive_seed, seeded
from vireid.errors import DataError

_STREAM_VIEWS = 0x51
_STREAM_VIEW_AUG = 0x52
_STREAM_MLM = 0x53


@dataclass
class TextPairBatch:
    """A text -> RGB+T training batch: one row per caption draw.

    Shapes (B draws, V views, L tokens, H x W images):

    Attributes:
        images: (B, V, 2, 3, H, W) normalised images; ``[:, v, 0]`` RGB and ``[:, v, 1]`` thermal of view v.
            View 0 is the anchor pair (the pair the caption describes); views 1.. are other pairs of the
            same identity (multi-view teacher input). One tensor so that DDP row gathering can skip it.
        tokens: (B, L) int64 caption token ids; ``attention_mask`` (B, L) bool, True on real tokens.
        no_color_tokens, no_color_mask: (B, L) the colour-free caption (equal to the caption when the
            dataset has none).
        mlm_tokens, mlm_labels: (B, L) MLM-corrupted ids and targets (0 = not a target), or ``None`` when
            masked-language modelling is off.
        label: (B,) contiguous identity label.
        pair_index: (B,) index of the anchor pair in the training split's records.
        view_pair_index: (B, V) pair index of every view (column 0 equals ``pair_index``).
        caption_index: (B,) index of the caption in the training split's captions.
        sample_index: (B,) global position of the draw in the epoch (unique, identical on every rank).
        slot: (B,) identity slot inside the batch; ``inst`` (B,) draw index inside the slot.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    no_color_tokens: torch.Tensor
    no_color_mask: torch.Tensor
    label: torch.Tensor
    pair_index: torch.Tensor
    view_pair_index: torch.Tensor
    caption_index: torch.Tensor
    sample_index: torch.Tensor
    slot: torch.Tensor
    inst: torch.Tensor
    mlm_tokens: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.images.shape[1])

    @property
    def rgb(self) -> torch.Tensor:
        """(B, 3, H, W) RGB image of the anchor pair."""
        return self.images[:, 0, 0]

    @property
    def thermal(self) -> torch.Tensor:
        """(B, 3, H, W) thermal image of the anchor pair."""
        return self.images[:, 0, 1]

    def _map(self, fn) -> TextPairBatch:
        return replace(
            self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TextPairBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TextPairBatch:
        """Page-locked copy of every field (the DataLoader calls this when ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def index_select(self, index: torch.Tensor) -> TextPairBatch:
        """Rows ``index`` of every field (tests permute batches with it)."""
        return self._map(lambda t: t[index])


@dataclass
class TextPairSample:
    """What one caption draw contributes to a batch (see :class:`TextPairBatch` for the fields)."""

    images: torch.Tensor  # (V, 2, 3, H, W)
    tokens: torch.Tensor  # (L,)
    attention_mask: torch.Tensor
    no_color_tokens: torch.Tensor
    no_color_mask: torch.Tensor
    mlm_tokens: torch.Tensor | None
    mlm_labels: torch.Tensor | None
    label: int
    pair_index: int
    view_pairs: tuple[int, ...]
    caption_index: int
    sample_index: int
    slot: int
    inst: int


class TextPairTrainDataset(Dataset):
    """Caption draws -> tokens and augmented RGB+T pairs (anchor view + V - 1 same-identity views).

    Args:
        records: training pair records (``pair_path`` set, contiguous ``label``), the split's ``records``.
        captions: the split's :class:`CaptionRecord` list (``pair_index`` indexes ``records``).
        tokenizer: any vireid tokeniser (``encode(list[str]) -> TokenBatch``); captions are tokenised once.
        transform: the paired training transform (same geometry for both images of a pair).
        views: V, pairs per draw (1 = anchor only; teachers use 2).
        mlm_probability: corrupt tokens for masked-language modelling with this probability (``None`` = off).
        gray3_thermal: decode thermal images as grayscale x 3 (``data.thermal_gray3``, RGBT-PEDE behaviour).

    ``dataset[draw]`` returns a :class:`TextPairSample`.

    Raises:
        DataError: a record without ``pair_path`` or training label, or a caption whose pair index or label
            does not match the records.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        captions: Sequence[CaptionRecord],
        tokenizer,
        transform: PairedTrainTransform,
        *,
        views: int = 1,
        mlm_probability: float | None = None,
        gray3_thermal: bool = False,
    ):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.records = list(records)
        self.captions = list(captions)
        for r in self.records:
            if r.pair_path is None or r.label < 0:
                raise DataError(
                    f"training record {r.path} is not a labelled RGB+thermal pair (pair_path={r.pair_path}, "
                    f"label={r.label}).",
                    fix="use the training split of a text dataset (rgbt_pedes, rgbnt201_pedes).",
                )
        for i, c in enumerate(self.captions):
            if not 0 <= c.pair_index < len(self.records) or self.records[c.pair_index].label != c.label:
                raise DataError(
                    f"training caption {i} ({c.text[:40]!r}) points to pair {c.pair_index}, which does not exist "
                    "or has another label.",
                    fix="pass the records and captions of the same TrainSplit.",
                )
        if not self.captions:
            raise DataError("the training split has no captions.", fix="check the annotation file's captions.")
        self.tokenizer = tokenizer
        self.transform = transform
        self.views = int(views)
        self.mlm_probability = mlm_probability
        self.gray3_thermal = gray3_thermal
        caption_tokens = tokenizer.encode([c.text for c in self.captions])
        no_color = tokenizer.encode([c.no_color_text or c.text for c in self.captions])
        self._ids, self._mask = caption_tokens.ids, caption_tokens.mask
        self._nc_ids, self._nc_mask = no_color.ids, no_color.mask
        groups: dict[int, list[int]] = defaultdict(list)
        for index, r in enumerate(self.records):
            groups[r.label].append(index)
        self.pairs_by_label = {k: tuple(v) for k, v in groups.items()}

    @property
    def caption_labels(self) -> list[int]:
        return [c.label for c in self.captions]

    @property
    def caption_pairs(self) -> list[int]:
        return [c.pair_index for c in self.captions]

    def __len__(self) -> int:
        return len(self.captions)

    def view_pairs(self, anchor: int, label: int, aug_seed: int) -> tuple[int, ...]:
        """The anchor pair followed by V - 1 other pairs of ``label`` (without replacement, then reused)."""
        if self.views == 1:
            return (anchor,)
        gen = torch.Generator().manual_seed(derive_seed(aug_seed, _STREAM_VIEWS))
        same = self.pairs_by_label[label]
        others = [p for p in same if p != anchor]
        chosen = [others[int(i)] for i in torch.randperm(len(others), generator=gen)[: self.views - 1]]
        while len(chosen) < self.views - 1:  # too few pairs: reuse any pair of the identity (fresh augmentation)
            chosen.append(same[int(torch.randint(len(same), (1,), generator=gen))])
        return (anchor, *chosen)

    def load_pair(self, index: int, seed: int) -> torch.Tensor:
        """Pair ``index`` through the training transform under ``seed``: (2, 3, H, W) (RGB, thermal)."""
        record = self.records[index]
        rgb = load_image(record.path)
        thermal = load_image(record.pair_path, gray3=self.gray3_thermal)
        with seeded(seed):
            x_rgb, x_t = self.transform(rgb, thermal)
        return torch.stack([x_rgb, x_t])

    def __getitem__(self, draw: CaptionDraw) -> TextPairSample:
        if not isinstance(draw, tuple) or len(draw) != len(CaptionDraw._fields):
            raise TypeError(
                f"TextPairTrainDataset is indexed by CaptionDraw, got {draw!r}; "
                "use CaptionIdentitySampler as the DataLoader's batch_sampler"
            )
        draw = CaptionDraw(*draw)
        caption = self.captions[draw.caption_index]
        pairs = self.view_pairs(caption.pair_index, caption.label, draw.aug_seed)
        images = torch.stack(
            [self.load_pair(p, derive_seed(draw.aug_seed, _STREAM_VIEW_AUG, v)) for v, p in enumerate(pairs)]
        )
        ids = self._ids[draw.caption_index]
        mlm_tokens = mlm_labels = None
        if self.mlm_probability is not None:
            from vireid.models.text.tokenizer import mask_for_mlm

            gen = torch.Generator().manual_seed(derive_seed(draw.aug_seed, _STREAM_MLM))
            mlm_tokens, mlm_labels = mask_for_mlm(ids, self.tokenizer, self.mlm_probability, gen)
        return TextPairSample(
            images=images,
            tokens=ids,
            attention_mask=self._mask[draw.caption_index],
            no_color_tokens=self._nc_ids[draw.caption_index],
            no_color_mask=self._nc_mask[draw.caption_index],
            mlm_tokens=mlm_tokens,
            mlm_labels=mlm_labels,
            label=caption.label,
            pair_index=caption.pair_index,
            view_pairs=pairs,
            caption_index=draw.caption_index,
            sample_index=draw.sample_index,
            slot=draw.slot,
            inst=draw.inst,
        )


def collate_text_pairs(samples: Sequence[TextPairSample]) -> TextPairBatch:
    """Stack caption draws (in sampler order) into a :class:`TextPairBatch`."""
    if not samples:
        raise ValueError("cannot collate an empty batch")

    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(s, name) for s in samples], dtype=torch.int64)

    def stack(name: str) -> torch.Tensor | None:
        values = [getattr(s, name) for s in samples]
        return None if values[0] is None else torch.stack(values)

    return TextPairBatch(
        images=torch.stack([s.images for s in samples]),
        tokens=stack("tokens"),
        attention_mask=stack("attention_mask"),
        no_color_tokens=stack("no_color_tokens"),
        no_color_mask=stack("no_color_mask"),
        mlm_tokens=stack("mlm_tokens"),
        mlm_labels=stack("mlm_labels"),
        label=column("label"),
        pair_index=column("pair_index"),
        view_pair_index=torch.tensor([list(s.view_pairs) for s in samples], dtype=torch.int64),
        caption_index=column("caption_index"),
        sample_index=column("sample_index"),
        slot=column("slot"),
        inst=column("inst"),
    )


def _worker_init(_: int) -> None:
    # One intra-op thread per worker: the workers already use the cores, more threads only contend.
    torch.set_num_threads(1)


def build_text_pair_loader(
    records: Sequence[ImageRecord],
    captions: Sequence[CaptionRecord],
    tokenizer,
    transform: PairedTrainTransform,
    *,
    P: int,
    K: int,
    views: int = 1,
    epoch_length: str | int = "agw",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    mlm_probability: float | None = None,
    gray3_thermal: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """The training DataLoader of a text -> RGB+T run: P identities x K captions per (global) batch.

    ``loader.batch_sampler`` is the :class:`CaptionIdentitySampler` (call ``set_epoch``/``set_position``);
    ``loader.dataset`` the :class:`TextPairTrainDataset`. Each rank yields ``P / world_size * K`` draws.
    """
    dataset = TextPairTrainDataset(
        records,
        captions,
        tokenizer,
        transform,
        views=views,
        mlm_probability=mlm_probability,
        gray3_thermal=gray3_thermal,
    )
    sampler = CaptionIdentitySampler(
        dataset.caption_labels,
        dataset.caption_pairs,
        P,
        K,
        epoch_length=epoch_length,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = max(0, int(workers))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_text_pairs,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
