"""Training/evaluation datasets, collation into CrossModalBatch, the DataLoader helper and the image cache."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vireid.config import AugConfig, CutSwapConfig, RunConfig
from vireid.data.cache import build_cross_modal_cache, build_image_cache, decode_resized
from vireid.data.datasets import (
    CrossModalTrainDataset,
    ImageListDataset,
    build_cross_modal_loader,
    collate_cross_modal,
)
from vireid.data.records import ImageRecord, Modality
from vireid.data.samplers import CrossModalityIdentitySampler, SamplerDraw
from vireid.data.transforms import build_test_transform, build_train_views
from vireid.errors import ConfigError, DataError

H, W = 16, 8


def write_dataset(root, ids=4, vis_per_id=3, ir_per_id=2):
    """Tiny JPEG/PNG images of varying sizes; visible cameras 1-2, infrared camera 3."""
    rng = np.random.default_rng(0)
    records = []
    for pid in range(ids):
        for modality, count, ext in ((Modality.VISIBLE, vis_per_id, "jpg"), (Modality.INFRARED, ir_per_id, "png")):
            for k in range(count):
                h, w = 20 + 2 * k, 10 + k
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                img = Image.fromarray(pixels if modality == Modality.VISIBLE else pixels[..., :1].repeat(3, axis=2))
                path = root / f"{modality.short}_{pid}_{k}.{ext}"
                img.save(path)
                cam = 1 + k % 2 if modality == Modality.VISIBLE else 3
                records.append(ImageRecord(str(path), pid=100 + pid, camid=cam, modality=modality, label=pid))
    return records


@pytest.fixture
def records(tmp_path):
    return write_dataset(tmp_path)


def make_dataset(records, preset="caj", cache=None, cutswap=0.0):
    views = build_train_views(AugConfig(preset=preset), CutSwapConfig(p=cutswap), H, W)
    return CrossModalTrainDataset(records, views, H, W, cache=cache)


def make_sampler(dataset, P=2, K=2, seed=0, **kw):
    return CrossModalityIdentitySampler(dataset.visible_labels, dataset.infrared_labels, P, K, seed=seed, **kw)


def assert_batches_equal(a, b):
    for name in ("images", "label", "modality", "view", "pair_index", "slot", "inst", "camid"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_caj_batch_has_the_right_shapes_and_fields(records):
    dataset = make_dataset(records, "caj")
    sampler = make_sampler(dataset, P=2, K=3)
    draws = next(iter(sampler))
    batch = collate_cross_modal([dataset[d] for d in draws])
    n = 2 * 3
    assert batch.images.shape == (3 * n, 3, H, W) and batch.images.dtype == torch.float32
    assert len(batch) == 3 * n
    assert batch.modality.tolist() == [0] * 2 * n + [1] * n
    assert batch.view.tolist() == [0] * n + [1] * n + [0] * n
    for view in (0, 1):
        iv, ii = batch.pair_rows(view)
        assert len(iv) == len(ii) == n
        assert torch.equal(batch.label[iv], batch.label[ii])
        assert torch.equal(batch.pair_index[iv], batch.pair_index[ii])
    assert batch.slot[:n].tolist() == [0, 0, 0, 1, 1, 1] and batch.inst[:n].tolist() == [0, 1, 2] * 2
    assert set(batch.camid[batch.modality == 1].tolist()) == {3}
    assert set(batch.camid[batch.modality == 0].tolist()) <= {1, 2}
    # labels are the records' training labels of the drawn images
    for j, d in enumerate(draws):
        assert batch.label[j] == dataset.visible[d.vis_index].label == dataset.infrared[d.ir_index].label
    # view 1 of CAJ is channel-exchanged: its three channels are equal up to the erased rectangle
    vis_b = batch.images[batch.view.eq(1) & batch.modality.eq(0)]
    same = (vis_b[:, 0] == vis_b[:, 1]) & (vis_b[:, 1] == vis_b[:, 2])
    assert same.float().mean() > 0.5


def test_agw_batch_and_pinning(records):
    dataset = make_dataset(records, "agw")
    draws = next(iter(make_sampler(dataset)))
    batch = collate_cross_modal([dataset[d] for d in draws])
    assert batch.images.shape == (8, 3, H, W)
    assert batch.view.unique().tolist() == [0]
    iv, ii = batch.pair_rows()
    assert torch.equal(batch.label[iv], batch.label[ii])


def test_same_seed_same_batches_across_worker_counts(records):
    dataset = make_dataset(records, "caj", cutswap=0.5)
    results = {}
    for workers in (0, 2):
        sampler = make_sampler(dataset, seed=11, epoch_length=3)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_cross_modal, num_workers=workers)
        results[workers] = list(loader)
    assert len(results[0]) == 3
    for a, b in zip(results[0], results[2]):
        assert_batches_equal(a, b)
    # a different epoch gives different augmented images
    sampler = make_sampler(dataset, seed=11, epoch_length=3)
    sampler.set_epoch(3)
    other = next(iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_cross_modal)))
    assert not torch.equal(other.images, results[0][0].images)


def test_augmentation_is_a_function_of_the_draw_only(records):
    dataset = make_dataset(records, "caj")
    draw = SamplerDraw(vis_index=0, ir_index=1, pair_index=5, slot=0, inst=0, aug_seed=1234)
    torch.manual_seed(0)
    a = dataset[draw]
    torch.manual_seed(99)  # global state does not leak into the sample
    b = dataset[draw]
    assert torch.equal(a.visible, b.visible) and torch.equal(a.infrared, b.infrared)
    c = dataset[draw._replace(aug_seed=1235)]
    assert not torch.equal(a.visible, c.visible)
    # views draw their own randomness: the two visible views differ beyond the channel exchange
    assert not torch.equal(a.visible[0], a.visible[1])


def test_build_loader_from_config_is_deterministic_and_resumable(records, tmp_path):
    cfg = RunConfig()
    cfg.data.height, cfg.data.width, cfg.data.workers = H, W, 0
    cfg.sampler.P, cfg.sampler.K, cfg.sampler.epoch_length = 2, 2, "4"
    cfg.aug.preset = "caj"
    cfg.train.seed = 3
    loader = build_cross_modal_loader(records, cfg)
    loader.batch_sampler.set_epoch(1)
    full = list(loader)
    assert len(full) == len(loader) == 4
    loader.batch_sampler.set_epoch(1, position=2)
    tail = list(loader)
    assert len(tail) == 2
    for a, b in zip(full[2:], tail):
        assert_batches_equal(a, b)
    # with the cache: identical batches
    cfg.data.cache, cfg.data.cache_dir = True, str(tmp_path / "cache")
    cached = build_cross_modal_loader(records, cfg)
    assert cached.dataset.cache is not None
    cached.batch_sampler.set_epoch(1)
    for a, b in zip(full, cached):
        assert_batches_equal(a, b)
    cfg.data.cache_dir = None
    with pytest.raises(ConfigError, match="cache_dir"):
        build_cross_modal_loader(records, cfg)


def test_persistent_workers_follow_set_epoch(records):
    cfg = RunConfig()
    cfg.data.height, cfg.data.width = H, W
    cfg.sampler.P, cfg.sampler.K, cfg.sampler.epoch_length = 2, 2, "2"
    cfg.aug.preset = "dakd"
    cfg.cutswap.p = 0.5
    epochs = {}
    for workers in (0, 2):
        cfg.data.workers = workers
        loader = build_cross_modal_loader(records, cfg)
        assert loader.persistent_workers == (workers > 0)
        epochs[workers] = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            epochs[workers].append(list(loader))
    assert not torch.equal(epochs[0][0][0].images, epochs[0][1][0].images)
    for e in (0, 1):
        for a, b in zip(epochs[0][e], epochs[2][e]):
            assert_batches_equal(a, b)


def test_ddp_ranks_take_disjoint_identity_slots_of_one_batch(records):
    dataset = make_dataset(records, "agw")
    single = next(iter(make_sampler(dataset, P=2, K=2, seed=4)))
    parts = [next(iter(make_sampler(dataset, P=2, K=2, seed=4, rank=r, world_size=2))) for r in range(2)]
    whole = collate_cross_modal([dataset[d] for d in single])
    halves = [collate_cross_modal([dataset[d] for d in p]) for p in parts]
    assert sorted(torch.cat([h.pair_index for h in halves]).tolist()) == sorted(whole.pair_index.tolist())
    for h in halves:
        assert h.slot.unique().tolist() == [0]
        rows = torch.nonzero(torch.isin(whole.pair_index, h.pair_index) & whole.modality.eq(0)).flatten()
        assert torch.equal(whole.images[rows], h.images[h.modality.eq(0)])


def test_corrupt_image_raises_data_error_naming_the_file(records, tmp_path):
    bad = records[0]
    with open(bad.path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset = make_dataset(records, "agw")
    draw = SamplerDraw(vis_index=0, ir_index=0, pair_index=0, slot=0, inst=0, aug_seed=1)
    with pytest.raises(DataError, match=os.path.basename(bad.path)):
        dataset[draw]
    with pytest.raises(DataError, match=os.path.basename(bad.path)):
        build_cross_modal_cache(records, tmp_path / "cache", H, W)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix in (".u8", ".tmp", ".json")]


def test_records_without_labels_and_mismatched_draws_are_errors(records):
    views = build_train_views(AugConfig(), None, H, W)
    unlabeled = [ImageRecord(records[0].path, 1, 1, Modality.VISIBLE), *records[1:]]
    with pytest.raises(DataError, match="no training label"):
        CrossModalTrainDataset(unlabeled, views)
    dataset = CrossModalTrainDataset(records, views)
    vis_of_0 = dataset.visible_labels.index(0)
    ir_of_1 = dataset.infrared_labels.index(1)
    with pytest.raises(DataError, match="one identity"):
        dataset[SamplerDraw(vis_of_0, ir_of_1, 0, 0, 0, 0)]
    with pytest.raises(TypeError, match="SamplerDraw"):
        dataset[3]
    with pytest.raises(ConfigError, match="differs"):
        CrossModalTrainDataset(records, views, H + 1, W)


def test_cache_round_trip_equals_direct_decoding(records, tmp_path):
    paths = [r.path for r in records]
    cache = build_image_cache(paths, tmp_path / "c", H, W)
    assert cache.array.shape == (len(paths), H, W, 3)
    for i, p in enumerate(paths):
        assert np.array_equal(cache[i], np.asarray(decode_resized(p, H, W, "lanczos")))
    # the datasets give identical samples with and without the cache
    cross = build_cross_modal_cache(records, tmp_path / "c", H, W)
    direct, cached = make_dataset(records, "caj"), make_dataset(records, "caj", cache=cross)
    for d in next(iter(make_sampler(direct, epoch_length=1))):
        a, b = direct[d], cached[d]
        assert torch.equal(a.visible, b.visible) and torch.equal(a.infrared, b.infrared)
    # pickling for workers carries no pixels and reopens the map lazily
    blob = pickle.dumps(cache)
    assert len(blob) < 4096
    assert np.array_equal(pickle.loads(blob)[3], cache[3])


def test_cache_is_reused_when_fresh_and_rebuilt_when_stale(records, tmp_path):
    paths = [r.path for r in records[:4]]
    first = build_image_cache(paths, tmp_path, H, W, name="t")
    again = build_image_cache(paths, tmp_path, H, W, name="t")
    assert again.data_path == first.data_path  # reused, not rebuilt
    # change one image (content, size and mtime)
    Image.new("RGB", (9, 13), (10, 200, 30)).save(paths[2], format="JPEG" if paths[2].endswith("jpg") else "PNG")
    os.utime(paths[2], ns=(1, 1))
    rebuilt = build_image_cache(paths, tmp_path, H, W, name="t")
    assert rebuilt.data_path != first.data_path
    assert not first.data_path.exists()  # the previous build's array is removed
    assert np.array_equal(rebuilt[2], np.asarray(decode_resized(paths[2], H, W, "lanczos")))
    # a different size or filter is a different cache
    other = build_image_cache(paths, tmp_path, H, W, name="t", interpolation="bilinear")
    assert other.index_path != rebuilt.index_path
    # a truncated array is detected and rebuilt
    with open(rebuilt.data_path, "r+b") as f:
        f.truncate(10)
    repaired = build_image_cache(paths, tmp_path, H, W, name="t")
    assert repaired.data_path != rebuilt.data_path and repaired.array.shape == (4, H, W, 3)


def test_cache_of_other_records_is_rejected(records, tmp_path):
    cache = build_cross_modal_cache(records[:-1], tmp_path, H, W)
    with pytest.raises(DataError, match="does not match"):
        make_dataset(records, cache=cache)


def test_image_list_dataset_returns_tensor_and_index(records):
    dataset = ImageListDataset(records, build_test_transform(H, W))
    assert len(dataset) == len(records)
    x, i = dataset[5]
    assert i == 5 and x.shape == (3, H, W)
    loader = DataLoader(dataset, batch_size=4)
    xs, idx = next(iter(loader))
    assert xs.shape == (4, 3, H, W) and idx.tolist() == [0, 1, 2, 3]


def test_gray3_infrared_decoding(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGB", (8, 16), (255, 0, 0)).save(path)
    rec = ImageRecord(str(path), 1, 3, Modality.INFRARED, label=0)
    x, _ = ImageListDataset([rec], lambda im: torch.from_numpy(np.asarray(im).copy()), gray3_infrared=True)[0]
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all() and x[0, 0, 0] == 76
