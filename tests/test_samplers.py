"""Cross-modality identity samplers (AGW and IDKL modes) and the caption sampler."""

from collections import Counter, defaultdict

import pytest

from vireid.data.samplers import CaptionIdentitySampler, CrossModalityIdentitySampler
from vireid.errors import ConfigError


def make_labels():
    """Visible/infrared labels: ids 0..7 in both modalities with uneven counts (id 5 has one visible image),
    id 8 only visible, id 9 only infrared."""
    vis_counts = {0: 6, 1: 3, 2: 9, 3: 4, 4: 5, 5: 1, 6: 7, 7: 4, 8: 3}
    ir_counts = {0: 4, 1: 5, 2: 5, 3: 2, 4: 6, 5: 3, 6: 4, 7: 8, 9: 2}
    vis = [pid for pid, n in vis_counts.items() for _ in range(n)]
    ir = [pid for pid, n in ir_counts.items() for _ in range(n)]
    # interleave so indices of one identity are not contiguous
    return vis[::2] + vis[1::2], ir[1::2] + ir[::2]


def sampler(mode="agw", P=4, K=2, epoch_length="agw", seed=0, rank=0, world_size=1, labels=None):
    vis, ir = labels or make_labels()
    with pytest.warns(UserWarning, match="only one modality"):
        return CrossModalityIdentitySampler(vis, ir, P, K, epoch_length, mode, seed, rank, world_size)


def as_tuples(batches):
    return [[tuple(d) for d in b] for b in batches]


