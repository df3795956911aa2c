"""Batch-hard triplet loss (Hermans et al.), as in AGW's ``base`` variant and IDKL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses.distance import masked_mean, pairwise_euclidean, same_identity


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """mean_i max(0, d+_i - d-_i + margin) over a (B, D) batch with (B,) labels.

    d+_i is the largest distance from i to a row of the same identity (i itself included, as in the
    release, where d_ii = 1e-6), d-_i the smallest distance to a row of another identity. Distances are
    :func:`~vireid.losses.distance.pairwise_euclidean`. Anchors with no other identity in the batch are
    left out of the mean. margin = 0.3 for AGW base, 1.3 for IDKL.
    """
    dist = pairwise_euclidean(features)
    same = same_identity(labels)
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = (~same).any(dim=1)
    hardest_neg = torch.where(valid, hardest_neg, hardest_pos)  # keep invalid rows finite
    return masked_mean(F.relu(hardest_pos - hardest_neg + margin), valid)
