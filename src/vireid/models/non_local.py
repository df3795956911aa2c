"""The non-local block of AGW (dot-product form, no softmax), identity at initialisation.

For x in R^{B x C x H x W} with N = H*W positions, theta, phi and g are 1x1 convolutions C -> C' with bias:

    f = theta(x)^T phi(x) / N          (N x N, no softmax)
    y = f g(x)                         (N x C')
    z = x + BN(W(y))                   (W: 1x1 conv C' -> C with bias; BN gamma = beta = 0 at init)

so z = x when the block is created and the pretrained backbone is undisturbed.
"""

from __future__ import annotations

import torch
from torch import nn

from vireid.errors import ConfigError


def resolve_inter_channels(spec: int | str, channels: int, *, key: str = "model.nl_inter_channels") -> int:
    """Inner width C' of a non-local block on ``channels`` inputs.

    ``spec`` is an int (1 reproduces the AGW release, whose ``reduc_ratio // reduc_ratio`` evaluates to 1
    where C/2 was meant), ``"half"`` (C/2, the width the original non-local paper uses) or a numeric string.
    """
    value: int | str = spec
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "half":
            return max(1, channels // 2)
        if not text.isdigit():
            raise ConfigError(f"{key}='{spec}' is not understood.", fix="use a positive integer (1 = AGW) or 'half'.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={spec!r} must be a positive integer or 'half'.", fix="use 1 (AGW release) or half.")
    return value


class NonLocalBlock(nn.Module):
    """AGW non-local block, (B, C, H, W) -> (B, C, H, W).

    Args:
        channels: C, the channels of the feature map.
        inter_channels: C', the width of theta, phi and g.

    theta, phi, g and W keep PyTorch's default convolution initialisation, as in the release; only the
    output BatchNorm is zeroed so that the block starts as the identity. Note that the bias of W feeds a
    BatchNorm in training mode, which removes any per-channel constant, so that bias never receives a
    gradient while training; it is kept because the release has it and it matters in evaluation mode only
    through the running mean. At initialisation (gamma = 0) theta, phi, g and W receive no gradient either:
    they start learning once gamma moves away from 0.
    """

    def __init__(self, channels: int, inter_channels: int = 1):
        super().__init__()
        self.channels = int(channels)
        self.inter_channels = int(inter_channels)
        self.theta = nn.Conv2d(channels, inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(channels, inter_channels, kernel_size=1)
        self.g = nn.Conv2d(channels, inter_channels, kernel_size=1)
        self.out_conv = nn.Conv2d(inter_channels, channels, kernel_size=1)
        self.out_bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.out_bn.weight)
        nn.init.zeros_(self.out_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2] * x.shape[-1]
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        # Without a softmax, f g = theta (phi g) / N by associativity, which is exact. The N x N affinity
        # costs 2 N^2 C' multiply-adds per image, the C' x C' product 2 N C'^2: with the release's C' = 1 it
        # is N times cheaper and f (648 x 648 per image after layer2 at 288x144) is never materialised. With
        # C' = C/2 it is still cheaper in layer2 and about 3x dearer in layer3 (N = 162 < C' = 512); summed over
        # the five blocks of a ResNet-50 at 288x144 it is the cheaper order, and one fixed order keeps the
        # traced graph free of shape-dependent branches.
        y = torch.bmm(theta, torch.bmm(phi, g)) / n
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, x.shape[-2], x.shape[-1])
        return x + self.out_bn(self.out_conv(y))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter_channels={self.inter_channels}"
