"""The metric pass of :func:`vireid.evaluation.evaluate` as one compiled loop per query row (CPU, optional numba).

Why a second implementation. The PyTorch path in :mod:`vireid.evaluation.metrics` is exact and sort-free, but
on a CPU it is a chain of about eight whole-chunk passes (bucket keys, a table gather, masks, a histogram), each
a separate memory round trip with its own dispatch cost. Fused into one loop that reads every distance once,
the same method does the work of those passes in a single sweep and runs several times faster. PyTorch has no
way to fuse a gather and a histogram on the CPU without a C++ toolchain at run time, so the loop is compiled
with numba when it is installed (``pip install "vireid[fast]"``); without numba, or for tensors on a GPU, the
PyTorch path runs. Both give identical results and are tested against the same per-query reference loop.

The method is the one described in :mod:`vireid.evaluation.metrics`: for one query row,

1. collect the true matches (the query identity's gallery items minus the junk rule's removals) and sort
   them by (distance, gallery index), the stable order;
2. give every distance a *bucket key* by the same monotone IEEE arithmetic, ``clamp((d - origin) * scale)``
   truncated (in the distances' own dtype), so that key(a) < key(b) implies a < b and equal distances share a
   key; the query's own identity and removed items get a spare key that never counts;
3. per bucket, store the number of matches in lower buckets, negated when the bucket itself holds a match;
4. every other gallery item's *bin* (the number of matches ahead of it in the stable order) is its bucket's
   table value; the few items whose bucket also holds matches are set aside and compared exactly with those
   matches (closer, or equally close with a smaller gallery index, means ahead);
5. a histogram of the bins gives each match's rank: ``rank_j = j + 1 + items with bin <= j``; the
   de-duplicated CMC counts the distinct identities among the items of bin 0.

No part of this is approximate: buckets only decide which items need an exact comparison.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["JUNK_NONE", "JUNK_SAME_ID_CAM", "JUNK_SYSU", "available", "chunk_metrics", "numba_version"]

JUNK_NONE = 0
"""RegDB and text: nothing is removed."""
JUNK_SYSU = 1
"""A cam3 query removes every cam2 gallery item."""
JUNK_SAME_ID_CAM = 2
"""LLCM and Market-style rules: same identity and same camera is removed."""

BUCKETS_PER_MATCH = 64
"""Buckets per true match in a row's key table (capped near the gallery size). More buckets mean fewer items
that share a bucket with a match and need an exact comparison (each costs a mispredicted branch), but a larger
table to fill for every row; 32-128 measured alike on SYSU-sized matrices, 8-16 clearly slower."""


@functools.cache
def available() -> bool:
    """True when numba can be imported (the compiled path is then the CPU default)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def numba_version() -> str | None:
    """The installed numba version (recorded by benchmarks), or None."""
    if not available():
        return None
    import numba

    return numba.__version__


@functools.cache
def _kernel() -> Any:
    """The compiled kernel (numba compiles it on first use, or loads it from its on-disk cache)."""
    from vireid.evaluation import _numba_kernel

    return _numba_kernel.chunk_kernel


def chunk_metrics(
    dist: np.ndarray,
    q_gid: np.ndarray,
    q_cam: np.ndarray,
    g_gid: np.ndarray,
    g_cam: np.ndarray,
    group_order: np.ndarray,
    group_start: np.ndarray,
    group_count: np.ndarray,
    cam2_cols: np.ndarray,
    junk_rule: int,
    dedup: bool,
    num_ids: int,
) -> tuple[bool, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Metrics of one chunk of query rows (see the module docstring); releases the GIL while it runs.

    Args:
        dist: (B, G) float32/float64 distances (NaN/inf are reported through ``finite``, never read as keys).
        q_gid: (B,) compact gallery identity of each query (-1: absent from the gallery); q_cam: (B,) cameras.
        g_gid, g_cam: (G,) compact identities and cameras of the gallery.
        group_order, group_start, group_count: gallery indices grouped by identity (ascending inside a group),
            and each identity's first position and size in ``group_order``.
        junk_rule: ``JUNK_NONE``, ``JUNK_SYSU`` or ``JUNK_SAME_ID_CAM``.
        dedup: de-duplicated CMC position (SYSU/LLCM) instead of the first-match rank.
        num_ids: number of compact gallery identities.
    Returns:
        ``(finite, (ap, inp, first_rank, cmc_position, num_matches))``: ``finite`` is False when an entry of
        ``dist`` is NaN or infinite (the metrics are then meaningless: raise), ap and inp are (B,) float64
        (NaN for invalid rows), the rest (B,) int64.
    """
    num_b = dist.shape[0]
    ap = np.full(num_b, np.nan)
    inp = np.full(num_b, np.nan)
    first_rank = np.zeros(num_b, dtype=np.int64)
    cmc_pos = np.zeros(num_b, dtype=np.int64)
    num_matches = np.zeros(num_b, dtype=np.int64)
    finite = _kernel()(
        np.ascontiguousarray(dist),
        q_gid,
        q_cam,
        g_gid,
        g_cam,
        group_order,
        group_start,
        group_count,
        cam2_cols,
        junk_rule == JUNK_SYSU,
        junk_rule == JUNK_SAME_ID_CAM,
        dedup,
        num_ids,
        BUCKETS_PER_MATCH,
        ap,
        inp,
        first_rank,
        cmc_pos,
        num_matches,
    )
    return bool(finite), (ap, inp, first_rank, cmc_pos, num_matches)
