"""Plain, slow reference implementations: the metric and re-ranking definitions written as directly as possible.

Nothing here is used to produce reported numbers. These functions exist so that the fast code in
:mod:`vireid.evaluation.metrics` and :mod:`vireid.evaluation.rerank` can be tested against something a reader
can check line by line against the spec (``data-and-protocols.md`` sections 2 and 4), and so that the
benchmark has a per-query loop to compare with. Keep them boring: one query at a time, no clever tricks.
"""

from __future__ import annotations

import numpy as np

from vireid.evaluation.metrics import DEDUPLICATED_CMC_RULES, PerQueryMetrics, RetrievalResult

__all__ = ["k_reciprocal_distance_dense", "reference_evaluate", "reference_per_query"]


def _junk_mask(rule: str, q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Gallery items the protocol removes for one query (spec section 3)."""
    if rule == "sysu":
        # A cam3 (IR, room 2) query discards every cam2 (visible, room 2) image, whatever its identity.
        if q_cam == 3:
            return g_cams == 2
        return np.zeros(len(g_pids), dtype=bool)
    if rule in ("llcm", "market"):
        return (g_pids == q_pid) & (g_cams == q_cam)
    return np.zeros(len(g_pids), dtype=bool)  # regdb, text: nothing is removed


def reference_per_query(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    rule: str = "sysu",
) -> PerQueryMetrics:
    """Per-query AP, INP, ranks and CMC positions, one query at a time (spec section 2).

    Args:
        distmat: (Q, G) distances, smaller = more similar.
        q_pids, q_camids: (Q,) query identities and cameras.
        g_pids, g_camids: (G,) gallery identities and cameras.
        rule: ``sysu``, ``llcm``, ``regdb``, ``market`` or ``text``.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q = distmat.shape[0]
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    first_rank = np.zeros(num_q, dtype=np.int64)
    cmc_position = np.zeros(num_q, dtype=np.int64)
    num_matches = np.zeros(num_q, dtype=np.int64)

    for i in range(num_q):
        # Ascending distance; ties keep gallery order (stable sort).
        order = np.argsort(distmat[i], kind="stable")
        ranked_pids = g_pids[order]
        ranked_cams = g_camids[order]

        # L: the ranked list after junk removal.
        keep = ~_junk_mask(rule, q_pids[i], q_camids[i], ranked_pids, ranked_cams)
        list_pids = ranked_pids[keep]

        matches = list_pids == q_pids[i]
        num_true = int(matches.sum())
        num_matches[i] = num_true
        if num_true == 0:
            continue  # invalid query: no true match left in L

        ranks = np.flatnonzero(matches) + 1  # r_1 < ... < r_R, 1-based
        ap[i] = np.mean(np.arange(1, num_true + 1) / ranks)
        inp[i] = num_true / ranks[-1]
        first_rank[i] = ranks[0]

        if rule in DEDUPLICATED_CMC_RULES:
            # L': distinct identities of L in order of first appearance.
            _, first_index = np.unique(list_pids, return_index=True)
            distinct_in_order = list_pids[np.sort(first_index)]
            cmc_position[i] = np.flatnonzero(distinct_in_order == q_pids[i])[0] + 1
        else:
            cmc_position[i] = ranks[0]

    return PerQueryMetrics(
        ap=ap, inp=inp, first_match_rank=first_rank, cmc_position=cmc_position, num_matches=num_matches
    )


def reference_evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    rule: str = "sysu",
    max_rank: int = 20,
) -> RetrievalResult:
    """Means over valid queries of the per-query values above (no input checking, no text-rule error)."""
    per_query = reference_per_query(distmat, q_pids, g_pids, q_camids, g_camids, rule)
    valid = per_query.valid
    cmc = np.zeros(max_rank)
    for position in per_query.cmc_position[valid]:
        # cmc(k) = 1[position <= k]; a gallery shorter than max_rank pads with the last value.
        cmc[position - 1 :] += 1.0
    num_valid = int(valid.sum())
    return RetrievalResult(
        cmc=cmc / num_valid,
        mAP=float(per_query.ap[valid].mean()),
        mINP=float(per_query.inp[valid].mean()),
        num_valid_queries=num_valid,
        num_queries=len(valid),
        rule=rule,
    )


def k_reciprocal_distance_dense(
    q_feats: np.ndarray,
    g_feats: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    variant: str = "joint",
) -> np.ndarray:
    """k-reciprocal re-ranking written as the nine steps of the spec (section 4), dense and row by row.

    Memory is O((Q+G)^2): for tests and small benchmarks only. Returns (Q, G) float32 distances.
    """
    import torch

    from vireid.evaluation.rerank import safe_row_max, squared_distance_block

    feats = torch.cat([torch.as_tensor(q_feats), torch.as_tensor(g_feats)]).float()
    num_q, n = len(q_feats), len(q_feats) + len(g_feats)

    # 1. Squared Euclidean distances of the stacked features [Q; G] (diagonal 0, rounding negatives -> 0).
    dist = squared_distance_block(feats, feats, (feats * feats).sum(1), torch.arange(n))
    # 2. Divide each row by its maximum.
    dist = (dist / safe_row_max(dist).unsqueeze(1)).numpy()
    # 3. Initial neighbour lists: each row sorted ascending, ties by index. query_only: the gallery columns are
    #    first set to the global maximum (1 after step 2), so neighbours come from the queries only.
    ranking = dist.copy()
    if variant == "query_only":
        ranking[:, num_q:] = 1.0
    initial_rank = np.argsort(ranking, axis=1, kind="stable")

    def reciprocal_set(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[(backward == i).any(axis=1)]

    v = np.zeros((n, n), dtype=np.float32)
    half = round(k1 / 2)  # half-to-even, like np.around
    for i in range(n):
        # 4. R(i): top-(k1+1) neighbours that have i among their own top-(k1+1).
        r_i = reciprocal_set(i, k1)
        # 5. Add R(c, k1/2) for each c in R(i) that mostly lies inside R(i).
        expansion = list(r_i)
        for c in r_i:
            r_c = reciprocal_set(int(c), half)
            if len(np.intersect1d(r_c, r_i)) > 2 / 3 * len(r_c):
                expansion.extend(r_c)
        members = np.unique(np.asarray(expansion, dtype=np.int64))
        # 6. Gaussian-kernel weights over the expanded set, normalised to sum 1.
        weights = np.exp(-dist[i, members])
        if len(members):
            v[i, members] = weights / weights.sum()

    # 7. Query expansion: average V over the top-k2 neighbours (skipped for k2 == 1, as in the references).
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(n)])

    # 8. Jaccard distance between every query and every item.
    jaccard = np.zeros((num_q, n), dtype=np.float32)
    for i in range(num_q):
        overlap = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)

    # 9. Blend with the normalised original distance; keep query rows and gallery columns.
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q]
    return final[:, num_q:].astype(np.float32)
