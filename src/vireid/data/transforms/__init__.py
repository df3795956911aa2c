"""Training and test transforms: CAJ channel augmentations, CutSwap, presets and paired RGB+T transforms.

Randomness contract: every random draw comes from torch's default CPU generator, which the training
datasets seed per sample and per view with :func:`seeding.seeded` (seed from the sampler's ``aug_seed``),
so a sample's augmentation is a pure function of its seed. See :mod:`vireid.data.transforms.seeding`.
"""

from vireid.data.transforms.channel import (
    GRAY_WEIGHTS,
    RELEASE_ERASING_FILL,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    grayscale,
    replicate_channel,
)
from vireid.data.transforms.cutswap import CutSwap
from vireid.data.transforms.paired import CLIP_MEAN, CLIP_STD, PairedTestTransform, PairedTrainTransform
from vireid.data.transforms.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainViews,
    build_test_transform,
    build_train_views,
    pre_resize,
)
from vireid.data.transforms.seeding import derive_seed, seeded

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "GRAY_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RELEASE_ERASING_FILL",
    "ChannelAdapGray",
    "ChannelExchange",
    "ChannelRandomErasing",
    "CutSwap",
    "PairedTestTransform",
    "PairedTrainTransform",
    "TrainViews",
    "build_test_transform",
    "build_train_views",
    "derive_seed",
    "grayscale",
    "pre_resize",
    "replicate_channel",
    "seeded",
]
