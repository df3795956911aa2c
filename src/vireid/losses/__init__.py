"""Losses shared by every method: identity cross-entropy, metric losses, and distillation helpers.

Every loss takes explicit label tensors and reads nothing from row positions, so permuting a batch together
with its labels leaves the value unchanged (tested). Methods compose these in their own modules.
"""

from vireid.losses.adp import adaptive_weighted_triplet
from vireid.losses.distance import pairwise_euclidean
from vireid.losses.distillation import kl_div_temperature, logit_standardize, symmetric_kl
from vireid.losses.identity import cross_entropy_ls
from vireid.losses.triplet import batch_hard_triplet
from vireid.losses.wrt import softmax_weighted_distances, weighted_regularized_triplet

__all__ = [
    "adaptive_weighted_triplet",
    "batch_hard_triplet",
    "cross_entropy_ls",
    "kl_div_temperature",
    "logit_standardize",
    "pairwise_euclidean",
    "softmax_weighted_distances",
    "symmetric_kl",
    "weighted_regularized_triplet",
]
