"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), chunked and sparse. Off by default.

Spec: ``data-and-protocols.md`` section 4. Rules vireid enforces:

* Re-ranking is never on unless asked for (``RerankOptions``; ``eval.rerank`` in configs, ``--rerank`` on the
  CLI). IDKL's release re-ranks SYSU and LLCM silently and DAKD's ``test.sh`` passes ``--rerank``; their
  numbers are not comparable with un-re-ranked ones.
* Every re-ranked result carries the label ``rerank=k_reciprocal(k1,k2,lambda,variant)`` (see
  :attr:`RerankOptions.label`) in its metadata and in every printed table, and re-ranked numbers never share a
  table with plain ones without that label.
* Re-ranking never drives checkpoint selection.
* vireid keeps everything in float32 (the references keep V, and DAKD also the features, in float16, so their
  re-ranked numbers are not bit-reproducible).

Method, for N = Q + G items (queries first):

1. D = squared Euclidean distances of the stacked features (diagonal exactly 0, negatives from rounding
   clamped to 0).
2. D^ = each row of D divided by its maximum (D is symmetric, so this equals the references'
   column-max-then-transpose).
3. Neighbour lists: each row of D^ sorted ascending, ties by index (stable). ``query_only`` (IDKL's SYSU
   setting) first sets every gallery column to the global maximum, so neighbours come from the queries only.
4. R(i) = {j in top-(k1+1)(i) : i in top-(k1+1)(j)}.
5. For each c in R(i), with R'(c) its k-reciprocal set at round(k1/2) (Python/NumPy half-to-even rounding):
   if |R'(c) & R(i)| > 2/3 |R'(c)|, add R'(c) to R(i).
6. V_ij = exp(-D^_ij) over the expanded set, normalised to sum 1 (unmodified D^, also for ``query_only``).
7. Query expansion (k2 > 1): V_i <- mean of V_r over the top-k2 neighbours r of i.
8. Jaccard distance d_J(i, j) = 1 - s / (2 - s), s = sum_k min(V_ik, V_jk).
9. Final distance = (1 - lambda) d_J + lambda D^, restricted to query rows and gallery columns.

Memory: the dense method needs several (Q+G)^2 matrices (and the references an int64 (Q+G)^2 sort index).
Here the neighbour lists come from a chunked top-k (N x (k1+1) indices), V is sparse (O(k1) non-zeros per row
before expansion, O(k1 k2) after), the Jaccard sums use an inverted index over gallery rows, and every dense
block is (chunk x N). ``vireid.evaluation.reference.k_reciprocal_distance_dense`` follows the nine steps
literally and is the test oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from vireid.errors import ProtocolError

__all__ = ["VARIANTS", "RerankOptions", "k_reciprocal_distance", "safe_row_max", "squared_distance_block"]

Variant = Literal["joint", "query_only"]
VARIANTS = ("joint", "query_only")


@dataclass(frozen=True)
class RerankOptions:
    """Parameters of k-reciprocal re-ranking; passing one to the runner turns re-ranking on.

    Attributes:
        k1: size of the k-reciprocal neighbourhood (paper: 20).
        k2: query-expansion neighbourhood (paper: 6; 1 disables query expansion).
        lambda_value: weight of the original distance in the final score (paper: 0.3).
        variant: ``joint`` (neighbours among queries and gallery; DAKD, IDKL for LLCM) or ``query_only``
            (neighbours among queries only; IDKL for SYSU).
    """

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    variant: Variant = "joint"

    def __post_init__(self) -> None:
        _check_params(self.k1, self.k2, self.lambda_value, self.variant)

    @property
    def label(self) -> str:
        """``k_reciprocal(k1,k2,lambda,variant)``: recorded as ``rerank=<label>`` with every result."""
        return f"k_reciprocal({self.k1},{self.k2},{self.lambda_value:g},{self.variant})"


def _check_params(k1: Any, k2: Any, lambda_value: Any, variant: Any) -> None:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ProtocolError(f"re-ranking {name} must be an integer >= 1, got {value!r}.")
    if not isinstance(lambda_value, int | float) or not 0.0 <= float(lambda_value) <= 1.0:
        raise ProtocolError(f"re-ranking lambda_value must be in [0, 1], got {lambda_value!r}.")
    if variant not in VARIANTS:
        raise ProtocolError(f"re-ranking variant={variant!r} is unknown.", fix=f"use one of {', '.join(VARIANTS)}.")


def _features(x: Any, name: str) -> torch.Tensor:
    tensor = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if tensor.ndim != 2:
        raise ProtocolError(f"{name} must be a (num_items, dim) matrix, got shape {tuple(tensor.shape)}.")
    if len(tensor) == 0:
        raise ProtocolError(f"{name} is empty.")
    if not tensor.dtype.is_floating_point:
        raise ProtocolError(f"{name} must hold floats, got dtype {tensor.dtype}.")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ProtocolError(f"{name} contains NaN or infinite values.", fix="check the model's features.")
    return tensor


