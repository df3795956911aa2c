"""Identity (ID) classification loss: cross-entropy with optional label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses._precision import at_least_float32


def cross_entropy_ls(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) integer labels, targets smoothed by ``label_smoothing``.

    The target distribution is (1 - eps) * onehot(y) + eps / C, which is exactly what PyTorch's
    ``F.cross_entropy(label_smoothing=eps)`` uses (checked against an explicit loop in the tests). AGW, CAJ and
    IDKL train with eps = 0; the option is vireid's (``loss.id.label_smoothing``). Computed in at least float32.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(at_least_float32(logits), target, label_smoothing=label_smoothing)
