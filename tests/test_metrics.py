"""Retrieval metrics: hand-computed golden cases per rule, equivalence with the per-query reference loop on
many random inputs (ties included), and errors that name the offending argument.

Every test runs once per implementation of the metric pass (PyTorch, and the numba-compiled CPU kernel when
numba is installed, as it is by ``make test``): the ``backend`` fixture binds the module's ``evaluate``,
``evaluate_similarity``, ``evaluate_embeddings`` and ``per_query_metrics`` to one backend.
"""

import functools
import sys

import numpy as np
import pytest
import torch

from vireid.errors import ProtocolError
from vireid.evaluation import compiled_metrics, evaluate, evaluate_embeddings, evaluate_similarity, per_query_metrics
from vireid.evaluation.metrics import resolve_backend
from vireid.evaluation.reference import reference_evaluate, reference_per_query

_UNBOUND = {f.__name__: f for f in (evaluate, evaluate_similarity, evaluate_embeddings, per_query_metrics)}


@pytest.fixture(autouse=True, params=["torch", "numba"])
def backend(request, monkeypatch):
    if request.param == "numba" and not compiled_metrics.available():
        pytest.skip("numba is not installed (pip install 'vireid[fast]')")
    module = sys.modules[__name__]
    for name, fn in _UNBOUND.items():
        monkeypatch.setattr(module, name, functools.partial(fn, backend=request.param))
    return request.param


# ----------------------------------------------------------------------------------------- golden cases

# Gallery for the SYSU cases: (pid, cam) per column.
SYSU_G_PIDS = [1, 2, 1, 3, 2, 1]
SYSU_G_CAMS = [2, 1, 1, 2, 4, 5]
SYSU_ROW = [0.1, 0.2, 0.5, 0.05, 0.3, 0.6]


def test_sysu_golden_cam3_removes_every_cam2_item_and_cmc_is_deduplicated():
    # Ascending order of every row: g3(pid3,cam2) g0(pid1,cam2) g1(pid2) g4(pid2) g2(pid1) g5(pid1).
    # q0 (pid 1, cam 3): every cam2 item goes, whatever its identity (g3 AND g0).
    #    L = [2, 2, 1, 1] -> matches at ranks 3, 4; AP = (1/3 + 2/4)/2 = 5/12; INP = 2/4.
    #    L' = [2, 1] -> de-duplicated position 2 (the plain CMC would say 3).
    # q1 (pid 1, cam 6): nothing removed. L = [3, 1, 2, 2, 1, 1] -> ranks 2, 5, 6;
    #    AP = (1/2 + 2/5 + 3/6)/3 = 7/15; INP = 3/6; L' = [3, 1, 2] -> position 2.
    # q2 (pid 4): not in the gallery -> invalid, skipped by every mean.
    dist = np.array([SYSU_ROW, SYSU_ROW, SYSU_ROW])
    res = evaluate(dist, [1, 1, 4], SYSU_G_PIDS, [3, 6, 3], SYSU_G_CAMS, "sysu", max_rank=3, return_per_query=True)
    assert res.num_valid_queries == 2 and res.num_queries == 3
    np.testing.assert_allclose(res.cmc, [0.0, 1.0, 1.0])
    assert res.mAP == pytest.approx((5 / 12 + 7 / 15) / 2)
    assert res.mINP == pytest.approx(0.5)
    pq = res.per_query
    np.testing.assert_array_equal(pq.first_match_rank, [3, 2, 0])
    np.testing.assert_array_equal(pq.cmc_position, [2, 2, 0])
    np.testing.assert_array_equal(pq.num_matches, [2, 3, 0])
    assert np.isnan(pq.ap[2]) and not pq.valid[2]


def test_sysu_cam3_rule_only_applies_to_cam3_queries():
    # The same row scored for a cam6 query keeps g0 and g3, so its first match moves from rank 3 to rank 2.
    one = evaluate([SYSU_ROW], [1], SYSU_G_PIDS, [3], SYSU_G_CAMS, "sysu", max_rank=6, return_per_query=True)
    other = evaluate([SYSU_ROW], [1], SYSU_G_PIDS, [6], SYSU_G_CAMS, "sysu", max_rank=6, return_per_query=True)
    assert one.per_query.first_match_rank[0] == 3
    assert other.per_query.first_match_rank[0] == 2