def squared_distance_block(
    rows: torch.Tensor, feats: torch.Tensor, sq_norms: torch.Tensor, row_index: torch.Tensor
) -> torch.Tensor:
    """Step 1 for a block of rows: (b, N) squared Euclidean distances to all N items.

    Args:
        rows: (b, dim) features of the block's items; ``row_index`` (b,) their positions in ``feats``.
        feats: (N, dim) all features; ``sq_norms`` (N,) their squared norms.
    Returns:
        (b, N) float32; the diagonal is exactly 0 and rounding negatives are clamped to 0.
    """
    block = torch.addmm(sq_norms[row_index].unsqueeze(1) + sq_norms.unsqueeze(0), rows, feats.T, alpha=-2.0)
    block.clamp_(min=0.0)
    block[torch.arange(len(rows), device=rows.device), row_index] = 0.0
    return block


def safe_row_max(block: torch.Tensor) -> torch.Tensor:
    """(b,) row maxima for step 2; a row whose maximum is 0 (all items identical) is divided by 1 instead."""
    row_max = block.amax(dim=1)
    return torch.where(row_max > 0, row_max, torch.ones_like(row_max))


def _stable_topk(block: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of each row, in stable-sort order (value, then index).

    ``torch.topk`` breaks ties arbitrarily, so rows where an unselected entry equals the k-th value are
    redone with a full stable sort; other rows only need their k winners reordered by (value, index).
    """
    if k >= block.shape[1]:
        return torch.sort(block, dim=1, stable=True).indices[:, :k]
    values, idx = torch.topk(block, k, dim=1, largest=False, sorted=True)
    kth = values[:, -1:]
    ambiguous = (block == kth).sum(1) > (values == kth).sum(1)
    idx, order = torch.sort(idx, dim=1)  # index order, then a stable sort by value
    values = values.gather(1, order)
    idx = idx.gather(1, torch.sort(values, dim=1, stable=True).indices)
    bad = ambiguous.nonzero().squeeze(1)
    if len(bad):
        idx[bad] = torch.sort(block[bad], dim=1, stable=True).indices[:, :k]
    return idx


def _reciprocal_mask(neighbours: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """(b, k) bool: which of the top-k neighbours j of each row i also have i in their own top-k."""
    forward = neighbours[rows, :k]  # (b, k)
    backward = neighbours[forward, :k]  # (b, k, k)
    return (backward == rows.view(-1, 1, 1)).any(dim=2)


def k_reciprocal_distance(
    q_feats: Any,
    g_feats: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    variant: Variant = "joint",
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Re-ranked (Q, G) distances between queries and gallery (smaller = more similar).

    Args:
        q_feats: (Q, dim) query features; ``g_feats``: (G, dim) gallery features (numpy or torch). The runner
            passes L2-normalised embeddings, so D is the squared Euclidean distance of normalised features.
        k1, k2, lambda_value, variant: see :class:`RerankOptions` and the module docstring.
        chunk_size: rows per dense block (default: about 4M block elements). Bounds memory.

    Returns:
        (Q, G) float32 tensor on the features' device.
    """
    _check_params(k1, k2, lambda_value, variant)
    q = _features(q_feats, "q_feats")
    g = _features(g_feats, "g_feats").to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ProtocolError(f"q_feats has dimension {q.shape[1]} but g_feats has {g.shape[1]}.")
    num_q, num_g = len(q), len(g)
    feats = torch.cat([q, g])
    n = len(feats)
    device = feats.device
    rows_per_chunk = chunk_size or max(1, (1 << 22) // n)
    if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
        raise ProtocolError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    sq_norms = (feats * feats).sum(1)
    half = round(k1 / 2)  # half-to-even, like np.around in the references
    top = max(k1 + 1, k2)

    with torch.no_grad():
        neighbours, row_max = _neighbour_lists(feats, sq_norms, num_q, top, variant, rows_per_chunk)
        v_col, v_val = _sparse_weights(feats, sq_norms, row_max, neighbours, k1, half, rows_per_chunk)
        expansion = _QueryExpansion(neighbours, v_col, v_val, k2)
        inverted = _InvertedIndex(expansion, range(num_q, n), rows_per_chunk)
        out = torch.empty(num_q, num_g, dtype=torch.float32, device=device)
        for start in range(0, num_q, rows_per_chunk):
            idx = torch.arange(start, min(start + rows_per_chunk, num_q), device=device)
            jaccard = inverted.jaccard(*expansion.rows(idx), num_rows=len(idx))
            # Step 9: blend with D^ of the query-gallery pairs.
            original = torch.addmm(
                sq_norms[idx].unsqueeze(1) + sq_norms[num_q:].unsqueeze(0), feats[idx], feats[num_q:].T, alpha=-2.0
            )
            original = original.clamp_(min=0.0) / row_max[idx].unsqueeze(1)
            out[idx] = (1.0 - lambda_value) * jaccard + lambda_value * original
    return out


def _neighbour_lists(
    feats: torch.Tensor, sq_norms: torch.Tensor, num_q: int, top: int, variant: str, rows_per_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-3: (N, min(top, N)) neighbour lists in stable order, and the (N,) row maxima of D.

    ``query_only`` ranks with every gallery column at the global maximum of D^ (1 after step 2), so that
    neighbours come from the queries only; ties with those columns go to the (lower-index) queries.
    """
    n, device = len(feats), feats.device
    width = min(top, n)
    neighbours = torch.empty(n, width, dtype=torch.int64, device=device)
    row_max = torch.empty(n, dtype=torch.float32, device=device)
    for start in range(0, n, rows_per_chunk):
        idx = torch.arange(start, min(start + rows_per_chunk, n), device=device)
        block = squared_distance_block(feats[idx], feats, sq_norms, idx)
        row_max[idx] = safe_row_max(block)
        block.div_(row_max[idx].unsqueeze(1))
        if variant == "query_only":
            block[:, num_q:] = 1.0
        neighbours[idx] = _stable_topk(block, width)
    return neighbours, row_max


def _sparse_weights(
    feats: torch.Tensor,
    sq_norms: torch.Tensor,
    row_max: torch.Tensor,
    neighbours: torch.Tensor,
    k1: int,
    half: int,
    rows_per_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-6: V as padded sparse rows, (N, E) member columns (padding = N) and (N, E) weights."""
    n, device = len(feats), feats.device
    k_main, k_half = min(k1 + 1, n), min(half + 1, n)
    recip_half = torch.cat(
        [
            _reciprocal_mask(neighbours, torch.arange(s, min(s + rows_per_chunk, n), device=device), k_half)
            for s in range(0, n, rows_per_chunk)
        ]
    )
    half_members = torch.where(recip_half, neighbours[:, :k_half], n)
    half_size = recip_half.sum(1)
    # Step 5 compares (b, k_main, k_half, k_main) indices: keep that block near 4M elements.
    step5_rows = max(1, min(rows_per_chunk, (1 << 22) // (k_main * k_main * k_half)))
    v_cols, v_vals = [], []
    for start in range(0, n, step5_rows):
        idx = torch.arange(start, min(start + step5_rows, n), device=device)
        cols = _expanded_sets(idx, neighbours, half_members, half_size, k_main, n)
        weights = torch.where(cols < n, torch.exp(-_pair_distances(idx, cols, feats, sq_norms, row_max)), 0.0)
        total = weights.sum(1, keepdim=True)
        v_cols.append(cols)
        v_vals.append(weights / torch.where(total > 0, total, torch.ones_like(total)))
    width = max(c.shape[1] for c in v_cols)
    v_col = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=n) for c in v_cols])
    v_val = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]), value=0.0) for v in v_vals])
    return v_col, v_val


