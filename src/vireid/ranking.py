"""Top-k ranking of a gallery's features: exact blocks in torch, faiss flat and faiss IVF.

Ranking is by cosine similarity (inner product of L2-normalised features), best first. Backends:

``torch`` (default)
    Exact. The gallery is read in row blocks (from the memory-mapped feature file, or a tensor) and each
    block's (Q, b) score matrix is reduced to its top k, then merged with the running top k; memory is
    bounded by one block (``block_elements`` scores, 64 MB by default) whatever the gallery size. Runs on the
    GPU when the queries are there.
``faiss``
    Exact, ``faiss.IndexFlatIP`` (optional extra ``vireid[faiss]``). Holds the whole gallery in memory.
``ivf``
    Approximate, a faiss ``IndexIVFFlat`` built by ``vireid index --ivf NLIST`` and searched with ``nprobe``
    lists. For galleries of millions of images where exact search is too slow; recall depends on ``nprobe``.

``auto`` uses ``ivf`` when the index carries one (the user asked for it when indexing), else ``torch``.
``benchmarks/search_speed.py`` measures all three (see docs/benchmarks.md, "Search speed").

Layering: this module sits below both :mod:`vireid.index` (which stores galleries and builds their IVF
file) and :mod:`vireid.search` (queries, rank lists, the command line); it imports neither, so the two
depend one way (search -> index -> ranking).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from vireid.errors import ConfigError, DataError, require

Backend = Literal["auto", "torch", "faiss", "ivf"]
BACKENDS = ("auto", "torch", "faiss", "ivf")

DEFAULT_BLOCK_ELEMENTS = 1 << 24
"""Scores per block in exact torch search (16M float32 = 64 MB)."""


@dataclass
class SearchResult:
    """Top-k of every query.

    Attributes:
        scores: (Q, k) float32 cosine similarities, descending along each row.
        indices: (Q, k) int64 gallery rows; -1 where an approximate backend found fewer than k items.
        backend: the backend that produced them (``torch``, ``faiss`` or ``ivf``).
    """

    scores: torch.Tensor
    indices: torch.Tensor
    backend: str


# --------------------------------------------------------------------------------------- exact (torch)


def exact_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor | np.ndarray,
    k: int,
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` inner products of (Q, D) ``queries`` against (N, D) ``gallery``, in bounded memory.

    ``gallery`` may be a tensor (on any device) or a numpy array / memory map, which is read block by block
    and moved to the queries' device. Returns ``(scores, indices)``, each (Q, min(k, N)), best first.
    """
    if queries.dim() != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise DataError(
            f"queries of shape {tuple(queries.shape)} do not match gallery features of shape {tuple(gallery.shape)}."
        )
    num_q, num_g = queries.shape[0], gallery.shape[0]
    k = min(int(k), num_g)
    if k < 1:
        raise ConfigError(f"k={k}: ask for at least one result (and search a non-empty gallery).")
    device = queries.device
    queries = queries.float()
    q_rows = min(num_q, 4096)
    g_rows = max(k, block_elements // max(q_rows, 1))
    out_scores, out_indices = [], []
    for q0 in range(0, num_q, q_rows):
        q = queries[q0 : q0 + q_rows]
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for g0 in range(0, num_g, g_rows):
            block = gallery[g0 : g0 + g_rows]
            if isinstance(block, np.ndarray):
                block = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))
            block = block.to(device=device, dtype=torch.float32, non_blocking=True)
            scores = q @ block.T
            top_s, top_i = scores.topk(min(k, scores.shape[1]), dim=1)
            top_i = top_i + g0
            if best_s is None:
                best_s, best_i = top_s, top_i
            else:
                cat_s = torch.cat([best_s, top_s], dim=1)
                cat_i = torch.cat([best_i, top_i], dim=1)
                best_s, pos = cat_s.topk(k, dim=1)
                best_i = cat_i.gather(1, pos)
        out_scores.append(best_s)
        out_indices.append(best_i)
    return torch.cat(out_scores), torch.cat(out_indices)


# ----------------------------------------------------------------------------------------------- faiss


def _faiss():
    return require("faiss", "faiss", "faiss search (--backend faiss/ivf)")


def faiss_flat_index(gallery: np.ndarray | torch.Tensor, *, chunk_rows: int = 1 << 16):
    """An exact ``faiss.IndexFlatIP`` over (N, D) features, filled in chunks (from a memory map if given)."""
    faiss = _faiss()
    gallery_np = gallery.cpu().numpy() if isinstance(gallery, torch.Tensor) else gallery
    index = faiss.IndexFlatIP(int(gallery_np.shape[1]))
    for start in range(0, gallery_np.shape[0], chunk_rows):
        index.add(np.ascontiguousarray(gallery_np[start : start + chunk_rows], dtype=np.float32))
    return index


