"""Readers of the official dataset layouts (data spec section 1).

Each reader reads one release as distributed (no ``.npy`` pre-processing), returns uniform records, and
offers a training split and the dataset's evaluation protocols. Get readers through the catalog
(:func:`vireid.data.catalog.get_dataset`) rather than constructing them directly.
"""

from vireid.data.readers.base import CameraFolder, ReidDataset, TrainSplit, select_holdout_ids
from vireid.data.readers.checks import DataWarning, ExpectedCount
from vireid.data.readers.layout import SYNTHETIC_MARKER
from vireid.data.readers.llcm import LLCM
from vireid.data.readers.regdb import RegDB
from vireid.data.readers.rgbnt201 import RGBNT201
from vireid.data.readers.rgbt_pedes import RGBNT201Pedes, RGBTPedes
from vireid.data.readers.sysu import SysuMM01

__all__ = [
    "LLCM",
    "RGBNT201",
    "SYNTHETIC_MARKER",
    "CameraFolder",
    "DataWarning",
    "ExpectedCount",
    "RGBNT201Pedes",
    "RGBTPedes",
    "RegDB",
    "ReidDataset",
    "SysuMM01",
    "TrainSplit",
    "select_holdout_ids",
]
