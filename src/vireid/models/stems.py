"""Routing images to modality-specific stems (AGW's two-stream input) or through one shared stem.

AGW gives visible and infrared images separate stems (conv1 + bn1 + ReLU + maxpool, two copies of the same
ImageNet initialisation) and shares everything after them. The release concatenates the visible batch and the
thermal batch (visible first) and splits by position; vireid routes by a per-row ``modality`` tensor
instead and puts every row back in its original position, so that no caller has to know an ordering
contract, and every BatchNorm after the stems still sees both modalities in one batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vireid.errors import DataError

VISIBLE, INFRARED = 0, 1


class ModalityStems(nn.Module):
    """One stem per modality (``per_modality=True``) or one shared stem, (B, 3, H, W) -> (B, C, H/4, W/4).

    Args:
        stem: the (pretrained) stem module. With ``per_modality`` it becomes the visible stem and a deep
            copy becomes the infrared stem, so both start from the same weights.
        per_modality: ``model.stems``: ``per_modality`` (AGW, CAJ) or ``shared`` (IDKL, DAKD).

    Submodules: ``visible`` and ``infrared``, or ``shared``.
    """

    def __init__(self, stem: nn.Module, per_modality: bool = True):
        super().__init__()
        self.per_modality = bool(per_modality)
        if self.per_modality:
            self.visible = stem
            self.infrared = copy.deepcopy(stem)
        else:
            self.shared = stem

    def stem_for(self, modality: int) -> nn.Module:
        """The stem that images of ``modality`` (0 visible, 1 infrared) go through."""
        if not self.per_modality:
            return self.shared
        if modality == VISIBLE:
            return self.visible
        if modality == INFRARED:
            return self.infrared
        raise DataError(f"modality {modality!r} is not 0 (visible) or 1 (infrared).")

    def forward(self, images: torch.Tensor, modality: torch.Tensor | int | None = None) -> torch.Tensor:
        """Run each row through the stem of its modality and return rows in the input order.

        ``modality`` is a (B,) integer tensor (0 visible, 1 infrared), or one int for a batch of a single
        modality (cheapest: no indexing; this is what export wrappers use). It may be ``None`` only for a
        shared stem.
        """
        if not self.per_modality:
            return self.shared(images)
        if modality is None:
            raise DataError(
                "this network has modality-specific stems (model.stems=per_modality) but no modality was given.",
                fix="pass the batch's modality tensor (0 visible, 1 infrared), or an int for a one-modality batch.",
            )
        if not isinstance(modality, torch.Tensor):
            return self.stem_for(int(modality))(images)
        return self._route(images, modality)

    def _route(self, images: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        if modality.shape != images.shape[:1]:
            raise DataError(
                f"modality has shape {tuple(modality.shape)} but the batch has {images.shape[0]} images.",
                fix="give one modality value per row.",
            )
        modality = modality.to(device=images.device)
        # One host synchronisation gives the counts (and validates the values) and tells whether the rows
        # are already grouped visible-first, the sampler's usual order, in which case no gather is needed.
        stats = torch.stack(
            [(modality == VISIBLE).sum(), (modality == INFRARED).sum(), (modality[1:] >= modality[:-1]).all().long()]
        )
        n_vis, n_ir, grouped = (int(v) for v in stats.tolist())
        if n_vis + n_ir != images.shape[0]:
            bad = sorted({int(v) for v in modality.unique().tolist()} - {VISIBLE, INFRARED})
            raise DataError(f"modality values {bad} are not 0 (visible) or 1 (infrared).")
        if n_ir == 0:
            return self.visible(images)
        if n_vis == 0:
            return self.infrared(images)
        if grouped:
            vis, ir = images.split([n_vis, n_ir])
            return torch.cat([self.visible(vis), self.infrared(ir)])
        order = torch.argsort(modality, stable=True)
        vis_rows, ir_rows = order.split([n_vis, n_ir])
        out = torch.cat([self.visible(images[vis_rows]), self.infrared(images[ir_rows])])
        return out[torch.argsort(order)]
