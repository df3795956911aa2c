"""Exact retrieval metrics (CMC, mAP, mINP) under the junk rules of every vireid protocol, fast at any size.

Definitions (``data-and-protocols.md`` section 2): rank the gallery by ascending distance, ties broken by
gallery index (a stable sort); L is that list after the protocol's junk rule; R is the number of true matches
in L and r_1 < ... < r_R their 1-based ranks; a query is valid iff R > 0. Then

* AP  = (1/R) * sum_j j / r_j            (on L, no de-duplication)
* INP = R / r_R
* plain CMC(k)        = 1[r_1 <= k]
* de-duplicated CMC(k) = 1[position of the query identity among the distinct identities of L, in order of
  first appearance, <= k]                (SYSU and LLCM; padding with the last value is implicit)

and every metric is a mean over valid queries, accumulated in float64.

Why this module does not sort. Every quantity above depends only on the ranks of the true matches and, for
the de-duplicated CMC, on how many other identities appear before the first match. ``rank of the j-th match
= j + number of valid non-matches closer than it``, so it is enough to know, for every gallery item, how many
matches are closer than it (its *bin*), and to histogram the bins. The bins are computed without a per-item
binary search (which costs about as much as sorting in PyTorch): each row's match distances are spread over
a small table of equal-width buckets, one gather reads the bin at the bucket's lower edge, and only the few
items that share a bucket with a match, or precede the first match, are looked at again. All arithmetic that
assigns buckets is monotone and identical for matches and non-matches, so the result is exact, not an
approximation; an item with exactly the same distance as a match (a tie, common with float32 scores and large
galleries) is placed by gallery index, exactly as a stable sort would place it.

Two implementations of this pass give identical results. On the CPU, when numba is installed (``pip install
"vireid[fast]"``, part of ``make test``/``make demo``), each chunk goes through one compiled loop per query
row that fuses every step below (:mod:`vireid.evaluation.compiled_metrics`, 3-5x faster than the PyTorch
path on a CPU). Otherwise, and always for GPU tensors, the PyTorch ops below run; ``backend=`` forces either.

Work is chunked over queries (``chunk_size`` rows at a time) and runs wherever the distance tensor lives
(CPU or GPU). Peak extra memory is about 25 bytes per chunk element per chunk in flight (~50 MB at the default
chunk, whatever the matrix size), against 12 bytes per *matrix* element for a sort with indices. On the CPU,
``torch.get_num_threads()`` chunks are processed at a time on a thread pool, with PyTorch's intra-op threads
set to 1 for the duration of the call (see ``_per_query``).
``vireid.evaluation.reference`` holds the plain per-query loop that these functions are tested against.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vireid.errors import ProtocolError
from vireid.evaluation import compiled_metrics

__all__ = [
    "BACKENDS",
    "DEDUPLICATED_CMC_RULES",
    "RULES",
    "PerQueryMetrics",
    "RetrievalResult",
    "cmc_variant",
    "evaluate",
    "evaluate_embeddings",
    "evaluate_similarity",
    "per_query_metrics",
    "resolve_backend",
]

RULES = ("sysu", "llcm", "regdb", "market", "text")
"""Junk/CMC rules understood by :func:`evaluate` (spec section 3)."""

DEDUPLICATED_CMC_RULES = frozenset({"sysu", "llcm"})
"""Rules scored with the de-duplicated ("max similarity per person") CMC; all others use the plain CMC."""

_CAMERA_RULES = frozenset({"sysu", "llcm", "market"})
_SYSU_QUERY_CAM, _SYSU_JUNK_GALLERY_CAM = 3, 2  # cam3 (IR, room 2) and cam2 (visible, room 2) share a location

DEFAULT_CHUNK_ELEMENTS = 1 << 21
"""Default work per chunk (query rows x gallery size); about 50 MB of temporaries per chunk in flight."""


def cmc_variant(rule: str) -> str:
    """``"deduplicated"`` for SYSU/LLCM, ``"plain"`` otherwise (recorded in result metadata)."""
    return "deduplicated" if rule in DEDUPLICATED_CMC_RULES else "plain"


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class PerQueryMetrics:
    """Per-query values behind the means, e.g. to show the K worst queries.

    All arrays have shape (Q,). Invalid queries (no true match after junk removal) have ``num_matches == 0``,
    NaN ``ap``/``inp`` and zero ranks.

    Attributes:
        ap: average precision.
        inp: inverse negative penalty, R / r_R.
        first_match_rank: r_1, the 1-based rank of the first true match in L.
        cmc_position: the position that CMC thresholds: the de-duplicated identity position for SYSU/LLCM,
            r_1 otherwise.
        num_matches: R, the number of true matches in L.
    """

    ap: np.ndarray
    inp: np.ndarray
    first_match_rank: np.ndarray
    cmc_position: np.ndarray
    num_matches: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(Q,) bool: queries with at least one true match."""
        return self.num_matches > 0

    def worst(self, k: int) -> np.ndarray:
        """Indices of the ``k`` valid queries with the lowest AP (ties: lower index first)."""
        candidates = np.flatnonzero(self.valid)
        order = np.argsort(self.ap[candidates], kind="stable")
        return candidates[order[:k]]


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Metrics of one query set against one gallery, as fractions in [0, 1].

    Attributes:
        cmc: (max_rank,) CMC curve; ``cmc[k-1]`` is the rank-k accuracy.
        mAP: mean average precision over valid queries.
        mINP: mean inverse negative penalty over valid queries.
        num_valid_queries: queries with at least one true match (all of them for ``text``).
        num_queries: all queries.
        rule: the junk/CMC rule used.
        per_query: per-query values when asked for (``return_per_query=True``), else ``None``.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    rule: str
    per_query: PerQueryMetrics | None = field(default=None, repr=False)

    @property
    def max_rank(self) -> int:
        return len(self.cmc)

    @property
    def cmc_variant(self) -> str:
        return cmc_variant(self.rule)

    def rank(self, k: int) -> float:
        """Rank-k accuracy (fraction), e.g. ``rank(1)`` is R1."""
        if not 1 <= k <= len(self.cmc):
            raise ProtocolError(f"rank({k}) is outside the computed CMC (max_rank={len(self.cmc)}).")
        return float(self.cmc[k - 1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (fractions; the per-query arrays are left out)."""
        return {
            "rule": self.rule,
            "cmc_variant": self.cmc_variant,
            "cmc": [float(x) for x in self.cmc],
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "num_valid_queries": int(self.num_valid_queries),
            "num_queries": int(self.num_queries),
        }


# ------------------------------------------------------------------------------------------ public API


def evaluate(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    rule: str,
    max_rank: int = 20,
    *,
    chunk_size: int | None = None,
    return_per_query: bool = False,
    backend: str = "auto",
) -> RetrievalResult:
    """CMC, mAP and mINP of a (Q, G) distance matrix under one protocol rule (smaller = more similar).

    Args:
        distmat: (Q, G) numpy array or torch tensor of distances (any float dtype; integers accepted). Work
            runs on the tensor's device.
        q_pids, g_pids: (Q,) and (G,) identities, any integer dtype (numpy, torch, or a sequence).
        q_camids, g_camids: (Q,) and (G,) cameras; may be ``None`` for ``regdb`` and ``text``.
        rule: ``sysu`` (a cam3 query discards every cam2 gallery item; de-duplicated CMC), ``llcm``
            (discard same identity and camera; de-duplicated CMC), ``regdb`` (nothing discarded; plain CMC),
            ``market`` (discard same identity and camera; plain CMC) or ``text`` (nothing discarded; plain
            CMC; every query must have a true match).
        max_rank: CMC length (20 for ReID, 10 for text).
        chunk_size: query rows per chunk (default: about 2M matrix elements per chunk). Bounds memory.
        return_per_query: also attach :class:`PerQueryMetrics` as ``result.per_query``.
        backend: ``"auto"`` (default: the compiled CPU kernel when numba is installed and the distances are on
            the CPU, else PyTorch), ``"numba"`` or ``"torch"``. Both give identical results; see
            :mod:`vireid.evaluation.compiled_metrics`.

    Raises:
        ProtocolError: bad input (names the argument), no valid query, or a ``text`` query without a match.
    """
    source = _MatrixRows(_as_distance_tensor(distmat, "distmat"), "distmat", negate=False)
    labels = _prepare(source, q_pids, g_pids, q_camids, g_camids, rule, max_rank, chunk_size)
    per_query = _per_query(source, labels, rule, chunk_size, backend)
    return _aggregate(per_query, rule, max_rank, return_per_query)


def evaluate_similarity(
    sim: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    rule: str,
    max_rank: int = 20,
    *,
    chunk_size: int | None = None,
    return_per_query: bool = False,
    backend: str = "auto",
) -> RetrievalResult:
    """:func:`evaluate` for a (Q, G) similarity matrix (larger = more similar), e.g. cosine scores.

    Ranking by descending similarity is ranking by ascending ``-sim``; negation is exact in floating point,
    so ties and their stable order are preserved.
    """
    source = _MatrixRows(_as_distance_tensor(sim, "sim"), "sim", negate=True)
    labels = _prepare(source, q_pids, g_pids, q_camids, g_camids, rule, max_rank, chunk_size)
    per_query = _per_query(source, labels, rule, chunk_size, backend)
    return _aggregate(per_query, rule, max_rank, return_per_query)


def evaluate_embeddings(
    q_feats: Any,
    g_feats: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    rule: str,
    max_rank: int = 20,
    *,
    chunk_size: int | None = None,
    return_per_query: bool = False,
    backend: str = "auto",
) -> RetrievalResult:
    """:func:`evaluate_similarity` of the cosine similarity of two embedding sets, without the (Q, G) matrix.

    The features are L2-normalised and each chunk of similarities is computed when it is needed, so memory
    stays bounded by the chunk even for galleries whose full score matrix would not fit.

    Args:
        q_feats: (Q, D) query embeddings; ``g_feats``: (G, D) gallery embeddings (numpy or torch; the work runs
            on ``q_feats``' device). Other arguments as in :func:`evaluate`.
    """
    source = _EmbeddingRows(q_feats, g_feats)
    labels = _prepare(source, q_pids, g_pids, q_camids, g_camids, rule, max_rank, chunk_size)
    per_query = _per_query(source, labels, rule, chunk_size, backend)
    return _aggregate(per_query, rule, max_rank, return_per_query)


def per_query_metrics(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    rule: str,
    *,
    similarity: bool = False,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> PerQueryMetrics:
    """Per-query AP, INP, first-match rank, CMC position and match count (no averaging, no validity check).

    ``similarity=True`` ranks by descending score. Used for "worst queries" pictures and custom aggregation.
    """
    name = "sim" if similarity else "distmat"
    source = _MatrixRows(_as_distance_tensor(distmat, name), name, negate=similarity)
    labels = _prepare(source, q_pids, g_pids, q_camids, g_camids, rule, 1, chunk_size)
    return _per_query(source, labels, rule, chunk_size, backend)


# ----------------------------------------------------------------------------------------- input checks


@dataclass(frozen=True)
class _Labels:
    """Labels on the distance tensor's device, with gallery identities compacted to 0..P-1."""

    q_gid: torch.Tensor  # (Q,) int64 compact gallery identity of each query, -1 if absent from the gallery
    g_gid: torch.Tensor  # (G,) int64 compact identity
    q_cam: torch.Tensor | None  # (Q,) int64
    g_cam: torch.Tensor | None  # (G,) int64
    group_order: torch.Tensor  # (G,) gallery indices sorted by identity, ascending index within identity
    group_start: torch.Tensor  # (P,) first position of each identity in group_order
    group_count: torch.Tensor  # (P,) items per identity
    num_ids: int


def _labels_tensor(values: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise ProtocolError(f"{name} must hold integers, got dtype {tensor.dtype}.", fix=f"pass {name} as ints.")
    else:
        array = np.asarray(values)
        if array.size == 0:
            array = array.astype(np.int64)  # np.asarray([]) is float64
        if array.dtype.kind not in "iu":
            raise ProtocolError(f"{name} must hold integers, got dtype {array.dtype}.", fix=f"pass {name} as ints.")
        if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
            raise ProtocolError(f"{name} holds values that do not fit in int64.")
        tensor = torch.from_numpy(np.ascontiguousarray(array.astype(np.int64, copy=False)))
    if tensor.ndim != 1:
        raise ProtocolError(f"{name} must be one-dimensional, got shape {tuple(tensor.shape)}.")
    return tensor.to(device=device, dtype=torch.int64)


def _as_distance_tensor(matrix: Any, name: str) -> torch.Tensor:
    if isinstance(matrix, torch.Tensor):
        tensor = matrix.detach()
    else:
        array = np.asarray(matrix)
        if array.dtype.kind not in "fiu":
            raise ProtocolError(f"{name} must be a numeric matrix, got dtype {array.dtype}.")
        tensor = torch.from_numpy(array)
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ProtocolError(f"{name} must hold real numbers, got dtype {tensor.dtype}.")
    if not tensor.dtype.is_floating_point:
        tensor = tensor.to(torch.float64)  # integers: exact in float64 up to 2**53
    if tensor.ndim != 2:
        raise ProtocolError(f"{name} must be a (num_queries, num_gallery) matrix, got shape {tuple(tensor.shape)}.")
    return tensor


def _prepare(
    source: _RowSource,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    rule: str,
    max_rank: int,
    chunk_size: int | None,
) -> _Labels:
    if rule not in RULES:
        raise ProtocolError(f"rule={rule!r} is not a known protocol rule.", fix=f"use one of {', '.join(RULES)}.")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise ProtocolError(f"max_rank must be an integer >= 1, got {max_rank!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ProtocolError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    device = source.device
    num_q, num_g = source.shape
    q_pid = _labels_tensor(q_pids, "q_pids", device)
    g_pid = _labels_tensor(g_pids, "g_pids", device)
    if rule in _CAMERA_RULES:
        for cam_name, cams in (("q_camids", q_camids), ("g_camids", g_camids)):
            if cams is None:
                raise ProtocolError(f"{cam_name} is required for rule={rule!r} (its junk rule uses cameras).")
    q_cam = None if q_camids is None else _labels_tensor(q_camids, "q_camids", device)
    g_cam = None if g_camids is None else _labels_tensor(g_camids, "g_camids", device)
    if num_q == 0:
        raise ProtocolError(f"{source.rows_name} is empty: the query set is empty.", fix="check the query list.")
    if num_g == 0:
        raise ProtocolError(f"{source.cols_name} is empty: the gallery is empty.", fix="check the gallery list.")
    for label_name, labels, expected, what in (
        ("q_pids", q_pid, num_q, source.rows_name),
        ("g_pids", g_pid, num_g, source.cols_name),
        ("q_camids", q_cam, num_q, source.rows_name),
        ("g_camids", g_cam, num_g, source.cols_name),
    ):
        if labels is not None and len(labels) != expected:
            raise ProtocolError(
                f"{label_name} has {len(labels)} entries but {what} has {expected}.",
                fix="pass labels in the same order and number as the matrix.",
            )

    # Compact gallery identities and group gallery columns by identity (ascending index inside a group), so
    # a query's true matches are one contiguous run of group_order.
    uniq, g_gid = torch.unique(g_pid, return_inverse=True)
    pos = torch.searchsorted(uniq, q_pid).clamp_(max=len(uniq) - 1)
    q_gid = torch.where(uniq[pos] == q_pid, pos, torch.full_like(pos, -1))
    group_order = torch.argsort(g_gid, stable=True)
    group_count = torch.bincount(g_gid, minlength=len(uniq))
    group_start = torch.cumsum(group_count, 0) - group_count
    return _Labels(
        q_gid=q_gid,
        g_gid=g_gid,
        q_cam=q_cam,
        g_cam=g_cam,
        group_order=group_order,
        group_start=group_start,
        group_count=group_count,
        num_ids=len(uniq),
    )


def _raise_non_finite(chunk: torch.Tensor, rows: torch.Tensor, name: str) -> None:
    bad = (~torch.isfinite(chunk)).nonzero()
    if len(bad):
        r, c = (int(x) for x in bad[0])
        value = float(chunk[r, c])
        raise ProtocolError(
            f"{name} contains a non-finite value ({value}) at query {int(rows[r])}, gallery {c}"
            f" ({len(bad)} such entries in this chunk of {len(rows)} queries).",
            fix="check the features for NaN/inf (a diverged model or a division by a zero norm).",
        )


# ----------------------------------------------------------------------------------------- computation


def _default_chunk_rows(num_g: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(num_g, 1))


def _row_chunks(labels: _Labels, rule: str, num_q: int, rows_per_chunk: int, device: torch.device):
    """Yield (query row indices, removes_cam2) per chunk.

    SYSU chunks hold only cam3 queries or only other queries, so that a chunk's removed gallery columns are
    the same for all its rows (one cheap column fill instead of a per-element mask).
    """
    if rule == "sysu":
        assert labels.q_cam is not None
        is_cam3 = labels.q_cam == _SYSU_QUERY_CAM
        for removes, group in ((True, is_cam3.nonzero().squeeze(1)), (False, (~is_cam3).nonzero().squeeze(1))):
            for start in range(0, len(group), rows_per_chunk):
                yield group[start : start + rows_per_chunk], removes
    else:
        for start in range(0, num_q, rows_per_chunk):
            yield torch.arange(start, min(start + rows_per_chunk, num_q), device=device), False


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of True entries of a contiguous bool tensor, flattened (numpy's scan is ~6x faster on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


class _Workspace:
    """Scratch buffers reused by every chunk.

    Chunk temporaries are tens of MB; allocating them afresh for every chunk costs page faults that, on a
    CPU, take longer than the arithmetic. Buffers only grow, to the largest chunk seen.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


class _RowSource:
    """Where the (Q, G) distances of a chunk of query rows come from (a matrix, or two embedding sets)."""

    name: str
    rows_name: str  # how errors name the query axis, e.g. "distmat's rows" or "q_feats"
    cols_name: str
    shape: tuple[int, int]
    device: torch.device

    def block(self, rows: torch.Tensor, work: _Workspace) -> torch.Tensor:
        """(B, G) contiguous float32/float64 distances of the query rows ``rows`` (ascending indices)."""
        raise NotImplementedError


class _MatrixRows(_RowSource):
    def __init__(self, dist: torch.Tensor, name: str, *, negate: bool):
        self.dist, self.name, self.negate = dist, name, negate
        self.rows_name, self.cols_name = f"{name}'s rows", f"{name}'s columns"
        self.shape = (int(dist.shape[0]), int(dist.shape[1]))
        self.device = dist.device
        # Exact widening of float16/bfloat16; ties and order are preserved.
        self.dtype = torch.float64 if dist.dtype == torch.float64 else torch.float32

    def block(self, rows: torch.Tensor, work: _Workspace) -> torch.Tensor:
        num_g = self.shape[1]
        row0, row1 = int(rows[0]), int(rows[-1]) + 1
        if row1 - row0 == len(rows):
            chunk = self.dist[row0:row1]
        elif self.dist.dtype == self.dtype and self.dist.is_contiguous():
            chunk = torch.index_select(self.dist, 0, rows, out=work.get("rows", (len(rows), num_g), self.dtype))
        else:
            chunk = self.dist.index_select(0, rows)
        if self.negate or chunk.dtype != self.dtype or not chunk.is_contiguous():
            buf = work.get("dist", tuple(chunk.shape), self.dtype)
            if self.negate:
                torch.neg(chunk, out=buf)  # exact; descending similarity == ascending negated similarity
            else:
                buf.copy_(chunk)
            chunk = buf
        return chunk


class _EmbeddingRows(_RowSource):
    def __init__(self, q_feats: Any, g_feats: Any):
        self.name, self.rows_name, self.cols_name = "the similarity of q_feats and g_feats", "q_feats", "g_feats"
        q = _as_feature_tensor(q_feats, "q_feats")
        g = _as_feature_tensor(g_feats, "g_feats").to(device=q.device, dtype=q.dtype)
        if q.shape[1] != g.shape[1]:
            raise ProtocolError(f"q_feats has dimension {q.shape[1]} but g_feats has {g.shape[1]}.")
        self.q = torch.nn.functional.normalize(q, dim=1)
        self.g_t = torch.nn.functional.normalize(g, dim=1).T.contiguous()
        _warn_if_degenerate(q, self.q, "q_feats")
        _warn_if_degenerate(g, self.g_t.T, "g_feats")
        self.shape = (len(q), len(g))
        self.device = q.device

    def block(self, rows: torch.Tensor, work: _Workspace) -> torch.Tensor:
        buf = work.get("dist", (len(rows), self.shape[1]), self.q.dtype)
        return torch.mm(self.q.index_select(0, rows), self.g_t, out=buf).neg_()  # distance = -cosine


class DegenerateFeaturesWarning(UserWarning):
    """Embeddings that cannot rank anything (all zero, or all the same direction): scores come from tie order."""


def _warn_if_degenerate(raw: torch.Tensor, unit: torch.Tensor, name: str) -> None:
    """Warn when rows of ``raw`` are all-zero or when every row has the same direction.

    Why: cosine similarities are then equal, so every ranking is decided by the (stable) gallery order
    and rank-1/mAP look like results while measuring nothing: typically an untrained or broken model, or
    features read from the wrong output. A warning rather than an error, so partial results still come back.
    """
    if len(raw) == 0:
        return
    zero = int((raw.abs().amax(dim=1) == 0).sum())
    if zero:
        warnings.warn(
            f"{name}: {zero} of {len(raw)} embeddings are all zero; their cosine similarity to everything is 0, so "
            f"their ranks come from tie order, not from the model. Check the model's output (an untrained or "
            f"broken model, or the wrong feature).",
            DegenerateFeaturesWarning,
            stacklevel=4,
        )
    elif len(raw) > 1 and float((unit - unit[:1]).abs().max()) <= 1e-6:
        warnings.warn(
            f"{name}: all {len(raw)} embeddings point in the same direction, so every similarity ties and ranks "
            f"come from tie order, not from the model. Check the model's output (an untrained or broken model, "
            f"or the wrong feature).",
            DegenerateFeaturesWarning,
            stacklevel=4,
        )


def _as_feature_tensor(x: Any, name: str) -> torch.Tensor:
    tensor = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if tensor.ndim != 2 or not tensor.dtype.is_floating_point:
        raise ProtocolError(
            f"{name} must be a (num_items, dim) float matrix, got {tuple(tensor.shape)} {tensor.dtype}."
        )
    return tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)


@contextlib.contextmanager
def _intra_op_threads(num: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


BACKENDS = ("auto", "numba", "torch")
"""Implementations of the per-chunk metric pass (see :func:`evaluate`)."""


def resolve_backend(backend: str, device: torch.device) -> str:
    """The implementation that ``backend`` selects for distances on ``device``: ``"numba"`` or ``"torch"``."""
    if backend not in BACKENDS:
        raise ProtocolError(f"backend={backend!r} is not an evaluation backend.", fix=f"use one of {BACKENDS}.")
    if backend == "auto":
        return "numba" if device.type == "cpu" and compiled_metrics.available() else "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise ProtocolError(
                f"backend='numba' runs on the CPU, but the distances are on {device}.",
                fix="use backend='auto' or 'torch' for GPU tensors (or move the matrix to the CPU).",
            )
        if not compiled_metrics.available():
            raise ProtocolError(
                "backend='numba' needs the optional numba package, which is not installed.",
                fix="pip install 'vireid[fast]' (or use backend='auto', which falls back to PyTorch).",
            )
    return backend


@dataclass(frozen=True)
class _NumpyLabels:
    """The label arrays of :class:`_Labels` as int64 numpy arrays, in the form the compiled kernel takes."""

    q_gid: np.ndarray
    q_cam: np.ndarray
    g_gid: np.ndarray
    g_cam: np.ndarray
    group_order: np.ndarray
    group_start: np.ndarray
    group_count: np.ndarray
    cam2_cols: np.ndarray
    junk_rule: int
    num_ids: int

    @classmethod
    def of(cls, labels: _Labels, rule: str) -> _NumpyLabels:
        num_q, num_g = len(labels.q_gid), len(labels.g_gid)
        q_cam = labels.q_cam.numpy() if labels.q_cam is not None else np.zeros(num_q, dtype=np.int64)
        g_cam = labels.g_cam.numpy() if labels.g_cam is not None else np.zeros(num_g, dtype=np.int64)
        junk_rule = {
            "sysu": compiled_metrics.JUNK_SYSU,
            "llcm": compiled_metrics.JUNK_SAME_ID_CAM,
            "market": compiled_metrics.JUNK_SAME_ID_CAM,
        }.get(rule, compiled_metrics.JUNK_NONE)
        cam2 = np.flatnonzero(g_cam == _SYSU_JUNK_GALLERY_CAM) if rule == "sysu" else np.zeros(0, dtype=np.int64)
        return cls(
            q_gid=labels.q_gid.numpy(),
            q_cam=np.ascontiguousarray(q_cam, dtype=np.int64),
            g_gid=labels.g_gid.numpy(),
            g_cam=np.ascontiguousarray(g_cam, dtype=np.int64),
            group_order=labels.group_order.numpy(),
            group_start=labels.group_start.numpy(),
            group_count=labels.group_count.numpy(),
            cam2_cols=cam2.astype(np.int64),
            junk_rule=junk_rule,
            num_ids=labels.num_ids,
        )

    def chunk_metrics(
        self, chunk: torch.Tensor, rows: torch.Tensor, rule: str
    ) -> tuple[bool, tuple[torch.Tensor, ...]]:
        """(every row sum finite, (ap, inp, first_rank, cmc_position, num_matches)) of one chunk."""
        index = rows.numpy()
        finite, out = compiled_metrics.chunk_metrics(
            chunk.numpy(),
            self.q_gid[index],
            self.q_cam[index],
            self.g_gid,
            self.g_cam,
            self.group_order,
            self.group_start,
            self.group_count,
            self.cam2_cols,
            self.junk_rule,
            rule in DEDUPLICATED_CMC_RULES,
            self.num_ids,
        )
        return finite, tuple(torch.from_numpy(x) for x in out)


def _per_query(source: _RowSource, labels: _Labels, rule: str, chunk_size: int | None, backend: str) -> PerQueryMetrics:
    num_q, num_g = source.shape
    device = source.device
    compiled = _NumpyLabels.of(labels, rule) if resolve_backend(backend, device) == "numba" else None
    rows_per_chunk = chunk_size or _default_chunk_rows(num_g)
    ap = torch.full((num_q,), float("nan"), dtype=torch.float64, device=device)
    inp = torch.full_like(ap, float("nan"))
    first_rank = torch.zeros(num_q, dtype=torch.int64, device=device)
    cmc_pos = torch.zeros_like(first_rank)
    num_matches = torch.zeros_like(first_rank)
    cam2_cols = None
    if rule == "sysu":
        assert labels.g_cam is not None
        cam2_cols = (labels.g_cam == _SYSU_JUNK_GALLERY_CAM).nonzero().squeeze(1)
    # The compiled kernel applies the junk rule row by row, so it takes plain contiguous chunks (no row copy).
    chunk_rule = rule if compiled is None else "regdb"
    chunks = [
        (rows, removes) for rows, removes in _row_chunks(labels, chunk_rule, num_q, rows_per_chunk, device) if len(rows)
    ]
    local = threading.local()

    def run(item: tuple[torch.Tensor, bool]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        rows, removes_cam2 = item
        if not hasattr(local, "work"):
            local.work = _Workspace(device)
        with torch.no_grad():
            chunk = source.block(rows, local.work)
            if compiled is not None:
                finite, out = compiled.chunk_metrics(chunk, rows, rule)
                if not finite:  # the kernel saw a NaN/inf: name the first one
                    _raise_non_finite(chunk, rows, source.name)
                return rows, out
            if not bool(torch.isfinite(chunk.sum(dim=1)).all()):  # cheap screen; exact check only on failure
                _raise_non_finite(chunk, rows, source.name)
            return rows, _chunk_metrics(chunk, labels, rule, rows, cam2_cols if removes_cam2 else None, local.work)

    # On the CPU, chunks run in parallel on a thread pool with single-threaded PyTorch ops. The per-chunk
    # work is a long sequence of short memory-bound operations: intra-op threading would synchronise at
    # every one of them, and when the machine's cores are busy (data-loader workers, other jobs) each of
    # those barriers can stall for a scheduler time slice (measured 4-6x slower on a loaded 2-core machine).
    threads = torch.get_num_threads()
    if device.type == "cpu" and threads > 1 and len(chunks) > 1:
        with _intra_op_threads(1), ThreadPoolExecutor(max_workers=min(threads, len(chunks))) as pool:
            results = list(pool.map(run, chunks))
    else:
        results = [run(item) for item in chunks]
    for rows, out in results:
        ap[rows], inp[rows], first_rank[rows], cmc_pos[rows], num_matches[rows] = out
    return PerQueryMetrics(
        ap=ap.cpu().numpy(),
        inp=inp.cpu().numpy(),
        first_match_rank=first_rank.cpu().numpy(),
        cmc_position=cmc_pos.cpu().numpy(),
        num_matches=num_matches.cpu().numpy(),
    )


def _junk_mask(labels: _Labels, rule: str, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
    """(B, K) bool mask of removed gallery items at the (B, K) gallery indices ``cols`` of queries ``rows``.

    None when the rule removes nothing.
    """
    if rule == "sysu":
        assert labels.q_cam is not None and labels.g_cam is not None
        q3 = (labels.q_cam[rows] == _SYSU_QUERY_CAM).unsqueeze(1)
        return q3 & (labels.g_cam[cols] == _SYSU_JUNK_GALLERY_CAM)
    if rule in ("llcm", "market"):
        assert labels.q_cam is not None and labels.g_cam is not None
        same_id = labels.g_gid[cols] == labels.q_gid[rows].unsqueeze(1)
        return same_id & (labels.g_cam[cols] == labels.q_cam[rows].unsqueeze(1))
    return None


CACHE_BLOCK_ELEMENTS = 1 << 18
"""Items per block of the per-item pass (keys, table lookup): small enough for the blocks to stay in cache."""

BUCKETS_PER_MATCH = 64
"""Bucket-table width per true match (see ``_chunk_metrics``): wider tables cost more to build, narrower ones
send more items to the exact per-item comparison."""


def _chunk_metrics(
    d: torch.Tensor,
    labels: _Labels,
    rule: str,
    rows: torch.Tensor,
    removed_cols: torch.Tensor | None,
    work: _Workspace,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metrics of one chunk of query rows; see the module docstring for the method.

    Args:
        d: (B, G) contiguous, finite distances of the queries ``rows``.
        rows: (B,) global query indices.
        removed_cols: gallery columns removed for every row of this chunk (SYSU cam3 queries), or None.
    Returns:
        ap, inp (B,) float64; first_rank, cmc_position, num_matches (B,) int64.
    """
    device = d.device
    num_b, num_g = d.shape
    q_gid = labels.q_gid[rows]
    ap = torch.full((num_b,), float("nan"), dtype=torch.float64, device=device)
    inp = ap.clone()
    first_rank = torch.zeros(num_b, dtype=torch.int64, device=device)
    cmc_pos = torch.zeros_like(first_rank)

    # --- true matches: the query identity's run of group_order, minus removed items ----------------------
    present = q_gid >= 0
    safe_gid = q_gid.clamp(min=0)
    count = torch.where(present, labels.group_count[safe_gid], torch.zeros_like(q_gid))
    r_max = int(count.max())
    if r_max == 0:
        return ap, inp, first_rank, cmc_pos, torch.zeros_like(first_rank)
    slot = torch.arange(r_max, device=device)
    in_group = slot.unsqueeze(0) < count.unsqueeze(1)  # (B, r_max)
    run = (labels.group_start[safe_gid].unsqueeze(1) + slot).clamp_(max=num_g - 1)
    match_cols = torch.where(in_group, labels.group_order[run], torch.zeros_like(run))
    junk_at_match = _junk_mask(labels, rule, rows, match_cols)
    if rule == "sysu" and removed_cols is None:
        junk_at_match = None  # this chunk has no cam3 query
    valid_match = in_group if junk_at_match is None else in_group & ~junk_at_match
    num_matches = valid_match.sum(1)
    valid_row = num_matches > 0
    nm = num_matches.clamp(min=1)

    # P: the valid matches in stable order (distance, then gallery index: match_cols ascend within a run).
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=device)
    pos_sorted, sort_idx = torch.sort(torch.where(valid_match, d.gather(1, match_cols), inf), dim=1, stable=True)
    pos_cols = match_cols.gather(1, sort_idx)
    valid_sorted = slot.unsqueeze(0) < num_matches.unsqueeze(1)

    # --- bucket keys: a monotone map of distance to 0..n_buckets+3, identical for every item ------------
    # Equal-width buckets over [first match, last match], starting two widths below the first match so that
    # the many items far below it do not share its bucket. Monotone float ops + truncation keep
    # key(a) <= key(b) whenever a <= b, and equal values always get equal keys: that is all exactness needs.
    # Removed (junk) items get the extra key n_buckets+4, which never holds a match, so they land in bin R.
    lo = torch.where(valid_row, pos_sorted[:, 0], torch.zeros_like(pos_sorted[:, 0]))
    hi = torch.where(valid_row, pos_sorted.gather(1, (nm - 1).unsqueeze(1)).squeeze(1), lo)
    n_buckets = int(min(max(64, BUCKETS_PER_MATCH * r_max), 2 * num_g + 64))
    width = n_buckets + 5
    scale = n_buckets / (hi - lo)
    scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
    origin = lo - 2.0 / scale
    origin = torch.where(torch.isfinite(origin), origin, lo)

    def bucket_keys(values: torch.Tensor, rows: torch.Tensor | slice, out: torch.Tensor) -> torch.Tensor:
        """Keys of ``values`` (items of the chunk rows ``rows``), written into the int64 ``out``.

        The same three IEEE operations are applied to every item, matches and non-matches alike, so equal
        distances always get equal keys and the order of keys never contradicts the order of distances.
        """
        keyf = torch.sub(values, origin[rows].unsqueeze(-1) if values.ndim == 2 else origin[rows])
        keyf.mul_(scale[rows].unsqueeze(-1) if values.ndim == 2 else scale[rows]).clamp_(0, n_buckets + 3)
        return out.copy_(keyf)  # truncation toward zero of non-negative values

    match_keys = bucket_keys(pos_sorted, slice(None), torch.empty_like(pos_cols))  # (B, r_max), ascending

    # --- per-row table: bin at each bucket's lower edge, offset per row, minus FLAG if a match is inside --
    bins = r_max + 1
    row_off = torch.arange(num_b, device=device) * bins
    flag = num_b * bins + 1
    index_dtype = torch.int32 if flag < 2**30 else torch.int64
    prev_keys = torch.cat([torch.full_like(match_keys[:, :1], -1), match_keys[:, :-1]], dim=1)
    first_in_bucket = valid_sorted & (match_keys != prev_keys)
    steps = work.get("steps", (num_b, width), index_dtype).zero_()
    steps[:, 0] = torch.where(valid_row, row_off, row_off + 1).to(index_dtype)  # invalid rows: never examined
    safe_keys = torch.where(valid_sorted, match_keys, torch.zeros_like(match_keys))
    steps.scatter_add_(1, safe_keys + 1, valid_sorted.to(index_dtype))  # +1 after each match's bucket
    flag_step = (first_in_bucket * flag).to(index_dtype)
    steps.scatter_add_(1, safe_keys, -flag_step)
    steps.scatter_add_(1, safe_keys + 1, flag_step)
    table = steps.cumsum_(1)

    # --- every item: key -> bin at its bucket's lower edge (+ row offset, - FLAG if a match is inside) ----
    # Done in row blocks that stay in cache: the float and int64 keys live only per block, and the chunk
    # keeps just the int32 bins and a bool mask of items to look at again. Own-identity items (the matches
    # themselves, and removed ones) are not non-matches: they are parked in bin r_max, which no rank ever
    # counts (padding slots repeat the run's first column). Removed items get the key n_buckets+4, which
    # holds no match, so their bin is R, which never counts either.
    dedup = rule in DEDUPLICATED_CMC_RULES
    base = work.get("base", (num_b, num_g), index_dtype)
    examine = work.get("examine", (num_b, num_g), torch.bool)
    own_cols = torch.where(in_group, match_cols, match_cols[:, :1])
    parked = (row_off + r_max).to(index_dtype).unsqueeze(1).expand_as(own_cols)
    limit = row_off.to(index_dtype).unsqueeze(1)
    block_rows = max(1, CACHE_BLOCK_ELEMENTS // num_g)
    for r0 in range(0, num_b, block_rows):
        rs = slice(r0, min(r0 + block_rows, num_b))
        n = rs.stop - r0
        key = bucket_keys(d[rs], rs, work.get("key", (n, num_g), torch.int64))
        if removed_cols is not None and len(removed_cols):
            key.index_fill_(1, removed_cols, n_buckets + 4)
        torch.gather(table[rs], 1, key, out=base[rs])
        base[rs].scatter_(1, own_cols[rs], parked[rs])
        if dedup:  # also look at every item in bin 0, ahead of the first match
            torch.le(base[rs], limit[rs], out=examine[rs])
        else:
            torch.lt(base[rs], 0, out=examine[rs])

    # --- look again, one by one, at items that share a bucket with a match or precede the first match ---
    # An item's bin is the number of matches ahead of it in the stable order: a match is ahead if it is
    # closer, or equally close with a smaller gallery index. Ties are therefore exact here too.
    # (1-D index_select everywhere: several times faster than advanced indexing on CPU.)
    base_flat, d_flat = base.view(-1), d.view(-1)
    lin = _flat_nonzero(examine).to(device)  # sorted flat indices (row-major)
    item_base = base_flat.index_select(0, lin)
    flagged = _flat_nonzero(item_base < 0).to(device)
    f_lin = lin.index_select(0, flagged)
    f_row = torch.div(f_lin, num_g, rounding_mode="floor")
    f_col = f_lin - f_row * num_g
    f_first = item_base.index_select(0, flagged).long() + (flag - bins * f_row)  # first match in the bucket
    f_val = d_flat.index_select(0, f_lin)
    pos_flat, cols_flat, keys_flat = pos_sorted.reshape(-1), pos_cols.reshape(-1), match_keys.reshape(-1)

    def ahead(at: torch.Tensor, value: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        p = pos_flat.index_select(0, at)
        return (p < value) | ((p == value) & (cols_flat.index_select(0, at) < col))

    # Every flagged bucket holds at least one match: compare with it, then with any further match that shares
    # the bucket (rare with ~64 buckets per match), on the shrinking set of items concerned.
    at = f_row * r_max + f_first
    f_bin = f_first + ahead(at, f_val, f_col)
    more = torch.arange(len(f_lin), device=device)
    m_key = bucket_keys(f_val, f_row, torch.empty_like(f_lin))
    m_val, m_col, m_at = f_val, f_col, at
    m_left = num_matches.index_select(0, f_row) - f_first
    for _ in range(1, r_max):
        m_left, m_at = m_left - 1, m_at + 1
        live = (m_left > 0) & (keys_flat.index_select(0, m_at.clamp(max=len(keys_flat) - 1)) == m_key)
        keep = _flat_nonzero(live).to(device)
        if len(keep) == 0:
            break
        more, m_key, m_val, m_col, m_at, m_left = (
            x.index_select(0, keep) for x in (more, m_key, m_val, m_col, m_at, m_left)
        )
        f_bin.index_add_(0, more, ahead(m_at, m_val, m_col).long())
    base_flat.index_copy_(0, f_lin, (f_bin + bins * f_row).to(index_dtype))

    # --- ranks of the matches: j + 1 + non-matches with a smaller bin ------------------------------------
    hist = torch.bincount(base_flat, minlength=num_b * bins).view(num_b, bins)
    negatives_before = hist.cumsum(1)[:, :r_max]
    ranks = (slot + 1).unsqueeze(0) + negatives_before  # (B, r_max), valid where slot < num_matches

    precision = torch.where(valid_sorted, (slot + 1).unsqueeze(0) / ranks.to(torch.float64), 0.0)
    ap = torch.where(valid_row, precision.sum(1) / nm, ap)
    last_rank = ranks.gather(1, (nm - 1).unsqueeze(1)).squeeze(1)
    inp = torch.where(valid_row, num_matches / last_rank.to(torch.float64), inp)
    first_rank = torch.where(valid_row, ranks[:, 0], first_rank)

    if dedup:
        # Identities with an item in bin 0 (ahead of the first match): all were examined above, and none is
        # the query's own identity (parked in bin r_max).
        item_row = torch.div(lin, num_g, rounding_mode="floor")
        front = _flat_nonzero(base_flat.index_select(0, lin) == bins * item_row).to(device)
        front_row, front_lin = item_row.index_select(0, front), lin.index_select(0, front)
        front_gid = labels.g_gid.index_select(0, front_lin - front_row * num_g)
        seen = torch.zeros(num_b * labels.num_ids, dtype=torch.bool, device=device)
        seen.index_fill_(0, front_row * labels.num_ids + front_gid, True)
        cmc_pos = torch.where(valid_row, 1 + seen.view(num_b, labels.num_ids).sum(1), cmc_pos)
    else:
        cmc_pos = first_rank.clone()
    return ap, inp, first_rank, cmc_pos, num_matches


def _aggregate(per_query: PerQueryMetrics, rule: str, max_rank: int, attach: bool) -> RetrievalResult:
    valid = per_query.valid
    num_q = len(valid)
    num_valid = int(valid.sum())
    if rule == "text" and num_valid < num_q:
        missing = np.flatnonzero(~valid)
        shown = ", ".join(str(i) for i in missing[:20]) + (", ..." if len(missing) > 20 else "")
        raise ProtocolError(
            f"text protocol: {len(missing)} of {num_q} queries have no true match in the gallery"
            f" (query indices {shown}); AP is undefined for them.",
            fix="every caption's identity must have at least one gallery pair; check the split.",
        )
    if num_valid == 0:
        raise ProtocolError(
            f"none of the {num_q} queries has a true match in the gallery after the {rule!r} junk rule.",
            fix="check that query and gallery share identities and that the rule matches the protocol.",
        )
    positions = per_query.cmc_position[valid]
    hist = np.bincount(np.minimum(positions, max_rank + 1), minlength=max_rank + 2)[1 : max_rank + 1]
    cmc = np.cumsum(hist, dtype=np.float64) / num_valid
    return RetrievalResult(
        cmc=cmc,
        mAP=float(np.mean(per_query.ap[valid], dtype=np.float64)),
        mINP=float(np.mean(per_query.inp[valid], dtype=np.float64)),
        num_valid_queries=num_valid,
        num_queries=num_q,
        rule=rule,
        per_query=per_query if attach else None,
    )
