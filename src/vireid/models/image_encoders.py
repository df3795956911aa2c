"""Image encoders that return a global feature and a token sequence (text -> RGB+T retrieval).

Text-to-image methods in the IRRA family fuse and cross-attend over image *tokens*, not only a pooled
vector. Every encoder here maps (B, 3, H, W) to an :class:`ImageEncoding`: a (B, d) ``cls`` feature and
(B, 1 + N, d) ``tokens`` whose row 0 is that ``cls`` (so a token-level fusion's row 0 is the fused global
feature), plus optional intermediate ``layers`` for token-level distillation.

- :class:`ResNetTokenEncoder` (small configuration, method-dikdnet.md 5.8): a ResNet (default ResNet-18,
  random init, last stride 1) whose layer4 map is flattened into N = H/16 * W/16 tokens -> Linear(C, d); the
  CLS is Linear(C, d) of the average-pooled map. ``layers`` are the flattened maps of layer2, layer3, layer4.
- :class:`vireid.models.clip.ClipImageEncoder` (paper configuration, CLIP ViT-B/16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vireid.config import ModelConfig
from vireid.models.resnet import build_backbone


@dataclass
class ImageEncoding:
    """A batch of encoded images.

    Shapes (B images, N patch tokens, d embedding width):

    Attributes:
        cls: (B, d) global feature; equal to ``tokens[:, 0]``.
        tokens: (B, 1 + N, d) global feature followed by the projected patch tokens.
        layers: intermediate token maps for token-level distillation, each (B, N_l, C_l); empty unless asked.
    """

    cls: torch.Tensor
    tokens: torch.Tensor
    layers: tuple[torch.Tensor, ...] = ()


class ResNetTokenEncoder(nn.Module):
    """ResNet feature map as tokens: (B, 3, H, W) -> :class:`ImageEncoding` of width ``embed_dim``.

    Args:
        embed_dim: d.
        arch: torchvision ResNet name (``resnet18`` by default).
        width: channels of the first stage (64 = torchvision; smaller for tests).
        last_stride: 1 keeps a 16x down-sampled map (8 x 4 tokens at 128 x 64).
        pretrained: ``none`` (random init), ``imagenet`` (local torchvision file, never downloaded) or a path.
    """

    token_stages = ("layer2", "layer3", "layer4")

    def __init__(
        self, embed_dim: int, arch: str = "resnet18", width: int = 64, last_stride: int = 1, pretrained="none"
    ):
        super().__init__()
        self.backbone = build_backbone(
            ModelConfig(backbone=arch, pretrained=pretrained, width=width, last_stride=last_stride, non_local=False)
        )
        channels = self.backbone.out_channels
        self.embed_dim = embed_dim
        self.token_proj = nn.Linear(channels, embed_dim)
        self.cls_proj = nn.Linear(channels, embed_dim)
        self.layer_channels = tuple(self.backbone.stage_channels[1:])

    def forward(self, x: torch.Tensor, return_layers: bool = False) -> ImageEncoding:
        b = self.backbone
        x = b.layer1(b.stem(x))
        layer2 = b.layer2(x)
        layer3 = b.layer3(layer2)
        fmap = b.layer4(layer3)
        flat = fmap.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_proj(flat.mean(dim=1))
        tokens = torch.cat([cls.unsqueeze(1), self.token_proj(flat)], dim=1)
        layers = ()
        if return_layers:
            layers = tuple(m.flatten(2).transpose(1, 2) for m in (layer2, layer3, fmap))
        return ImageEncoding(cls=cls, tokens=tokens, layers=layers)
