"""DIKDNet inference: the test transform and the student-only retrieval embedder (method-dikdnet.md 5.6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vireid.data.transforms.paired import PairedTestTransform


class PairOrImageTestTransform(PairedTestTransform):
    """The test transform (Resize + Normalize), callable on one image or on an (RGB, thermal) pair.

    The protocol runner transforms the two images of a gallery pair one at a time (``transform(img)``);
    deployment code passes the pair (``transform(rgb, thermal)``). Both get the same resize and
    normalisation, so the two call forms give identical tensors.
    """

    def __call__(self, rgb, thermal=None):
        if thermal is None:
            return self.single(rgb)
        return super().__call__(rgb, thermal)


class TextPairEmbedder:
    """Retrieval features of a DIKDNet model for the protocol runner: captions and RGB+T pairs.

    ``embed_texts(texts)`` -> (N, d) and ``embed_pairs(rgb, thermal)`` -> (B, d), both L2-normalised, from
    the model's student path only (``extract_texts`` / ``extract_pairs``; no teacher, no heads).
    """

    def __init__(self, model: nn.Module, batch_size: int = 256, gray3_thermal: bool = False):
        self.model = model
        self.batch_size = int(batch_size)
        self.gray3_thermal = gray3_thermal
        """Thermal images are decoded as grayscale x 3 (``data.thermal_gray3``) before the test transform."""

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer.encode(list(texts[start : start + self.batch_size])).to(self._device())
                out.append(F.normalize(self.model.extract_texts(tokens).float(), dim=-1))
            if not out:
                return torch.empty(0, 0)
            return torch.cat(out)
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def embed_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            device = self._device()
            return F.normalize(self.model.extract_pairs(rgb.to(device), thermal.to(device)).float(), dim=-1)
        finally:
            self.model.train(was_training)
