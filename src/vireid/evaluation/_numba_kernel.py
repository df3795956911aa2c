"""numba-compiled kernel behind :mod:`vireid.evaluation.compiled_metrics` (imported only when numba is installed).

Kept apart so that importing :mod:`vireid.evaluation` never imports numba (about half a second) and never fails
without it. The algorithm and its exactness argument are in the docstring of ``compiled_metrics``. Everything
the kernel depends on is an argument (no module constants are frozen into numba's on-disk cache).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _sort_matches(m_val, m_col, r, tmp_val, tmp_col):
    """Sort the first r (distance, column) pairs by distance, stably (the columns arrive ascending).

    Insertion sort for short runs (one identity's gallery items, typically tens), bottom-up merge sort above.
    """
    if r <= 32:
        for a in range(1, r):
            v, c = m_val[a], m_col[a]
            b = a - 1
            while b >= 0 and m_val[b] > v:
                m_val[b + 1] = m_val[b]
                m_col[b + 1] = m_col[b]
                b -= 1
            m_val[b + 1] = v
            m_col[b + 1] = c
        return
    width = 1
    while width < r:
        for left in range(0, r, 2 * width):
            mid = min(left + width, r)
            right = min(left + 2 * width, r)
            a, b, out = left, mid, left
            while a < mid and b < right:
                if m_val[b] < m_val[a]:  # strict: equal distances keep their order
                    tmp_val[out], tmp_col[out] = m_val[b], m_col[b]
                    b += 1
                else:
                    tmp_val[out], tmp_col[out] = m_val[a], m_col[a]
                    a += 1
                out += 1
            while a < mid:
                tmp_val[out], tmp_col[out] = m_val[a], m_col[a]
                a += 1
                out += 1
            while b < right:
                tmp_val[out], tmp_col[out] = m_val[b], m_col[b]
                b += 1
                out += 1
        m_val[:r] = tmp_val[:r]
        m_col[:r] = tmp_col[:r]
        width *= 2


@numba.njit(nogil=True, cache=True)
def _count_non_finite(row):
    """Entries of ``row`` that are NaN or infinite (for rows whose metrics are not computed)."""
    count = 0
    for j in range(len(row)):
        count += (row[j] - row[j]) != 0.0
    return count


@numba.njit(nogil=True, cache=True)
def _sweep(keys, table, hist, hist2, cand, front, collect_front):
    """Histogram the table value of every key into ``hist``; return (candidates, items of bin 0) counts.

    Items whose table value is negative (their bucket holds a match) go to ``cand`` instead; with
    ``collect_front``, items of bin 0 are also listed in ``front``. Two interleaved histograms, merged at the
    end: when most items fall in one bin (behind every match, the usual case for a good model), a single
    counter would chain every increment on the previous store.
    """
    hist[:] = 0
    hist2[:] = 0
    n_cand = 0
    n_front = 0
    n = len(keys)
    for j in range(0, n - 1, 2):
        b = table[np.uint32(keys[j])]
        b2 = table[np.uint32(keys[j + 1])]
        if b < 0:
            cand[np.uint64(n_cand)] = j
            n_cand += 1
        else:
            hist[np.uint64(b)] += 1
            if collect_front and b == 0:
                front[np.uint64(n_front)] = j
                n_front += 1
        if b2 < 0:
            cand[np.uint64(n_cand)] = j + 1
            n_cand += 1
        else:
            hist2[np.uint64(b2)] += 1
            if collect_front and b2 == 0:
                front[np.uint64(n_front)] = j + 1
                n_front += 1
    if n % 2:
        b = table[np.uint32(keys[n - 1])]
        if b < 0:
            cand[np.uint64(n_cand)] = n - 1
            n_cand += 1
        else:
            hist[np.uint64(b)] += 1
            if collect_front and b == 0:
                front[np.uint64(n_front)] = n - 1
                n_front += 1
    for b in range(len(hist)):
        hist[b] += hist2[b]
    return n_cand, n_front


@numba.njit(nogil=True, cache=True)
def chunk_kernel(
    dist,
    q_gid,
    q_cam,
    g_gid,
    g_cam,
    group_order,
    group_start,
    group_count,
    cam2_cols,
    junk_sysu,
    junk_same_cam,
    dedup,
    num_ids,
    buckets_per_match,
    ap,
    inp,
    first_rank,
    cmc_pos,
    num_matches,
):
    """Fill ap, inp, first_rank, cmc_pos and num_matches for the rows of ``dist`` (see compiled_metrics).

    Returns False if a distance is NaN or infinite (checked in the key sweep, so the caller needs no separate
    pass over the chunk); the metrics of such a chunk are meaningless, and the caller raises.
    """
    num_b, num_g = dist.shape
    max_group = 1
    for p in range(len(group_count)):
        max_group = max(max_group, group_count[p])
    m_val = np.empty(max_group, dtype=dist.dtype)
    m_col = np.empty(max_group, dtype=np.int64)
    m_key = np.empty(max_group, dtype=np.int64)
    tmp_val = np.empty(max_group, dtype=dist.dtype)
    tmp_col = np.empty(max_group, dtype=np.int64)
    seen = np.zeros(max(num_ids, 1), dtype=np.int64)  # stamped with the row number: no clearing per row
    # Bucket count per row: buckets_per_match per match, but never much more than the gallery (no gain) and
    # below 2**22, so that the top key is exact in float32 and the table stays small.
    bucket_cap = min(2 * num_g + 64, 1 << 22)
    table_size = min(buckets_per_match * max_group, bucket_cap) + 8
    table = np.empty(table_size, dtype=np.int32)
    hist = np.empty(max_group + 1, dtype=np.int64)
    hist2 = np.empty(max_group + 1, dtype=np.int64)
    front = np.empty(num_g, dtype=np.int64)  # items ahead of the first match (de-duplicated CMC)
    cand = np.empty(num_g, dtype=np.int64)  # items that share a bucket with a match
    keys = np.empty(num_g, dtype=np.int32)
    params = np.zeros(4, dtype=dist.dtype)  # scale, origin, top, zero in the distances' dtype

    non_finite = 0
    for i in range(num_b):
        gid = q_gid[i]
        num_matches[i] = 0
        if gid < 0:
            non_finite += _count_non_finite(dist[i])
            continue
        removes_cam2 = junk_sysu and q_cam[i] == 3
        start = group_start[gid]
        count = group_count[gid]
        # 1. valid true matches, sorted by (distance, gallery index)
        r = 0
        for a in range(count):
            c = group_order[start + a]
            if (removes_cam2 and g_cam[c] == 2) or (junk_same_cam and g_cam[c] == q_cam[i]):
                continue
            m_col[r] = c
            m_val[r] = dist[i, c]
            r += 1
        num_matches[i] = r
        if r == 0:
            non_finite += _count_non_finite(dist[i])
            continue
        _sort_matches(m_val, m_col, r, tmp_val, tmp_col)

        # 2. bucket keys of the whole row: equal-width buckets over [first match, last match], starting two
        #    widths lower; one branch-free monotone expression for every item, matches included.
        n_buckets = min(buckets_per_match * r, bucket_cap)
        lo = float(m_val[0])
        hi = float(m_val[r - 1])
        scale = 1.0
        if hi > lo:
            scale = n_buckets / (hi - lo)
        # The key arithmetic runs in the distances' own dtype (float32: twice the SIMD width); any finite
        # origin and positive scale keep it exact, these only make the buckets useful.
        params[0] = scale
        if not (math.isfinite(params[0]) and params[0] > 0):
            params[0] = 1.0
        params[1] = lo - 2.0 / float(params[0])
        if not math.isfinite(params[1]):
            params[1] = lo
        params[2] = n_buckets + 3
        scale_t, origin_t, top_t, zero_t = params[0], params[1], params[2], params[3]
        for j in range(num_g):
            v = dist[i, j]
            non_finite += (v - v) != zero_t  # NaN for NaN and +-inf: the caller is told and raises
            x = (v - origin_t) * scale_t
            x = x if x > zero_t else zero_t  # NaN -> 0: a bad input can never index out of the table
            x = x if x < top_t else top_t
            keys[j] = np.int32(x)  # truncation of a value in [0, top]: monotone
        for a in range(r):
            m_key[a] = keys[m_col[a]]
        # Own-identity items (the matches, and any removed ones) and removed cam2 items get the extra key
        # n_buckets+4, which holds no match and maps to bin r: they never count towards any rank.
        excluded = n_buckets + 4
        for a in range(count):
            keys[np.uint64(group_order[start + a])] = excluded
        if removes_cam2:
            for a in range(len(cam2_cols)):
                keys[np.uint64(cam2_cols[a])] = excluded

        # 3. per bucket: the number of matches in lower buckets, negated (-1 - n) when the bucket itself holds
        #    a match (n is then also the index of its first match: matches are sorted and keys monotone)
        filled = 0
        for a in range(r):
            k = m_key[a]
            if a == 0 or k != m_key[a - 1]:
                table[filled:k] = a
                table[k] = -1 - a
                filled = k + 1
        table[filled : excluded + 1] = r

        # 4. bin of every item = matches ahead of it, read from the table; the items that share a bucket with
        #    a match (negative entry: a small fraction, so the branch is well predicted) are set aside and then
        #    compared exactly with the matches of their bucket.
        n_cand, n_front = _sweep(keys, table, hist, hist2, cand, front, dedup)
        for c in range(n_cand):
            j = cand[c]
            k = keys[j]
            b = -1 - table[np.uint32(k)]
            v = dist[i, j]
            while b < r and m_key[b] == k and (m_val[b] < v or (m_val[b] == v and m_col[b] < j)):
                b += 1
            hist[np.uint64(b)] += 1
            if dedup and b == 0:
                front[n_front] = j
                n_front += 1
        distinct_ahead = 0
        stamp = i + 1
        for c in range(n_front):  # distinct identities ahead of the first match (never the query's own)
            p = np.uint64(g_gid[front[c]])
            if seen[p] != stamp:
                seen[p] = stamp
                distinct_ahead += 1

        # 5. rank of match a = a + 1 + items with bin <= a
        ahead = 0
        total = 0.0
        rank = 0
        for a in range(r):
            ahead += hist[a]
            rank = a + 1 + ahead
            total += (a + 1) / rank
            if a == 0:
                first_rank[i] = rank
        ap[i] = total / r
        inp[i] = r / rank
        cmc_pos[i] = 1 + distinct_ahead if dedup else first_rank[i]
    return non_finite == 0
