"""Random streams keyed by what they draw, so that generation order never changes a single byte.

Every random decision of the generator comes from a generator seeded by ``(seed, purpose, keys...)``: the
attributes of identity 17 from ``(seed, "identity", 17)``, image 4 of identity 17 in camera 3 from
``(seed, "image", 17, 3, 4)``. Rendering the images of a set in another order, in parallel, or only a subset
of them therefore yields identical files. Strings are folded in with CRC-32 (stable across processes and
Python versions, unlike ``hash``).
"""

from __future__ import annotations

import zlib

import numpy as np


def _key_words(key: int | str) -> list[int]:
    if isinstance(key, str):
        return [zlib.crc32(key.encode("utf-8"))]
    key = int(key)
    if key < 0:
        raise ValueError(f"random-stream keys must be non-negative integers or strings, got {key}")
    # SeedSequence wants 32-bit words; split wide integers so that distinct keys never collide.
    words = [key & 0xFFFFFFFF]
    key >>= 32
    while key:
        words.append(key & 0xFFFFFFFF)
        key >>= 32
    return [len(words), *words]


def stream(seed: int, purpose: str, *keys: int | str) -> np.random.Generator:
    """A NumPy generator determined only by ``seed``, ``purpose`` and ``keys``.

    Args:
        seed: the user's seed (non-negative integer).
        purpose: what the stream is for (``"identity"``, ``"image"``, ``"split"``, ...), so that two uses
            with the same integer keys never share a stream.
        keys: further integers or strings (pid, camera, image index, ...).
    """
    entropy = [*_key_words(seed), *_key_words(purpose)]
    for key in keys:
        entropy.extend(_key_words(key))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def python_seed(seed: int, purpose: str, *keys: int | str) -> int:
    """An integer seed for ``random.Random`` derived like :func:`stream` (used for index-file shuffles)."""
    return int(stream(seed, purpose, *keys).integers(0, 2**63 - 1))
