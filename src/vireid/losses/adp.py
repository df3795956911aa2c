"""CAJ's adaptive weighted triplet (``TripletLoss_ADP``, Ye et al., ICCV 2021).

The softmax-weighted D+_i and D-_i of WRT with alpha * d inside the exponentials; with Delta_i = D+_i - D-_i:

    square = 0:  L_i = log(1 + exp(gamma * Delta_i))
    square = 1:  s_i = min(gamma * Delta_i^2, 88);  L_i = log(1 + exp(s_i)) if Delta_i > 0 else log(1 + exp(-s_i))

The sign test is a constant (not differentiated) and the cap at 88 keeps exp finite in float32. Every CAJ
command uses alpha = gamma = square = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses.distance import masked_mean, pairwise_euclidean, same_identity
from vireid.losses.wrt import softmax_weighted_distances


def adaptive_weighted_triplet(
    features: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0, gamma: float = 1.0, square: int = 1
) -> torch.Tensor:
    """CAJ's ADP loss of (B, D) features with (B,) labels (see the module docstring).

    Anchors with no other identity in the batch are left out of the mean.
    """
    if square not in (0, 1):
        raise ValueError(f"square must be 0 or 1 (loss.adp.square), got {square}")
    dist = pairwise_euclidean(features)
    d_pos, d_neg, valid = softmax_weighted_distances(dist, same_identity(labels), alpha=alpha)
    delta = d_pos - d_neg
    if square == 0:
        losses = F.softplus(gamma * delta)
    else:
        s = (gamma * delta.pow(2)).clamp(max=88.0)
        sign = torch.where(delta.detach() > 0, 1.0, -1.0)
        losses = F.softplus(sign * s)
    return masked_mean(losses, valid)