class _QueryExpansion:
    """Step 7: rows of the expanded V, produced on demand as sparse (local row, column, value) triples."""

    def __init__(self, neighbours: torch.Tensor, v_col: torch.Tensor, v_val: torch.Tensor, k2: int):
        self.neighbours, self.v_col, self.v_val, self.k2 = neighbours, v_col, v_val, k2
        self.n = len(neighbours)

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, device = self.n, rows.device
        if self.k2 == 1:  # the references skip expansion for k2 == 1
            cols, vals = self.v_col[rows], self.v_val[rows]
        else:  # mean of V over the top-k2 neighbours: concatenate their rows, then sum equal columns
            nb = self.neighbours[rows, : self.k2]  # (b, k2)
            cols = self.v_col[nb].reshape(len(rows), -1)
            vals = self.v_val[nb].reshape(len(rows), -1)
        local = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(cols)
        keep = cols < n
        if self.k2 == 1:
            return local[keep], cols[keep], vals[keep]
        uniq, inverse = torch.unique(local[keep] * n + cols[keep], return_inverse=True)
        summed = torch.zeros(len(uniq), dtype=vals.dtype, device=device).index_add_(0, inverse, vals[keep])
        return torch.div(uniq, n, rounding_mode="floor"), uniq % n, summed / self.k2


