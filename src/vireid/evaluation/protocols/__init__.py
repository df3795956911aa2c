"""Evaluation protocols of every dataset, producing :class:`~vireid.evaluation.trial.Trial` objects.

Protocols are obtained from the dataset catalog, which binds each reader to its protocols
(``DatasetProtocols`` objects defined here): ``get_dataset("sysu", root).protocol("sysu.all.single.random")``.
Readers know nothing about protocols; ``vireid.evaluation.protocols.selection`` (``vireid protocol``) sits
above the catalog and is imported from its own module.
Their ids name everything that changes the numbers (mode, shots, sampler, direction), so results with
different galleries never share a label (data spec sections 3 and 6).

| id | trials | rule |
|---|---|---|
| ``sysu.{all,indoor}.{single,multi}.{random,official}`` | 0..9 | ``sysu`` |
| ``regdb.{v2t,t2v}`` | the reader's trial (1..10) | ``regdb`` |
| ``llcm.{ir2vis,vis2ir}``, ``llcm.vis2ir.deen_release`` | 0..9 | ``llcm`` |
| ``text.t2rgbt`` | 0 | ``text`` |
| ``rgbnt201.mm`` | 0 | ``market`` |
"""

from vireid.evaluation.protocols.base import DatasetProtocols, Protocol
from vireid.evaluation.protocols.llcm import LlcmProtocol
from vireid.evaluation.protocols.regdb import RegdbProtocol
from vireid.evaluation.protocols.rgbnt201 import Rgbnt201Protocol
from vireid.evaluation.protocols.sampling import OfficialPermutations, load_official_permutations, sample_random
from vireid.evaluation.protocols.sysu import SysuProtocol
from vireid.evaluation.protocols.text import TextProtocol

__all__ = [
    "DatasetProtocols",
    "LlcmProtocol",
    "OfficialPermutations",
    "Protocol",
    "RegdbProtocol",
    "Rgbnt201Protocol",
    "SysuProtocol",
    "TextProtocol",
    "load_official_permutations",
    "sample_random",
]
