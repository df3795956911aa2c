"""A minimal text -> RGB+thermal method for the deployment tests (``task == "text"``).

It follows the contract that DIKDNet's method provides to deployment code: ``build_model``, ``embedder``
with ``embed_texts(list[str]) -> (N, D)`` and ``embed_pairs(rgb, thermal) -> (B, D)``, and
``test_transform`` returning a paired transform. Texts are a bag of hashed words; images go through two
small conv encoders whose outputs are summed (fusion).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn

from vireid.config import RunConfig
from vireid.data.transforms.paired import PairedTestTransform

VOCAB, DIM = 97, 16


@dataclass
class ToyTextConfig(RunConfig):
    method: str = "toytext"


class ToyTextModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.words = nn.EmbeddingBag(VOCAB, DIM, mode="mean")

        def encoder() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(8, DIM),
            )

        self.rgb = encoder()
        self.thermal = encoder()


class ToyTextEmbedder:
    def __init__(self, model: ToyTextModel):
        self.model = model

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(zlib.crc32(w.encode()) % VOCAB for w in text.lower().split())
        device = self.model.words.weight.device
        return self.model.words(torch.tensor(ids, device=device), torch.tensor(offsets, device=device))

    @torch.no_grad()
    def embed_pairs(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        return self.model.rgb(rgb) + self.model.thermal(thermal)


class ToyTextMethod:
    name = "toytext"
    config_class = ToyTextConfig
    task = "text"

    def build_model(self, cfg, num_classes: int) -> ToyTextModel:
        return ToyTextModel()

    def embedder(self, model, cfg) -> ToyTextEmbedder:
        return ToyTextEmbedder(model)

    def test_transform(self, cfg) -> PairedTestTransform:
        return PairedTestTransform(cfg.data.height, cfg.data.width)


METHOD = ToyTextMethod()
