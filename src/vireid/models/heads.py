"""Re-identification heads: the BNNeck and the identity classifier.

The BNNeck (Luo et al., "Bag of Tricks") is a BatchNorm1d between the pooled feature, which the metric
losses use, and the classifier, which reads the normalised feature. Freezing its bias at zero keeps the
classifier input centred, as in every AGW-family release.
"""

from __future__ import annotations

import torch
from torch import nn


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d over (B, C) pooled features with AGW's initialisation.

    gamma is drawn from N(1, 0.01) and beta starts at 0 (the release's ``weights_init_kaiming`` for
    BatchNorm1d). With ``bias_frozen`` beta is excluded from training (``requires_grad=False``) and stays 0.
    """

    def __init__(self, num_features: int, bias_frozen: bool = True):
        super().__init__(num_features)
        self.bias_frozen = bool(bias_frozen)
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=1.0, std=0.01)
            nn.init.zeros_(self.bias)
        self.bias.requires_grad_(not bias_frozen)


class IdentityClassifier(nn.Linear):
    """Linear(C, num_classes) without bias, weights drawn from N(0, 0.001) (AGW ``weights_init_classifier``).

    (B, C) -> (B, num_classes) identity logits.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.weight, mean=0.0, std=0.001)
