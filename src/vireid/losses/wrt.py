"""Weighted regularised triplet (WRT), AGW's metric loss.

For each anchor i, with P(i) the rows of its identity (i included) and N(i) the others:

    w+_ij = softmax_{j in P(i)}(d_ij),   w-_ij = softmax_{j in N(i)}(-d_ij)
    D+_i = sum_j w+_ij d_ij,             D-_i = sum_j w-_ij d_ij
    L = mean_i log(1 + exp(D+_i - D-_i))

No margin; gradients flow through the weights. The release computes the softmaxes as
exp(d - max) * mask / (sum(exp(d - max) * mask) + 1e-6); vireid uses a masked softmax (masked entries at
-inf), which is the same up to that 1e-6 and exact otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses.distance import masked_mean, pairwise_euclidean, same_identity


def softmax_weighted_distances(
    dist: torch.Tensor, same: torch.Tensor, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft hardest positive and negative distances of every anchor.

    Args:
        dist: (B, B) distances.
        same: (B, B) bool, True where two rows share an identity (diagonal True).
        alpha: scale of the distances inside the softmaxes (CAJ's ADP alpha; 1 for WRT).

    Returns:
        ``(d_pos, d_neg, valid)``, each (B,): D+_i, D-_i, and whether anchor i has any negative (D-_i is
        meaningless, but finite, where it has none).
    """
    neg = ~same
    valid = neg.any(dim=1)
    pos_weights = torch.softmax((alpha * dist).masked_fill(neg, float("-inf")), dim=1)
    # An anchor without negatives would give an all -inf row (NaN softmax): give it uniform weights instead
    # and let ``valid`` exclude it.
    neg_logits = (-alpha * dist).masked_fill(same, float("-inf")).masked_fill(~valid.unsqueeze(1), 0.0)
    neg_weights = torch.softmax(neg_logits, dim=1)
    return (pos_weights * dist).sum(dim=1), (neg_weights * dist).sum(dim=1), valid


def weighted_regularized_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AGW's WRT loss of (B, D) features with (B,) labels (see the module docstring).

    Anchors with no other identity in the batch are left out of the mean.
    """
    dist = pairwise_euclidean(features)
    d_pos, d_neg, valid = softmax_weighted_distances(dist, same_identity(labels))
    return masked_mean(F.softplus(d_pos - d_neg), valid)