@pytest.mark.parametrize("mode", ["agw", "idkl"])
def test_every_batch_has_P_distinct_identities_with_K_paired_draws(mode):
    vis, ir = make_labels()
    s = sampler(mode)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b, batch in enumerate(batches):
        assert len(batch) == 4 * 2
        ids = []
        for j, d in enumerate(batch):
            assert vis[d.vis_index] == ir[d.ir_index]  # the two images of a draw share the identity
            assert (d.slot, d.inst) == (j // 2, j % 2)
            assert d.pair_index == b * 8 + j
            ids.append((d.slot, vis[d.vis_index]))
        slots = dict(ids)
        assert len(slots) == 4 and len(set(slots.values())) == 4  # one identity per slot, P distinct
        assert all(pid not in (8, 9) for pid in slots.values())


def test_one_modality_identities_are_excluded_with_a_warning_listing_them():
    vis, ir = make_labels()
    with pytest.warns(UserWarning, match=r"labels: 8, 9"):
        s = CrossModalityIdentitySampler(vis, ir, 4, 2)
    assert s.excluded_identities == [8, 9]
    assert s.identities == list(range(8))


def test_agw_epoch_length_and_exact_len():
    vis, ir = make_labels()
    s = sampler("agw", P=4, K=2)
    n = max(len(vis), len(ir))
    assert len(s) == n // 8 + 1 == len(list(s))
    s = sampler("agw", epoch_length=3)
    assert len(s) == 3 == len(list(s))
    s = sampler("agw", epoch_length="5")
    assert len(s) == 5 == len(list(s))


def test_agw_draws_are_uniform_with_replacement():
    # identity 5 has a single visible image but is still drawn K times (with replacement)
    s = sampler("agw", P=8, K=3, epoch_length=40)
    vis, _ = make_labels()
    per_identity = defaultdict(Counter)
    for batch in s:
        for d in batch:
            per_identity[vis[d.vis_index]][d.vis_index] += 1
    assert set(per_identity) == set(range(8))  # P = all eight usable identities every batch
    assert sum(per_identity[5].values()) == 40 * 3
    # identity 2 has 9 visible images; 120 uniform draws reach (almost surely) all of them
    assert len(per_identity[2]) == 9


def test_deterministic_for_seed_and_epoch_and_different_across_epochs_and_seeds():
    a, b = sampler(seed=3), sampler(seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert as_tuples(a) == as_tuples(b)
    assert as_tuples(a) == as_tuples(a)  # re-iterating the same epoch repeats it
    b.set_epoch(3)
    assert as_tuples(a) != as_tuples(b)
    c = sampler(seed=4)
    c.set_epoch(2)
    assert as_tuples(a) != as_tuples(c)


def test_aug_seeds_are_unique_and_change_with_the_epoch():
    s = sampler(epoch_length=20)
    seeds0 = [d.aug_seed for batch in s for d in batch]
    assert len(set(seeds0)) == len(seeds0)
    s.set_epoch(1)
    seeds1 = [d.aug_seed for batch in s for d in batch]
    assert not set(seeds0) & set(seeds1)


@pytest.mark.parametrize("mode", ["agw", "idkl"])
@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_shards_are_disjoint_and_union_is_the_single_process_batch(mode, world_size):
    single = sampler(mode, P=4, K=2, seed=1)
    single.set_epoch(5)
    full = list(single)
    shards = []
    for rank in range(world_size):
        s = sampler(mode, P=4, K=2, seed=1, rank=rank, world_size=world_size)
        s.set_epoch(5)
        assert len(s) == len(single)
        shards.append(list(s))
    per_rank = 4 // world_size
    for b, batch in enumerate(full):
        union = []
        for rank in range(world_size):
            part = shards[rank][b]
            assert len(part) == per_rank * 2
            assert {d.slot for d in part} == set(range(per_rank))  # local slots
            union += [d._replace(slot=d.slot + rank * per_rank) for d in part]
        assert sorted(union) == sorted(batch)
        assert len({d.pair_index for d in union}) == len(union)


def test_P_not_divisible_by_world_size_is_an_error():
    vis, ir = make_labels()
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        CrossModalityIdentitySampler(vis, ir, 4, 2, world_size=3, rank=0)


def test_configuration_errors():
    vis, ir = make_labels()
    with pytest.raises(ConfigError, match="only 8 identities"), pytest.warns(UserWarning):
        CrossModalityIdentitySampler(vis, ir, 9, 2)
    with pytest.raises(ConfigError, match=r"needs sampler\.mode='idkl'"):
        CrossModalityIdentitySampler(vis, ir, 4, 2, epoch_length="idkl", mode="agw")
    with pytest.raises(ConfigError, match="epoch_length"):
        CrossModalityIdentitySampler(vis, ir, 4, 2, epoch_length="forever")
    with pytest.raises(ConfigError, match="positive"):
        CrossModalityIdentitySampler(vis, ir, 4, 2, epoch_length=0)


def test_idkl_chunk_semantics_and_epoch_end():
    vis, ir = make_labels()
    K, P = 2, 3
    s = sampler("idkl", P=P, K=K, epoch_length="idkl", seed=7)
    batches = list(s)
    assert len(batches) == len(s)
    vis_count, ir_count = Counter(vis), Counter(ir)
    chunks = {i: max(min(vis_count[i], ir_count[i]), K) // K for i in range(8)}
    used = Counter()
    used_vis, used_ir = defaultdict(list), defaultdict(list)
    for batch in batches:
        for d in batch:
            pid = vis[d.vis_index]
            used_vis[pid].append(d.vis_index)
            used_ir[pid].append(d.ir_index)
            if d.inst == 0:
                used[pid] += 1
    for pid in range(8):
        assert used[pid] <= chunks[pid]
        # without replacement whenever the modality has enough images for the identity's chunks
        if vis_count[pid] >= chunks[pid] * K:
            assert len(set(used_vis[pid])) == len(used_vis[pid])
        if ir_count[pid] >= chunks[pid] * K:
            assert len(set(used_ir[pid])) == len(used_ir[pid])
    # the epoch ends exactly when fewer than P identities have chunks left
    assert sum(used[pid] < chunks[pid] for pid in range(8)) < P
    # identity 5 (one visible image, three infrared) still gets a chunk, with its single image repeated
    assert used[5] == 1 and set(used_vis[5]) == {vis.index(5)}


def test_idkl_subsamples_the_larger_modality_to_the_smaller():
    # id 0: 9 visible, 5 infrared -> 5 per modality -> 2 chunks of K=2 (one image of each modality dropped)
    vis = [0] * 9 + [1] * 4 + [2] * 4
    ir = [0] * 5 + [1] * 4 + [2] * 4
    s = CrossModalityIdentitySampler(vis, ir, P=1, K=2, epoch_length="idkl", mode="idkl", seed=0)
    draws = [d for batch in s for d in batch]
    id0 = [d for d in draws if vis[d.vis_index] == 0]
    assert len(id0) == 4
    assert len({d.vis_index for d in id0}) == 4 and len({d.ir_index for d in id0}) == 4
    assert len(s) == 2 + 2 + 2  # P = 1: every chunk of every identity, then the epoch ends


def test_idkl_with_a_fixed_epoch_length_concatenates_passes():
    s = sampler("idkl", P=3, K=2, epoch_length=50)
    batches = list(s)
    assert len(batches) == len(s) == 50
    for batch in batches:
        assert len({d.slot for d in batch}) == 3


@pytest.mark.parametrize("mode", ["agw", "idkl"])
def test_position_skip_equals_the_tail_of_an_uninterrupted_epoch(mode):
    full = sampler(mode, seed=2)
    full.set_epoch(4)
    everything = as_tuples(full)
    resumed = sampler(mode, seed=2)
    resumed.set_epoch(4, position=3)
    assert len(resumed) == len(everything) - 3
    assert as_tuples(resumed) == everything[3:]
    resumed.set_position(len(everything))
    assert len(resumed) == 0 and list(resumed) == []
    with pytest.raises(ValueError, match="position"):
        resumed.set_position(len(everything) + 1)
    resumed.set_epoch(5)  # a new epoch starts from its first batch
    assert resumed.position == 0


# --- captions --------------------------------------------------------------------------------------------


def caption_data():
    """(labels, pairs): id 0 has 5 pairs x 2 captions; id 1 has 2 pairs x 3 captions; ids 2..5 one pair."""
    labels, pairs = [], []
    pair = 0
    for pid, (n_pairs, n_caps) in {0: (5, 2), 1: (2, 3), 2: (1, 2), 3: (1, 1), 4: (2, 1), 5: (1, 3)}.items():
        for _ in range(n_pairs):
            labels += [pid] * n_caps
            pairs += [pair] * n_caps
            pair += 1
    return labels, pairs


def test_caption_sampler_batches_and_pair_diversity():
    labels, pairs = caption_data()
    s = CaptionIdentitySampler(labels, pairs, P=3, K=4, epoch_length=30, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 30
    for batch in batches:
        assert len(batch) == 12
        by_slot = defaultdict(list)
        for d in batch:
            by_slot[d.slot].append(d.caption_index)
        assert len({labels[c[0]] for c in by_slot.values()}) == 3
        for caps in by_slot.values():
            pid = labels[caps[0]]
            assert all(labels[c] == pid for c in caps)
            n_pairs = len({pairs[i] for i in range(len(labels)) if labels[i] == pid})
            # captions come from different pairs where possible
            assert len({pairs[c] for c in caps}) == min(4, n_pairs)
            if pid == 1:  # 2 pairs x 3 captions: 4 captions without repetition
                assert len(set(caps)) == 4


def test_caption_sampler_determinism_ddp_and_resume():
    labels, pairs = caption_data()
    a = CaptionIdentitySampler(labels, pairs, P=4, K=2, seed=5)
    a.set_epoch(1)
    full = as_tuples(a)
    assert len(full) == len(labels) // 8 + 1
    b = CaptionIdentitySampler(labels, pairs, P=4, K=2, seed=5)
    b.set_epoch(1)
    assert as_tuples(b) == full
    b.set_epoch(2)
    assert as_tuples(b) != full
    r0 = CaptionIdentitySampler(labels, pairs, P=4, K=2, seed=5, rank=0, world_size=2)
    r1 = CaptionIdentitySampler(labels, pairs, P=4, K=2, seed=5, rank=1, world_size=2)
    for s in (r0, r1):
        s.set_epoch(1)
    for batch, p0, p1 in zip(a, r0, r1):
        union = list(p0) + [d._replace(slot=d.slot + 2) for d in p1]
        assert sorted(union) == sorted(batch)
    a.set_epoch(1, position=2)
    assert as_tuples(a) == full[2:]
    with pytest.raises(ConfigError, match="divisible"):
        CaptionIdentitySampler(labels, pairs, P=3, K=2, world_size=2)
