"""Typed model outputs.

A training forward returns one dataclass whose fields always mean the same thing, whatever the mode of the
module. Public VI-ReID code often returns ``(feat, logits)`` in training and ``(l2(feat), l2(bn))`` in
evaluation from the same ``forward``; a caller that forgets ``model.eval()`` then silently scores the
wrong tensors. vireid keeps training (``forward``) and retrieval (``extract``) apart, and the training output
is this object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReIDOutput:
    """Everything a single-branch re-identification network produces in a training step.

    Shapes (B rows, C = ``model.feature_dim``, N = number of training identities):

    Attributes:
        pooled: (B, C) pooled feature before the BNNeck. Metric losses (triplet, WRT, ADP) use it.
        bn: (B, C) BNNeck output. The identity classifier reads it; it is also the default retrieval feature.
        logits: (B, N) identity logits, or ``None`` for a model built without a classifier
            (``num_classes=0``, as DAKD's student).
    """

    pooled: torch.Tensor
    bn: torch.Tensor
    logits: torch.Tensor | None