def test_deduplicated_versus_plain_cmc():
    # Query pid 7; ranked gallery pids [5, 5, 6, 7] -> r_1 = 4 (plain CMC), L' = [5, 6, 7] -> position 3.
    # AP = 1/4, INP = 1/4 under both rules (no removal: query camera 6 is not 3, RegDB removes nothing).
    dist = [[0.1, 0.2, 0.3, 0.4]]
    g_pids, g_cams = [5, 5, 6, 7], [1, 1, 1, 1]
    plain = evaluate(dist, [7], g_pids, [6], g_cams, "regdb", max_rank=4)
    dedup = evaluate(dist, [7], g_pids, [6], g_cams, "sysu", max_rank=4)
    np.testing.assert_allclose(plain.cmc, [0, 0, 0, 1])
    np.testing.assert_allclose(dedup.cmc, [0, 0, 1, 1])
    assert plain.mAP == dedup.mAP == pytest.approx(0.25)
    assert plain.mINP == dedup.mINP == pytest.approx(0.25)
    assert plain.cmc_variant == "plain" and dedup.cmc_variant == "deduplicated"


def test_llcm_and_market_remove_same_identity_same_camera_only():
    # Query pid 1, cam 2. Gallery (pid, cam): g0 (1,2) g1 (2,2) g2 (1,5) g3 (1,2) g4 (2,3).
    # Ascending: g0 .1, g4 .15, g1 .2, g2 .3, g3 .4. Removed: g0 and g3 (same pid AND cam); g1 stays (other pid).
    # L = [2, 2, 1] -> r_1 = 3, AP = 1/3, INP = 1/3. LLCM: L' = [2, 1] -> position 2. Market: plain -> 3.
    dist = [[0.1, 0.2, 0.3, 0.4, 0.15]]
    g_pids, g_cams = [1, 2, 1, 1, 2], [2, 2, 5, 2, 3]
    llcm = evaluate(dist, [1], g_pids, [2], g_cams, "llcm", max_rank=3)
    market = evaluate(dist, [1], g_pids, [2], g_cams, "market", max_rank=3)
    np.testing.assert_allclose(llcm.cmc, [0, 1, 1])
    np.testing.assert_allclose(market.cmc, [0, 0, 1])
    assert llcm.mAP == market.mAP == pytest.approx(1 / 3)
    assert llcm.mINP == pytest.approx(1 / 3)


def test_query_whose_only_match_is_removed_is_invalid():
    # LLCM: the only pid-1 gallery item shares the query camera -> removed -> no true match -> invalid.
    dist = [[0.1, 0.2], [0.2, 0.1]]
    res = evaluate(dist, [1, 2], [1, 2], [4, 4], [4, 5], "llcm", max_rank=2)
    assert (res.num_valid_queries, res.num_queries) == (1, 2)
    # Query 2 (pid 2, cam 4): nothing removed; g1 (pid 2) is closer (0.1), so L = [2, 1] and r_1 = 1.
    np.testing.assert_allclose(res.cmc, [1, 1])
    assert res.mAP == pytest.approx(1.0)


def test_gallery_smaller_than_max_rank_pads_with_last_value():
    # Two gallery items; the match is second -> cmc = [0, 1, 1, ..., 1] up to max_rank = 20.
    res = evaluate([[0.3, 0.9]], [8], [3, 8], [1], [2, 2], "regdb", max_rank=20)
    assert res.cmc.shape == (20,)
    np.testing.assert_allclose(res.cmc, [0.0] + [1.0] * 19)
    assert res.rank(1) == 0.0 and res.rank(20) == 1.0


def test_ties_follow_gallery_order():
    # All distances equal: the stable order is the gallery order [2, 1, 1, 3] for a pid-1 query.
    # Matches at ranks 2, 3: AP = (1/2 + 2/3)/2 = 7/12; INP = 2/3; L' = [2, 1, 3] -> position 2.
    res = evaluate([[0.5, 0.5, 0.5, 0.5]], [1], [2, 1, 1, 3], [6], [1, 1, 1, 1], "sysu", 4, return_per_query=True)
    assert res.mAP == pytest.approx(7 / 12)
    assert res.mINP == pytest.approx(2 / 3)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1])
    # A tie between the first match and another identity's best item: the lower gallery index wins.
    res = evaluate([[0.2, 0.2, 0.1]], [1], [1, 2, 3], [6], [1, 1, 1], "sysu", 3, return_per_query=True)
    assert res.per_query.cmc_position[0] == 2  # L = [3, 1, 2] -> position 2


