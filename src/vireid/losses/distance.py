"""Pairwise Euclidean distances as the AGW-family losses compute them."""

from __future__ import annotations

import torch

from vireid.losses._precision import at_least_float32


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    """d_ij = sqrt(max(|x_i|^2 + |y_j|^2 - 2 x_i.y_j, eps)), (M, D) x (N, D) -> (M, N), in at least float32.

    The expanded form is one matrix product (fast on any device); the clamp keeps the square root and its
    gradient finite on the diagonal, where the exact distance is 0 and the result is sqrt(eps) = 1e-6.
    """
    x = at_least_float32(x)
    y = x if y is None else at_least_float32(y)
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.t())
    return sq.clamp(min=eps).sqrt()


def same_identity(labels: torch.Tensor) -> torch.Tensor:
    """(B,) labels -> (B, B) bool matrix, True where rows i and j share an identity (diagonal included)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be a (B,) tensor, got shape {tuple(labels.shape)}")
    return labels.unsqueeze(1) == labels.unsqueeze(0)


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[valid]``; 0 (still attached to the graph) when no row is valid.

    Used for anchors without any negative in the batch (a batch of one identity): they have no defined
    triplet and are left out rather than producing an infinite or NaN loss.
    """
    values = torch.where(valid, values, torch.zeros_like(values))
    return values.sum() / valid.sum().clamp(min=1)
