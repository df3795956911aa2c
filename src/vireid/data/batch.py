"""Typed training batches with explicit pairing and grouping fields.

Losses must read who pairs with whom from these index tensors, never from row positions (a hidden
coupling seen in public code that breaks under any change of batch order). A batch is a flat set of rows;
each row is one image with its identity, modality, view and the slot/instance of the sampler draw it
came from.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class CrossModalBatch:
    """A visible-infrared training batch.

    Shapes: ``images`` is (B, 3, H, W); every other field is a (B,) int64 tensor.

    Fields:
        images: normalised image tensors.
        label: contiguous training identity label.
        modality: 0 visible, 1 infrared.
        view: 0 plain view, 1 channel-augmented view (CAJ's visible B); further views count up.
        pair_index: global index of the sampler draw (a visible/infrared pair of one identity). The visible
            row and the infrared row of one draw share ``pair_index`` and ``label``.
        slot: index of the identity slot inside the batch (0..P-1); rows of one slot share an identity.
        inst: index of the draw inside its slot (0..K-1).
        camid: camera number of the image.
    """

    images: torch.Tensor
    label: torch.Tensor
    modality: torch.Tensor
    view: torch.Tensor
    pair_index: torch.Tensor
    slot: torch.Tensor
    inst: torch.Tensor
    camid: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CrossModalBatch:
        return replace(
            self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def pin_memory(self) -> CrossModalBatch:
        """Page-locked copy of every field (the DataLoader calls this when ``pin_memory=True``)."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def index_select(self, index: torch.Tensor) -> CrossModalBatch:
        """Rows ``index`` of every field (used to permute batches in tests and to split views)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def pair_rows(self, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices ``(iv, ii)`` of visible and infrared rows of ``view``, sorted by (slot, inst).

        ``iv[j]`` and ``ii[j]`` come from the same sampler draw, so they share an identity. Raises
        ``ValueError`` when the two modalities do not have the same draws.
        """
        key = self.slot * (int(self.inst.max()) + 1 if len(self) else 1) + self.inst
        vis = torch.nonzero((self.modality == 0) & (self.view == view)).flatten()
        ir = torch.nonzero((self.modality == 1) & (self.view == 0)).flatten()
        vis = vis[torch.argsort(key[vis], stable=True)]
        ir = ir[torch.argsort(key[ir], stable=True)]
        if vis.numel() != ir.numel() or not torch.equal(self.pair_index[vis], self.pair_index[ir]):
            raise ValueError(
                "batch has unequal visible/infrared draws; pairing needs one visible and one infrared row per draw"
            )
        return vis, ir