def test_similarity_is_descending_distance():
    rng = np.random.default_rng(0)
    sim = rng.random((20, 30))
    q, g = rng.integers(0, 5, 20), rng.integers(0, 5, 30)
    qc, gc = rng.integers(1, 7, 20), rng.integers(1, 7, 30)
    a = evaluate_similarity(sim, q, g, qc, gc, "sysu")
    b = evaluate(-sim, q, g, qc, gc, "sysu")
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP) == (b.mAP, b.mINP)


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_embeddings_equal_the_cosine_similarity_matrix(chunk):
    # Unit vectors with entries +-1/2: every cosine is an exact multiple of 1/4, so both paths see identical
    # scores (and plenty of exact ties).
    rng = np.random.default_rng(4)
    q = rng.choice([-0.5, 0.5], (30, 4))
    g = rng.choice([-0.5, 0.5], (50, 4))
    q_pids, g_pids = rng.integers(0, 5, 30), rng.integers(0, 5, 50)
    q_cams, g_cams = rng.integers(1, 7, 30), rng.integers(1, 7, 50)
    a = evaluate_embeddings(q, torch.from_numpy(g), q_pids, g_pids, q_cams, g_cams, "llcm", chunk_size=chunk)
    b = evaluate_similarity(q @ g.T, q_pids, g_pids, q_cams, g_cams, "llcm")
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP) == (b.mAP, b.mINP)
    with pytest.raises(ProtocolError, match="q_feats has dimension 4 but g_feats has 3"):
        evaluate_embeddings(q, g[:, :3], q_pids, g_pids, q_cams, g_cams, "llcm")


def test_text_rule_requires_a_match_for_every_query_and_averages_over_all():
    # Descending similarity. Query 0 (pid 1): g1 (pid 3), g0 (pid 1) -> rank 2, AP 1/2.
    # Query 1 (pid 2): g2 (pid 2) first -> AP 1. mAP = 3/4 over all queries.
    sim = [[0.2, 0.9, 0.1], [0.1, 0.2, 0.9]]
    res = evaluate_similarity(sim, [1, 2], [1, 3, 2], None, None, "text", max_rank=10)
    assert res.mAP == pytest.approx(0.75) and res.num_valid_queries == 2
    with pytest.raises(ProtocolError, match=r"2 of 3 queries have no true match.*indices 1, 2"):
        evaluate_similarity([*sim, [0.0, 0.0, 0.0]], [1, 5, 6], [1, 3, 2], None, None, "text", max_rank=10)


def test_per_query_worst():
    dist = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.1, 0.3]]
    pq = per_query_metrics(dist, [1, 1, 1], [1, 2, 3], None, None, "regdb")
    np.testing.assert_allclose(pq.ap, [1.0, 1 / 3, 1 / 2])
    np.testing.assert_array_equal(pq.worst(2), [1, 2])


# ------------------------------------------------------------------------------- equivalence with the loop


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(1, 60)), int(rng.integers(1, 150))
    num_ids = int(rng.integers(1, 12))
    kind = seed % 4
    if kind == 0:  # many exact ties
        dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    elif kind == 1:
        dist = rng.random((num_q, num_g))
    elif kind == 2:
        dist = rng.standard_normal((num_q, num_g)).astype(np.float16)  # few distinct values: ties again
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(1, 7, num_q), rng.integers(1, 7, num_g)
    return dist, q_pids, g_pids, q_cams, g_cams


