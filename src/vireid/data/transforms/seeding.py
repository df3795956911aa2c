"""Per-sample seeded augmentation: a sample's augmentation is a pure function of its seed.

Why: results must not depend on the number of DataLoader workers, on which worker handles which sample, or
on whether a run was interrupted and resumed. The sampler gives every draw an ``aug_seed`` derived from
(run seed, epoch, global draw position) with :func:`derive_seed`; the dataset runs each view's pipeline
inside :func:`seeded`, which forks torch's CPU random state, seeds it, and restores it afterwards.

All random draws of vireid's own transforms (channel augmentations, CutSwap, paired transforms) and of the
torchvision transforms used in the presets come from torch's default CPU generator, so seeding that
generator makes the whole pipeline deterministic. Python's ``random`` and NumPy's global state are never
used. Only the CPU generator is touched: ``torch.manual_seed`` would also reseed CUDA generators that
:func:`torch.random.fork_rng` (with ``devices=[]``) does not restore, silently changing the GPU random
stream of a main-process (``num_workers=0``) loader.

The global generator is process-wide state: do not apply seeded transforms from several threads at once
(DataLoader workers are processes, so they are safe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One round of the SplitMix64 finaliser (a bijective 64-bit mixer with good avalanche)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """Hash integers (seed, epoch, position, stream, ...) into one 63-bit seed.

    Deterministic across processes and Python versions (unlike ``hash``); different part tuples give
    unrelated seeds, so neighbouring positions or epochs do not produce correlated random streams.
    """
    h = 0x6A09E667F3BCC909
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU generator seeded to ``seed``; restore the previous state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed) & _MASK64)
        yield
