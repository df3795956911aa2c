"""k-reciprocal re-ranking: the chunked sparse implementation equals the literal dense nine-step reference."""

import numpy as np
import pytest
import torch

from vireid.errors import ProtocolError
from vireid.evaluation.reference import k_reciprocal_distance_dense
from vireid.evaluation.rerank import RerankOptions, _neighbour_lists, k_reciprocal_distance


def _features(seed: int, num_q: int, num_g: int, dim: int, integer: bool):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: every distance is exact, and exact ties are everywhere
        return (
            rng.integers(-2, 3, (num_q, dim)).astype(np.float32),
            rng.integers(-2, 3, (num_g, dim)).astype(np.float32),
        )
    q = rng.standard_normal((num_q, dim)).astype(np.float32)
    g = rng.standard_normal((num_g, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", ["joint", "query_only"])
@pytest.mark.parametrize(
    ("seed", "num_q", "num_g", "k1", "k2", "chunk", "integer"),
    [
        (0, 30, 45, 20, 6, None, False),  # the paper's parameters
        (1, 25, 40, 20, 6, 1, False),  # one row per chunk
        (2, 17, 33, 7, 3, 5, False),  # odd chunk, odd k1 (round(3.5) = 4)
        (3, 20, 30, 5, 1, 7, False),  # k2 = 1: no query expansion; round(2.5) = 2 (half to even)
        (4, 24, 36, 10, 6, 11, True),  # integer features: exact ties everywhere
        (5, 3, 4, 20, 6, None, False),  # fewer items than k1 + 1
        (6, 40, 12, 12, 4, 9, True),
    ],
)
def test_chunked_equals_dense_reference(variant, seed, num_q, num_g, k1, k2, chunk, integer):
    q, g = _features(seed, num_q, num_g, dim=8, integer=integer)
    fast = k_reciprocal_distance(q, g, k1=k1, k2=k2, lambda_value=0.3, variant=variant, chunk_size=chunk)
    dense = k_reciprocal_distance_dense(q, g, k1=k1, k2=k2, lambda_value=0.3, variant=variant)
    assert fast.shape == (num_q, num_g) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast.numpy(), dense, rtol=0, atol=1e-5)


def test_lambda_one_is_the_normalised_original_distance():
    q, g = _features(7, 10, 15, dim=6, integer=False)
    out = k_reciprocal_distance(q, g, lambda_value=1.0).numpy()
    feats = np.concatenate([q, g])
    full = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    expected = (full / full.max(axis=1, keepdims=True))[:10, 10:]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_query_only_takes_neighbours_from_queries_only():
    # With at least k1 + 1 queries, no gallery item may appear in any neighbour list (gallery rows included).
    q, g = _features(8, 12, 20, dim=6, integer=False)
    feats = torch.cat([torch.from_numpy(q), torch.from_numpy(g)])
    sq = (feats * feats).sum(1)
    only_q, _ = _neighbour_lists(feats, sq, num_q=12, top=6, variant="query_only", rows_per_chunk=5)
    joint, _ = _neighbour_lists(feats, sq, num_q=12, top=6, variant="joint", rows_per_chunk=5)
    assert int(only_q.max()) < 12
    assert int(joint.max()) >= 12  # gallery items are their own nearest neighbours
    assert not torch.allclose(
        k_reciprocal_distance(q, g, k1=5, variant="joint"), k_reciprocal_distance(q, g, k1=5, variant="query_only")
    )


def test_options_label_and_validation():
    assert RerankOptions().label == "k_reciprocal(20,6,0.3,joint)"
    assert RerankOptions(k1=30, k2=8, lambda_value=0.5, variant="query_only").label == (
        "k_reciprocal(30,8,0.5,query_only)"
    )
    with pytest.raises(ProtocolError, match="k1 must be an integer >= 1"):
        RerankOptions(k1=0)
    with pytest.raises(ProtocolError, match="lambda_value must be in"):
        RerankOptions(lambda_value=1.5)
    with pytest.raises(ProtocolError, match="variant='both' is unknown"):
        RerankOptions(variant="both")


def test_bad_features_raise():
    good = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(ProtocolError, match="dimension 4 but g_feats has 5"):
        k_reciprocal_distance(good, np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ProtocolError, match="g_feats contains NaN"):
        k_reciprocal_distance(good, np.full((2, 4), np.nan, dtype=np.float32))
    with pytest.raises(ProtocolError, match="q_feats is empty"):
        k_reciprocal_distance(np.ones((0, 4), dtype=np.float32), good)