class _InvertedIndex:
    """Step 8: for every column k of the expanded V, the gallery rows j with V_jk > 0 (CSR by column)."""

    PAIR_BUDGET = 1 << 22

    def __init__(self, expansion: _QueryExpansion, gallery_rows: range, rows_per_chunk: int):
        device = expansion.neighbours.device
        first = gallery_rows.start
        rows, cols, vals = [], [], []
        for start in range(first, gallery_rows.stop, rows_per_chunk):
            idx = torch.arange(start, min(start + rows_per_chunk, gallery_rows.stop), device=device)
            local, c, v = expansion.rows(idx)
            rows.append(local + (start - first))
            cols.append(c)
            vals.append(v)
        self.cols, order = torch.sort(torch.cat(cols), stable=True)
        self.rows, self.vals = torch.cat(rows)[order], torch.cat(vals)[order]
        self.ptr = torch.searchsorted(self.cols, torch.arange(expansion.n + 1, device=device))
        self.num_g = len(gallery_rows)

    def jaccard(self, local: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, num_rows: int) -> torch.Tensor:
        """(num_rows, G) d_J for query rows given as sparse triples; pairs are processed in bounded batches."""
        device, num_g = cols.device, self.num_g
        starts, counts = self.ptr[cols], self.ptr[cols + 1] - self.ptr[cols]
        overlap = torch.zeros(num_rows * num_g, dtype=torch.float32, device=device)
        cum = torch.cumsum(counts, 0)
        budget = max(self.PAIR_BUDGET, 4 * num_g)
        lo = 0
        while lo < len(cols):
            done = int(cum[lo - 1]) if lo else 0
            hi = max(int(torch.searchsorted(cum, done + budget, right=True)), lo + 1)
            reps = counts[lo:hi]
            entry = torch.repeat_interleave(torch.arange(lo, hi, device=device), reps)
            offset = torch.arange(len(entry), device=device) - torch.repeat_interleave(
                torch.cumsum(reps, 0) - reps, reps
            )
            pos = starts[entry] + offset
            overlap.index_add_(0, local[entry] * num_g + self.rows[pos], torch.minimum(vals[entry], self.vals[pos]))
            lo = hi
        overlap = overlap.view(num_rows, num_g)
        return 1.0 - overlap / (2.0 - overlap)


def _expanded_sets(
    idx: torch.Tensor,
    neighbours: torch.Tensor,
    half_members: torch.Tensor,
    half_size: torch.Tensor,
    k_main: int,
    n: int,
) -> torch.Tensor:
    """Steps 4-5 for the rows ``idx``: (b, E) sorted member columns of the expanded sets (padding = n)."""
    recip = _reciprocal_mask(neighbours, idx, k_main)  # (b, k_main): R(i)
    members = torch.where(recip, neighbours[idx, :k_main], n)
    # Step 5: candidate c = members[:, a] is accepted when |R'(c) & R(i)| > 2/3 |R'(c)|; for integers this is
    # exactly 3 * overlap > 2 * size, which is also what the references' float comparison decides.
    cand = members.clamp(max=n - 1)
    cand_half = half_members[cand]  # (b, k_main, k_half): R'(c)
    in_set = (cand_half.unsqueeze(3) == members.view(len(idx), 1, 1, -1)).any(3) & (cand_half < n)
    accepted = recip & (3 * in_set.sum(2) > 2 * half_size[cand])
    added = torch.where(accepted.unsqueeze(2), cand_half, n)
    expansion, _ = torch.sort(torch.cat([members, added.reshape(len(idx), -1)], dim=1), dim=1)
    duplicate = torch.zeros_like(expansion, dtype=torch.bool)
    duplicate[:, 1:] = expansion[:, 1:] == expansion[:, :-1]
    expansion, _ = torch.sort(torch.where(duplicate, n, expansion), dim=1)
    width = max(1, int((expansion < n).sum(1).max()))
    return expansion[:, :width]


def _pair_distances(
    idx: torch.Tensor, cols: torch.Tensor, feats: torch.Tensor, sq_norms: torch.Tensor, row_max: torch.Tensor
) -> torch.Tensor:
    """(b, E) D^ values of the pairs (idx[i], cols[i, e]); padding columns (== N) give 0.

    Only the O(k1) pairs per row that step 6 needs are computed (gathered dot products, in row blocks of
    about 4M gathered feature values), instead of a second dense (b, N) distance block.
    """
    n, dim = feats.shape
    safe = cols.clamp(max=n - 1)
    dots = torch.empty(cols.shape, dtype=feats.dtype, device=feats.device)
    step = max(1, (1 << 22) // max(1, cols.shape[1] * dim))
    for s in range(0, len(idx), step):
        dots[s : s + step] = torch.einsum("bd,bkd->bk", feats[idx[s : s + step]], feats[safe[s : s + step]])
    dist = (sq_norms[idx].unsqueeze(1) + sq_norms[safe] - 2.0 * dots).clamp_(min=0.0)
    dist = torch.where(safe == idx.unsqueeze(1), 0.0, dist)
    return dist / row_max[idx].unsqueeze(1)