def build_ivf(gallery: np.ndarray | torch.Tensor, nlist: int, *, train_rows: int | None = None, seed: int = 0):
    """A faiss ``IndexIVFFlat`` (inner product) with ``nlist`` lists over (N, D) features.

    The coarse quantiser is trained on ``train_rows`` rows drawn with a seeded generator (default
    ``min(N, 64 * nlist)``; faiss wants at least 39 per list), then all rows are added in chunks.
    A common choice is ``nlist`` about ``4 * sqrt(N)``.
    """
    faiss = _faiss()
    gallery_np = gallery.cpu().numpy() if isinstance(gallery, torch.Tensor) else gallery
    num, dim = gallery_np.shape
    if not 1 <= nlist <= num:
        raise ConfigError(f"IVF nlist={nlist} must be between 1 and the gallery size {num}.", fix="e.g. 4 * sqrt(N).")
    rows = min(num, train_rows or 64 * nlist)
    pick = np.sort(np.random.default_rng(seed).choice(num, size=rows, replace=False))
    quantizer = faiss.IndexFlatIP(int(dim))
    index = faiss.IndexIVFFlat(quantizer, int(dim), int(nlist), faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(gallery_np[pick], dtype=np.float32))
    for start in range(0, num, 1 << 16):
        index.add(np.ascontiguousarray(gallery_np[start : start + (1 << 16)], dtype=np.float32))
    return index


def save_ivf(index, path: str | os.PathLike) -> None:
    """Write a faiss index in faiss's own binary format (no pickle)."""
    _faiss().write_index(index, str(path))


def load_ivf(path: str | os.PathLike):
    return _faiss().read_index(str(path))


def faiss_topk(queries: torch.Tensor, index, k: int, *, nprobe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of (Q, D) ``queries`` in a faiss index; ``nprobe`` sets the lists visited by an IVF index."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    k = min(int(k), index.ntotal)
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    scores, indices = index.search(q, k)
    return torch.from_numpy(scores), torch.from_numpy(indices.astype(np.int64))


# ------------------------------------------------------------------------------------------ index search


def resolve_backend(index: Any, backend: str) -> str:
    """The concrete backend for ``backend`` on ``index`` (``auto``: ``ivf`` if the index has one, else ``torch``)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "ivf" if index.ivf_path.is_file() else "torch"
    if backend == "ivf" and not index.ivf_path.is_file():
        raise ConfigError(
            f"index {index.folder} has no IVF index ({index.ivf_path.name}).",
            fix="rebuild it with `vireid index ... --ivf NLIST`, or use --backend torch/faiss (exact).",
        )
    return backend


def search_index(
    index: Any,
    queries: torch.Tensor,
    k: int = 10,
    *,
    backend: str = "auto",
    nprobe: int = 16,
    device: str | torch.device | None = None,
    in_memory: bool = False,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> SearchResult:
    """Rank ``index``'s gallery for (Q, D) L2-normalised ``queries`` and return the top ``k`` of each.

    ``index`` is a :class:`vireid.index.GalleryIndex` (typed loosely here: this module must not import the
    index module, which imports this one).

    Args:
        backend: ``auto``, ``torch``, ``faiss`` or ``ivf`` (module docstring).
        nprobe: IVF lists to visit (``ivf`` only).
        device: where exact torch search runs (default the queries' device).
        in_memory: torch backend: load the features once and keep them on ``device`` (fast repeated
            searches) instead of streaming them from the memory map.
    """
    queries = torch.as_tensor(queries)
    if queries.dim() == 1:
        queries = queries[None]
    if queries.dim() != 2 or queries.shape[1] != index.meta.dim:
        raise DataError(
            f"query features of shape {tuple(queries.shape)} do not match the index's {index.meta.dim}-d features.",
            fix="extract queries with the checkpoint that built the index.",
        )
    if k < 1:
        raise ConfigError(f"top/k={k} must be at least 1.")
    name = resolve_backend(index, backend)
    if name == "torch":
        if device is not None:
            queries = queries.to(device)
        gallery = index.features_tensor(queries.device) if in_memory else index.features
        scores, indices = exact_topk(queries, gallery, k, block_elements=block_elements)
    else:  # faiss indexes are built (flat) or read (IVF) once per opened index and kept
        if name not in index.faiss_cache:
            index.faiss_cache[name] = faiss_flat_index(index.features) if name == "faiss" else load_ivf(index.ivf_path)
        scores, indices = faiss_topk(queries, index.faiss_cache[name], k, nprobe=nprobe if name == "ivf" else None)
    return SearchResult(scores=scores.float().cpu(), indices=indices.long().cpu(), backend=name)
