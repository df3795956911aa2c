"""Identity samplers: P identities x K images per modality (VI-ReID), P identities x K captions (text).

Both samplers are *batch samplers*: iterating yields one list per batch (this rank's share), and each
element is a small record (:class:`SamplerDraw`, :class:`CaptionDraw`) that the DataLoader hands to the
dataset's ``__getitem__``. A draw carries everything the dataset needs: the image indices, the explicit
pairing fields of :class:`~vireid.data.batch.CrossModalBatch` (``pair_index``, ``slot``, ``inst``) and the
``aug_seed`` that makes its augmentation a pure function of (seed, epoch, position), independent of worker
count and exact under resume.

Design (fast-reid style, DDP-safe): every rank generates the same *global* epoch from a private NumPy
generator seeded with (seed, epoch); rank ``r`` of ``W`` keeps slots ``[r*P/W, (r+1)*P/W)`` of every batch
(whole identities), so the union of the ranks' shards is exactly the one-process batch. ``set_epoch`` works
like ``DistributedSampler.set_epoch``; ``set_position(n)`` skips the first ``n`` batches of the epoch for
resuming mid-epoch. ``len()`` is the exact number of batches the next iteration yields.

Release differences (method-baseline.md section 2, method-idkl.md sections 6 and 7.9): the AGW release's
``len(sampler)`` is N rather than the number of items; IDKL's release crashes on identities with fewer
than K images in one modality (vireid samples them with replacement); both use global NumPy state.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import numpy as np

from vireid.data.transforms.seeding import derive_seed
from vireid.errors import ConfigError

_STREAM_BATCHES = 0x1D
_STREAM_AUG = 0xA5


class SamplerDraw(NamedTuple):
    """One visible/infrared pair of one identity, as drawn by :class:`CrossModalityIdentitySampler`.

    Attributes:
        vis_index: index into the dataset's visible image list.
        ir_index: index into the dataset's infrared image list (same identity as ``vis_index``).
        pair_index: global position of the draw in the epoch (``batch * P * K + slot * K + inst`` with the
            global slot), unique within an epoch and identical on every rank.
        slot: identity slot inside this rank's batch, ``0 .. P/world_size - 1``.
        inst: draw index inside the slot, ``0 .. K-1``.
        aug_seed: seed of this draw's augmentation, from (seed, epoch, pair_index).
    """

    vis_index: int
    ir_index: int
    pair_index: int
    slot: int
    inst: int
    aug_seed: int


class CaptionDraw(NamedTuple):
    """One caption of one identity, as drawn by :class:`CaptionIdentitySampler`.

    Attributes:
        caption_index: index into the dataset's caption list.
        sample_index: global position of the draw in the epoch (unique within an epoch, same on every rank).
        slot: identity slot inside this rank's batch; ``inst``: draw index inside the slot.
        aug_seed: seed of this draw's augmentation, from (seed, epoch, sample_index).
    """

    caption_index: int
    sample_index: int
    slot: int
    inst: int
    aug_seed: int


def _check_common(P: int, K: int, seed: int, rank: int, world_size: int) -> None:
    if P < 1 or K < 1:
        raise ConfigError(f"sampler.P and sampler.K must be >= 1, got P={P}, K={K}.")
    if seed < 0:
        raise ConfigError(f"the sampler seed must be >= 0, got {seed}.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
    if P % world_size:
        raise ConfigError(
            f"sampler.P={P} is not divisible by the world size {world_size}; each rank takes whole identities.",
            fix=f"set sampler.P to a multiple of {world_size} (P is the global number of identities per batch).",
        )


def _parse_epoch_length(value: str | int, allowed: tuple[str, ...]) -> str | int:
    if isinstance(value, bool):
        raise ConfigError(f"sampler.epoch_length must be one of {allowed} or a positive integer, got {value!r}.")
    numeric = isinstance(value, str) and value.strip().lstrip("+").isdigit()
    if isinstance(value, int | np.integer) or numeric:
        n = int(value)
    elif isinstance(value, str) and value.strip().lower() in allowed:
        return value.strip().lower()
    else:
        raise ConfigError(f"sampler.epoch_length must be one of {allowed} or a positive integer, got {value!r}.")
    if n < 1:
        raise ConfigError(f"sampler.epoch_length must be a positive number of batches, got {n}.")
    return n


def _group(labels: Sequence[int]) -> dict[int, np.ndarray]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[int(label)].append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _list_ids(ids: Sequence[int], limit: int = 50) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


class _EpochBatchSampler:
    """Shared machinery: epoch/position state, lazy per-epoch generation, rank sharding, ``len``."""

    def __init__(self, P: int, K: int, seed: int, rank: int, world_size: int):
        _check_common(P, K, seed, rank, world_size)
        self.P, self.K, self.seed, self.rank, self.world_size = P, K, seed, rank, world_size
        self.slots_per_rank = P // world_size
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # -- epoch state ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, starting at batch ``position``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self.set_position(position)

    def set_position(self, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of the current epoch in the next iteration (resume)."""
        total = self.num_batches
        if not 0 <= batches_done <= total:
            raise ValueError(f"position {batches_done} is outside the epoch's 0..{total} batches")
        self.position = int(batches_done)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, _STREAM_BATCHES])

    def _epoch_array(self) -> np.ndarray:
        """The global epoch as an int64 array (batches, P, K, columns); cached per epoch."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._generate())
        return self._cache[1]

    def _generate(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_batches(self) -> int:
        """Batches in the whole current epoch (ignoring the position)."""
        return int(self._epoch_array().shape[0])

    def __len__(self) -> int:
        """Exact number of batches the next iteration yields (the epoch minus the skipped position)."""
        return self.num_batches - self.position

    def _shard_slots(self) -> range:
        start = self.rank * self.slots_per_rank
        return range(start, start + self.slots_per_rank)

    def _aug_seed(self, position: int) -> int:
        return derive_seed(self.seed, self.epoch, position, _STREAM_AUG)


class CrossModalityIdentitySampler(_EpochBatchSampler):
    """P identities x K visible/infrared pairs per batch, with explicit pairing (method-baseline.md §2).

    Args:
        visible_labels: training label of every visible image (the dataset's visible index space).
        infrared_labels: training label of every infrared image.
        P: identities per batch over all ranks. K: images per identity and per modality.
        epoch_length: ``"agw"`` = floor(N / (P*K)) + 1 batches with N = max(#visible, #infrared);
            ``"idkl"`` = until fewer than P identities have chunks left (``mode="idkl"`` only); or an int.
        mode: ``"agw"``: each batch draws P identities without replacement and, for each, K visible and K
            infrared indices uniformly with replacement; draw j pairs visible j with infrared j.
            ``"idkl"``: per identity, the larger modality is subsampled without replacement to the size of
            the smaller (at least K; a modality with fewer than K images is topped up with replacement),
            both are shuffled and cut into chunks of K (leftovers dropped); a batch takes P distinct
            identities among those with chunks left (uniformly, as IDKL's release) and one chunk of each,
            pairing visible chunk j with infrared chunk j. With an integer or ``"agw"`` length, passes are
            concatenated until the length is reached.
        seed, rank, world_size: see the module docstring.

    Identities present in only one modality are left out with a ``UserWarning`` listing them.
    Iteration yields ``list[SamplerDraw]`` of length ``P / world_size * K``, ordered by (slot, inst).

    Raises:
        ConfigError: P not divisible by world_size, P larger than the number of usable identities, or an
            invalid epoch length.
    """

    def __init__(
        self,
        visible_labels: Sequence[int],
        infrared_labels: Sequence[int],
        P: int,
        K: int,
        epoch_length: Literal["agw", "idkl"] | int | str = "agw",
        mode: Literal["agw", "idkl"] = "agw",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(P, K, seed, rank, world_size)
        if mode not in ("agw", "idkl"):
            raise ConfigError(f"sampler.mode must be 'agw' or 'idkl', got {mode!r}.")
        self.mode = mode
        self.epoch_length = _parse_epoch_length(epoch_length, ("agw", "idkl"))
        if self.epoch_length == "idkl" and mode != "idkl":
            raise ConfigError(
                "sampler.epoch_length='idkl' (until identities run out) needs sampler.mode='idkl'; in 'agw' mode "
                "identities are drawn with replacement and never run out.",
                fix="use epoch_length 'agw' or an integer number of batches.",
            )
        vis, ir = _group(visible_labels), _group(infrared_labels)
        one_modality = sorted(set(vis) ^ set(ir))
        if one_modality:
            warnings.warn(
                f"{len(one_modality)} training identities have images in only one modality and are left out of "
                f"training (labels: {_list_ids(one_modality)}).",
                UserWarning,
                stacklevel=2,
            )
        self.identities = sorted(set(vis) & set(ir))
        self.excluded_identities = one_modality
        if len(self.identities) < P:
            raise ConfigError(
                f"sampler.P={P} identities per batch, but only {len(self.identities)} identities have images in "
                "both modalities.",
                fix=f"set sampler.P to at most {len(self.identities)}.",
            )
        self._vis = [vis[i] for i in self.identities]
        self._ir = [ir[i] for i in self.identities]
        self._n_images = max(len(visible_labels), len(infrared_labels))

    def _target_batches(self) -> int | None:
        if self.epoch_length == "agw":
            return self._n_images // (self.P * self.K) + 1
        if self.epoch_length == "idkl":
            return None
        return int(self.epoch_length)

    def _generate(self) -> np.ndarray:
        """(batches, P, K, 2) global array of (visible index, infrared index)."""
        rng = self._rng()
        target = self._target_batches()
        if self.mode == "agw":
            return self._generate_agw(rng, int(target))
        passes: list[np.ndarray] = []
        count = 0
        while True:
            chunk = self._idkl_pass(rng)
            passes.append(chunk)
            count += len(chunk)
            if target is None or count >= target:
                break
        out = np.concatenate(passes, axis=0)
        return out if target is None else out[:target]

    def _generate_agw(self, rng: np.random.Generator, batches: int) -> np.ndarray:
        P, K = self.P, self.K
        out = np.empty((batches, P, K, 2), dtype=np.int64)
        n_ids = len(self.identities)
        for b in range(batches):
            ids = rng.choice(n_ids, size=P, replace=False)
            for s, ident in enumerate(ids):
                vis, ir = self._vis[ident], self._ir[ident]
                out[b, s, :, 0] = vis[rng.integers(0, len(vis), size=K)]
                out[b, s, :, 1] = ir[rng.integers(0, len(ir), size=K)]
        return out

    def _idkl_take(self, rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        """``n`` shuffled indices of ``pool``: without replacement, topped up with replacement if short."""
        if len(pool) >= n:
            return pool[rng.permutation(len(pool))[:n]]
        extra = pool[rng.integers(0, len(pool), size=n - len(pool))]
        return np.concatenate([pool, extra])[rng.permutation(n)]

    def _idkl_pass(self, rng: np.random.Generator) -> np.ndarray:
        """One pass of IDKL's chunk sampler over all identities: (batches, P, K, 2)."""
        K, P = self.K, self.P
        chunks: list[list[np.ndarray]] = []
        for vis, ir in zip(self._vis, self._ir):
            n = max(min(len(vis), len(ir)), K)
            n -= n % K  # leftovers are dropped
            v = self._idkl_take(rng, vis, n).reshape(-1, K)
            i = self._idkl_take(rng, ir, n).reshape(-1, K)
            chunks.append([np.stack([v[j], i[j]], axis=1) for j in range(n // K)])
        available = list(range(len(self.identities)))
        next_chunk = [0] * len(self.identities)
        batches: list[np.ndarray] = []
        while len(available) >= P:
            picked = [available[j] for j in rng.choice(len(available), size=P, replace=False)]
            batch = []
            for ident in picked:
                batch.append(chunks[ident][next_chunk[ident]])
                next_chunk[ident] += 1
            batches.append(np.stack(batch))
            exhausted = {ident for ident in picked if next_chunk[ident] == len(chunks[ident])}
            if exhausted:
                available = [a for a in available if a not in exhausted]
        return np.stack(batches) if batches else np.empty((0, P, K, 2), dtype=np.int64)

    def __iter__(self) -> Iterator[list[SamplerDraw]]:
        epoch = self._epoch_array()
        P, K = self.P, self.K
        slots = self._shard_slots()
        for b in range(self.position, epoch.shape[0]):
            draws = []
            for local, s in enumerate(slots):
                for k in range(K):
                    position = (b * P + s) * K + k
                    vis, ir = epoch[b, s, k]
                    draws.append(SamplerDraw(int(vis), int(ir), position, local, k, self._aug_seed(position)))
            yield draws


class CaptionIdentitySampler(_EpochBatchSampler):
    """P identities x K captions per batch for text-to-image training (DIKDNet).

    Captions of one identity are taken from *different* image pairs where possible: the pairs of an
    identity are visited in a random order (a fresh random order each time all were visited), and inside a
    pair captions are drawn without replacement until that pair's captions are used up (then with
    replacement), so an identity with at least K pairs contributes K different pairs.

    Args:
        caption_labels: training label of every caption (the dataset's caption index space).
        caption_pairs: index of the image pair each caption describes (parallel to ``caption_labels``).
        P, K: identities per batch (over all ranks) and captions per identity.
        epoch_length: ``"agw"`` = floor(#captions / (P*K)) + 1 batches, or an int.
        seed, rank, world_size: as :class:`CrossModalityIdentitySampler` (same determinism, DDP sharding
            and resume behaviour).

    Iteration yields ``list[CaptionDraw]`` of length ``P / world_size * K``, ordered by (slot, inst).
    """

    def __init__(
        self,
        caption_labels: Sequence[int],
        caption_pairs: Sequence[int],
        P: int,
        K: int,
        epoch_length: Literal["agw"] | int | str = "agw",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(P, K, seed, rank, world_size)
        if len(caption_labels) != len(caption_pairs):
            raise ValueError(
                f"caption_labels ({len(caption_labels)}) and caption_pairs ({len(caption_pairs)}) differ in length"
            )
        self.epoch_length = _parse_epoch_length(epoch_length, ("agw",))
        by_id: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, (label, pair) in enumerate(zip(caption_labels, caption_pairs)):
            by_id[int(label)][int(pair)].append(i)
        self.identities = sorted(by_id)
        if len(self.identities) < P:
            raise ConfigError(
                f"sampler.P={P} identities per batch, but the captions cover only {len(self.identities)} identities.",
                fix=f"set sampler.P to at most {len(self.identities)}.",
            )
        self._pairs = [[np.asarray(by_id[i][p], dtype=np.int64) for p in sorted(by_id[i])] for i in self.identities]
        self._n_captions = len(caption_labels)

    def _draw_identity(self, rng: np.random.Generator, ident: int) -> np.ndarray:
        pairs = self._pairs[ident]
        order: list[int] = []
        while len(order) < self.K:
            order.extend(rng.permutation(len(pairs)).tolist())
        order = order[: self.K]
        out = np.empty(self.K, dtype=np.int64)
        used: dict[int, list[int]] = defaultdict(list)
        for k, p in enumerate(order):
            captions = pairs[p]
            free = [c for c in range(len(captions)) if c not in used[p]]
            pick = free[int(rng.integers(len(free)))] if free else int(rng.integers(len(captions)))
            used[p].append(pick)
            out[k] = captions[pick]
        return out

    def _generate(self) -> np.ndarray:
        rng = self._rng()
        if self.epoch_length == "agw":
            batches = self._n_captions // (self.P * self.K) + 1
        else:
            batches = int(self.epoch_length)
        out = np.empty((batches, self.P, self.K), dtype=np.int64)
        for b in range(batches):
            for s, ident in enumerate(rng.choice(len(self.identities), size=self.P, replace=False)):
                out[b, s] = self._draw_identity(rng, int(ident))
        return out

    def __iter__(self) -> Iterator[list[CaptionDraw]]:
        epoch = self._epoch_array()
        P, K = self.P, self.K
        slots = self._shard_slots()
        for b in range(self.position, epoch.shape[0]):
            draws = []
            for local, s in enumerate(slots):
                for k in range(K):
                    position = (b * P + s) * K + k
                    draws.append(CaptionDraw(int(epoch[b, s, k]), position, local, k, self._aug_seed(position)))
            yield draws