def _assert_same(fast, ref):
    np.testing.assert_array_equal(fast.num_matches, ref.num_matches)
    np.testing.assert_array_equal(fast.first_match_rank, ref.first_match_rank)
    np.testing.assert_array_equal(fast.cmc_position, ref.cmc_position)
    np.testing.assert_allclose(fast.ap, ref.ap, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(fast.inp, ref.inp, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb", "market", "text"])
@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_loop_on_random_inputs(rule, seed):
    dist, q_pids, g_pids, q_cams, g_cams = _random_case(seed * 7 + len(rule))
    chunk = [1, 3, 7, None][seed % 4]
    as_torch = seed % 2 == 1
    matrix = torch.from_numpy(dist) if as_torch else dist
    labels = (torch.from_numpy(q_pids).to(torch.int32), g_pids.astype(np.uint8)) if as_torch else (q_pids, g_pids)
    fast = per_query_metrics(matrix, *labels, q_cams, g_cams, rule, chunk_size=chunk)
    ref = reference_per_query(dist.astype(np.float32) if dist.dtype == np.float16 else dist, q_pids, g_pids,
                              q_cams, g_cams, rule)  # fmt: skip
    _assert_same(fast, ref)


@pytest.mark.parametrize("rule", ["sysu", "llcm", "regdb"])
def test_matches_reference_means_at_benchmark_like_structure(rule):
    # SYSU-like labels: queries from cams 3/6, gallery from cams 1/2/4/5, ~10 shots per (id, cam).
    rng = np.random.default_rng(3)
    num_ids = 12
    g_pids = np.repeat(np.arange(num_ids), 40)
    g_cams = np.tile(np.repeat([1, 2, 4, 5], 10), num_ids)
    q_pids = np.repeat(np.arange(num_ids), 20)
    q_cams = np.tile(np.repeat([3, 6], 10), num_ids)
    feats_q = rng.standard_normal((len(q_pids), 16)) + 2 * np.eye(num_ids, 16)[q_pids]
    feats_g = rng.standard_normal((len(g_pids), 16)) + 2 * np.eye(num_ids, 16)[g_pids]
    dist = ((feats_q[:, None] - feats_g[None]) ** 2).sum(-1).astype(np.float32)
    for chunk in (5, None):
        fast = evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule, chunk_size=chunk)
        ref = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule)
        np.testing.assert_allclose(fast.cmc, ref.cmc, atol=1e-12)
        assert fast.mAP == pytest.approx(ref.mAP, abs=1e-12)
        assert fast.mINP == pytest.approx(ref.mINP, abs=1e-12)


def test_many_matches_per_bucket_and_identical_distances():
    # One identity everywhere with identical distances: every match shares one bucket, every row has ties.
    dist = np.zeros((4, 50), dtype=np.float32)
    q_pids, g_pids = np.zeros(4, int), np.zeros(50, int)
    g_pids[::3] = 1
    fast = per_query_metrics(dist, q_pids, g_pids, [6] * 4, np.arange(50) % 4 + 1, "sysu")
    _assert_same(fast, reference_per_query(dist, q_pids, g_pids, [6] * 4, np.arange(50) % 4 + 1, "sysu"))


def test_long_runs_of_matches_with_ties(backend):
    # Identities with 40-300 gallery items (the compiled kernel sorts runs over 32 by merging) and only 7
    # distinct distances, so that nearly every item ties with a match.
    rng = np.random.default_rng(11)
    g_pids = rng.choice(3, 600, p=[0.5, 0.4, 0.1])
    q_pids = rng.integers(0, 3, 25)
    g_cams, q_cams = rng.integers(1, 7, 600), rng.integers(1, 7, 25)
    dist = rng.integers(0, 7, (25, 600)).astype(np.float64)
    for rule in ("sysu", "llcm", "regdb"):
        fast = per_query_metrics(dist, q_pids, g_pids, q_cams, g_cams, rule)
        _assert_same(fast, reference_per_query(dist, q_pids, g_pids, q_cams, g_cams, rule))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_distances_keep_the_order(dtype):
    # Huge, tiny and negative values make the bucket scale overflow or underflow; the result must stay exact.
    big = np.finfo(dtype).max
    row = np.array([big, -big, 0.0, 1e-30, -1e-30, big / 2, 5e-324 if dtype == np.float64 else 1e-45], dtype)
    dist = np.stack([row, row[::-1].copy(), np.full_like(row, 3.0)])
    q_pids, g_pids = [0, 1, 0], [0, 1, 0, 1, 0, 2, 0]
    for rule in ("regdb", "sysu"):
        fast = per_query_metrics(dist, q_pids, g_pids, [3, 6, 6], [1, 2, 2, 4, 5, 1, 2], rule)
        _assert_same(fast, reference_per_query(dist, q_pids, g_pids, [3, 6, 6], [1, 2, 2, 4, 5, 1, 2], rule))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(backend):
    if backend == "numba":
        pytest.skip("the compiled kernel is CPU-only; GPU tensors use the PyTorch path")
    dist, q_pids, g_pids, q_cams, g_cams = _random_case(5)
    cpu = per_query_metrics(torch.from_numpy(dist), q_pids, g_pids, q_cams, g_cams, "sysu")
    gpu = per_query_metrics(torch.from_numpy(dist).cuda(), q_pids, g_pids, q_cams, g_cams, "sysu")
    _assert_same(gpu, cpu)


def test_backend_choice_and_errors(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", gpu) == "torch"  # the compiled kernel never sees GPU tensors
    with pytest.raises(ProtocolError, match="backend='numba' runs on the CPU"):
        resolve_backend("numba", gpu)
    with pytest.raises(ProtocolError, match="backend='fast' is not an evaluation backend"):
        _UNBOUND["evaluate"](**GOOD, rule="regdb", backend="fast")
    monkeypatch.setattr(compiled_metrics, "available", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ProtocolError, match=r"needs the optional numba package.*vireid\[fast\]"):
        resolve_backend("numba", cpu)


# ------------------------------------------------------------------------------------------- bad input

GOOD = dict(distmat=np.ones((2, 3)), q_pids=[1, 2], g_pids=[1, 2, 3], q_camids=[1, 1], g_camids=[2, 2, 2])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"distmat": np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]])},
            r"distmat contains a non-finite value.*query 0, gallery 1",
        ),
        ({"distmat": np.array([[1.0, 0.0, 0.0], [0.0, np.inf, 0.0]])}, r"non-finite.*query 1, gallery 1"),
        ({"q_pids": [1, 2, 3]}, r"q_pids has 3 entries but distmat's rows has 2"),
        ({"g_camids": [1, 2]}, r"g_camids has 2 entries but distmat's columns has 3"),
        (
            {"distmat": np.ones((2, 0)), "g_pids": [], "g_camids": []},
            r"distmat's columns is empty: the gallery is empty",
        ),
        (
            {"distmat": np.ones((0, 3)), "q_pids": [], "q_camids": []},
            r"distmat's rows is empty: the query set is empty",
        ),
        ({"distmat": np.ones(3)}, r"distmat must be a \(num_queries, num_gallery\) matrix"),
        ({"q_pids": [1.0, 2.0]}, r"q_pids must hold integers"),
        ({"q_camids": None}, r"q_camids is required for rule='sysu'"),
        ({"rule": "msmt"}, r"rule='msmt' is not a known protocol rule"),
        ({"max_rank": 0}, r"max_rank must be an integer >= 1"),
        ({"chunk_size": 0}, r"chunk_size must be a positive integer"),
        ({"q_pids": [7, 8]}, r"none of the 2 queries has a true match"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    kwargs = {**GOOD, "rule": "sysu", **change}
    with pytest.raises(ProtocolError, match=message):
        evaluate(**kwargs)


def test_nan_in_a_query_without_matches_is_still_an_error():
    # Query 1 (pid 9) has no true match, so no metric is computed for it; its NaN must still be reported.
    with pytest.raises(ProtocolError, match=r"non-finite value \(nan\) at query 1, gallery 0"):
        evaluate([[0.1, 0.2], [np.nan, 0.3]], [1, 9], [1, 2], [1, 1], [2, 2], "regdb")


def test_nan_in_similarity_names_sim():
    with pytest.raises(ProtocolError, match=r"^sim contains a non-finite value"):
        evaluate_similarity([[np.nan, 1.0]], [1], [1, 2], None, None, "regdb")


def test_result_to_dict_is_plain_python():
    res = evaluate([[0.1, 0.2]], [1], [1, 2], [1], [2, 2], "regdb", max_rank=2)
    d = res.to_dict()
    assert d["cmc"] == [1.0, 1.0] and d["mAP"] == 1.0 and d["cmc_variant"] == "plain"
    with pytest.raises(ProtocolError, match=r"rank\(3\)"):
        res.rank(3)
