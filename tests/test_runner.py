"""Protocol runner and reports: tiny generated images, a fake embedder, numbers checked against evaluate()."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console

from vireid.data.records import CaptionRecord, ImageRecord, Modality
from vireid.errors import ProtocolError
from vireid.evaluation import evaluate, evaluate_similarity
from vireid.evaluation.metrics import RetrievalResult
from vireid.evaluation.report import ProtocolResult, TrialResult, format_metric, summary_table
from vireid.evaluation.rerank import RerankOptions, k_reciprocal_distance
from vireid.evaluation.runner import run_protocol
from vireid.evaluation.trial import Trial


def to_tensor(img):
    """Test transform: PIL -> (3, H, W) float in [0, 1] (module level, so DataLoader workers can pickle it)."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class CountingEmbedder:
    """Features = per-channel means of the left (x3) and right image halves; counts every image it sees.

    The left half is weighted, so flipping an image changes the norm of its features as well as their direction.
    """

    def __init__(self):
        self.seen = 0
        self.batches = []

    def embed_images(self, images, modality):
        self.seen += len(images)
        self.batches.append((images.clone(), modality))
        half = images.shape[-1] // 2
        return torch.cat([3 * images[..., :half].mean((2, 3)), images[..., half:].mean((2, 3))], dim=1)


def make_dataset(root, num_ids=6, noise=40.0):
    """num_ids identities x (2 visible + 2 infrared) tiny PNGs. Identity colours are close and the noise is
    large, so retrieval is imperfect (metrics strictly between 0 and 1, sensitive to every scoring detail);
    the left half is darker than the right, so a horizontal flip changes the features."""
    rng = np.random.default_rng(0)
    records = []
    for pid in range(num_ids):
        base = np.array([100 + 12 * pid, 140 - 6 * pid, 90 + 9 * (pid % 3)], dtype=np.float32)
        for modality, cams in ((Modality.VISIBLE, (1, 2)), (Modality.INFRARED, (3, 6))):
            for k, cam in enumerate(cams):
                img = np.clip(base + rng.normal(0, noise, (8, 6, 3)), 0, 255)
                img[:, :3] *= 0.5 + 0.2 * ((pid + k) % 3)
                if modality is Modality.INFRARED:
                    img[:] = img.mean(axis=2, keepdims=True)
                path = root / f"{modality.short}_{pid}_{k}.png"
                Image.fromarray(img.astype(np.uint8)).save(path)
                records.append(ImageRecord(path=str(path), pid=pid, camid=cam, modality=modality))
    return records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("imgs"))


def _trials(records, num_trials=3):
    queries = tuple(r for r in records if r.modality is Modality.INFRARED)
    visible = [r for r in records if r.modality is Modality.VISIBLE]
    trials = []
    for t in range(num_trials):
        gallery = tuple(r for i, r in enumerate(visible) if (i + t) % 2 == 0 or r.pid == t)  # differ per trial
        trials.append(
            Trial("fake.ir2vis", t, queries, gallery, "sysu", 4, meta={"sampler": "random", "seed": t, "mode": "all"})
        )
    return trials


def _direct(trial, embedder_fn, flip=False):
    """What the runner should compute, done by hand: load, transform, embed, L2, cosine, evaluate_similarity."""

    def feats(records):
        out = []
        for r in records:
            x = to_tensor(Image.open(r.path).convert("RGB")).unsqueeze(0)
            f = F.normalize(embedder_fn(x, r.modality), dim=1)
            if flip:
                f2 = F.normalize(embedder_fn(torch.flip(x, dims=[-1]), r.modality), dim=1)
                f = F.normalize((f + f2) / 2, dim=1)
            out.append(f)
        return torch.cat(out)

    sim = feats(trial.query) @ feats(trial.gallery).T
    return evaluate_similarity(
        sim,
        [r.pid for r in trial.query],
        [r.pid for r in trial.gallery],
        [r.camid for r in trial.query],
        [r.camid for r in trial.gallery],
        trial.rule,
        trial.max_rank,
    )


def _same(a: RetrievalResult, b: RetrievalResult):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-12)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12)
    assert a.mINP == pytest.approx(b.mINP, abs=1e-12)
    assert a.num_valid_queries == b.num_valid_queries


@pytest.mark.parametrize("flip", [False, True])
def test_runner_matches_direct_evaluate_and_extracts_each_record_once(dataset, flip):
    trials = _trials(dataset)
    embedder = CountingEmbedder()
    res = run_protocol(trials, embedder, transform=to_tensor, batch_size=3, flip=flip, progress=False)
    unique = {(r.path, r.modality) for t in trials for r in (*t.query, *t.gallery)}
    # 12 IR queries once (not 3 times) + the 12 visible images that appear in any gallery; doubled by flip.
    assert embedder.seen == len(unique) * (2 if flip else 1) == 24 * (2 if flip else 1)
    if flip:
        images, _ = embedder.batches[0]
        n = len(images) // 2
        torch.testing.assert_close(images[n:], torch.flip(images[:n], dims=[-1]))
    fresh = CountingEmbedder()
    for trial, got in zip(trials, res.trials, strict=True):
        _same(got.result, _direct(trial, fresh.embed_images, flip=flip))
    assert res.metadata["tta"] == ("flip" if flip else "none")
    assert res.metadata["rerank"] == "none"
    assert res.metadata["cmc_variant"] == "deduplicated"
    assert res.metadata["sampler"] == "random" and res.metadata["mode"] == "all"  # shared trial metadata
    assert "seed" not in res.metadata and [t.meta["seed"] for t in res.trials] == [0, 1, 2]


def test_plain_callable_and_workers(dataset):
    trials = _trials(dataset, num_trials=1)
    fn = CountingEmbedder().embed_images
    res = run_protocol(trials, fn, transform=to_tensor, batch_size=4, workers=1, progress=False)
    _same(res.trials[0].result, _direct(trials[0], CountingEmbedder().embed_images))


def test_aggregation_mean_and_sample_std_by_hand():
    # Three trials with R1 = 50, 70, 90 %: mean 70, sample std sqrt((400 + 0 + 400) / 2) = 20.
    # mAP = 40, 40, 40 %: std 0. CMC length 4: R1, mAP, mINP are reported, R5+ are not.
    def fake(r1, ap):
        return RetrievalResult(np.array([r1, 1.0, 1.0, 1.0]), ap, 0.25, 10, 10, "regdb")

    res = ProtocolResult.from_trials("x.y", [TrialResult(i, fake(r1, 0.4)) for i, r1 in enumerate([0.5, 0.7, 0.9])])
    assert res.metric_names == ("R1", "mAP", "mINP")
    assert res.mean["R1"] == pytest.approx(70.0) and res.std["R1"] == pytest.approx(20.0)
    assert res.mean["mAP"] == pytest.approx(40.0) and res.std["mAP"] == pytest.approx(0.0)
    assert res.formatted()["R1"] == "70.00 ± 20.00"
    single = ProtocolResult.from_trials("x.y", [TrialResult(0, fake(0.5, 0.4))])
    assert math.isnan(single.std["R1"]) and single.formatted()["R1"] == "50.00"


def test_runner_aggregates_its_trials(dataset):
    res = run_protocol(_trials(dataset), CountingEmbedder(), transform=to_tensor, progress=False)
    r1 = [100 * t.result.cmc[0] for t in res.trials]
    assert res.mean["R1"] == pytest.approx(np.mean(r1))
    assert res.std["R1"] == pytest.approx(np.std(r1, ddof=1))
    assert set(res.mean) == {"R1", "mAP", "mINP"}  # max_rank 4 in these trials


def test_format_metric():
    assert format_metric(47.5, 1.234) == "47.50 ± 1.23"
    assert format_metric(47.499, None) == "47.50"
    assert format_metric(3.0, float("nan")) == "3.00"


def test_save_writes_json_and_png_and_table_shows_rerank_label(dataset, tmp_path):
    trials = _trials(dataset, num_trials=2)
    plain = run_protocol(trials, CountingEmbedder(), transform=to_tensor, progress=False, selection_split="val")
    paths = plain.save(tmp_path)
    assert paths["json"].name == "fake.ir2vis.json" and paths["png"].name == "fake.ir2vis_cmc.png"
    data = json.loads(paths["json"].read_text())
    assert data["metadata"]["rerank"] == "none" and data["metadata"]["selection_split"] == "val"
    assert data["metadata"]["trials"] == [0, 1] and len(data["trials"]) == 2
    assert data["summary"]["R1"]["mean"] == pytest.approx(plain.mean["R1"])
    with Image.open(paths["png"]) as png:
        assert png.format == "PNG" and png.size[0] > 100

    opts = RerankOptions(k1=3, k2=2, lambda_value=0.3, variant="joint")
    reranked = run_protocol(trials, CountingEmbedder(), transform=to_tensor, progress=False, rerank=opts)
    assert reranked.metadata["rerank"] == "k_reciprocal(3,2,0.3,joint)"
    console = Console(record=True, width=200)
    console.print(reranked.table())
    text = console.export_text()
    assert "RE-RANKED: rerank=k_reciprocal(3,2,0.3,joint)" in text and "mean ± std" in text
    assert "RE-RANKED" not in (plain.title + json.dumps(data))
    rpaths = reranked.save(tmp_path)
    assert rpaths["json"].name == "fake.ir2vis.reranked.json" and paths["json"].exists()
    with pytest.raises(ProtocolError, match="different re-ranking settings"):
        summary_table([plain, reranked])
    assert summary_table([plain]).title == "results"
    assert plain.with_metadata(selection_split="last").metadata["selection_split"] == "last"
    with pytest.raises(ProtocolError, match="rerank label"):
        plain.with_metadata(rerank="k_reciprocal(20,6,0.3,joint)")


def test_rerank_numbers_match_direct_computation(dataset):
    trials = _trials(dataset, num_trials=1)
    opts = RerankOptions(k1=4, k2=2, variant="query_only")
    res = run_protocol(trials, CountingEmbedder(), transform=to_tensor, progress=False, rerank=opts)
    emb = CountingEmbedder()

    def feats(records):
        xs = torch.stack([to_tensor(Image.open(r.path).convert("RGB")) for r in records])
        return torch.cat([F.normalize(emb.embed_images(x[None], r.modality), dim=1) for x, r in zip(xs, records)])

    t = trials[0]
    dist = k_reciprocal_distance(feats(t.query), feats(t.gallery), 4, 2, 0.3, "query_only")
    expected = evaluate(
        dist,
        [r.pid for r in t.query],
        [r.pid for r in t.gallery],
        [r.camid for r in t.query],
        [r.camid for r in t.gallery],
        "sysu",
        4,
    )
    _same(res.trials[0].result, expected)


def test_per_trial_embedders(dataset):
    trials = _trials(dataset, num_trials=2)
    a, b = CountingEmbedder(), CountingEmbedder()
    res = run_protocol(trials, {0: a, 1: b}, transform=to_tensor, progress=False)
    assert a.seen == len(trials[0].query) + len(trials[0].gallery)
    assert b.seen == len(trials[1].query) + len(trials[1].gallery)
    assert [t.index for t in res.trials] == [0, 1]
    with pytest.raises(ProtocolError, match=r"no embedder given for trial\(s\) \[1\]"):
        run_protocol(trials, {0: a}, transform=to_tensor, progress=False)


class ModuleEmbedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.modes = []

    def embed_images(self, images, modality):
        self.modes.append(self.training)
        return self.proj(images.mean((2, 3)))


def test_module_is_evaluated_in_eval_mode_and_restored(dataset):
    model = ModuleEmbedder().train()
    run_protocol(_trials(dataset, 1), model, transform=to_tensor, progress=False)
    assert model.modes and not any(model.modes)
    assert model.training


def test_bad_embedder_output_is_reported(dataset):
    class Logits:
        def embed_images(self, images, modality):
            return images.mean((1, 2, 3))  # (B,) instead of (B, D)

    with pytest.raises(ProtocolError, match=r"embed_images returned \(4,\) for a batch of 4"):
        run_protocol(_trials(dataset, 1), Logits(), transform=to_tensor, batch_size=4, progress=False)


def test_trials_must_agree(dataset):
    t0, t1 = _trials(dataset, 2)
    other = Trial("other", 1, t1.query, t1.gallery, "sysu", 4)
    with pytest.raises(ProtocolError, match="must share protocol_id"):
        run_protocol([t0, other], CountingEmbedder(), transform=to_tensor, progress=False)
    with pytest.raises(ProtocolError, match="no trials"):
        run_protocol([], CountingEmbedder(), transform=to_tensor, progress=False)


class PairTextEmbedder:
    """Text features from a lookup; pair features from the mean colours of the RGB and thermal images."""

    def __init__(self, table):
        self.table = table
        self.texts_seen = Counter()
        self.pairs_seen = 0

    def embed_texts(self, texts):
        self.texts_seen.update(texts)
        return torch.stack([self.table[t] for t in texts])

    def embed_pairs(self, rgb, thermal):
        self.pairs_seen += len(rgb)
        return torch.cat([rgb.mean((2, 3)), thermal.mean((1, 2, 3))[:, None]], dim=1)


def test_text_protocol_pairs_and_captions(dataset):
    vis = [r for r in dataset if r.modality is Modality.VISIBLE]
    ir = [r for r in dataset if r.modality is Modality.INFRARED]
    gallery = tuple(
        ImageRecord(path=v.path, pid=v.pid, camid=0, modality=Modality.VISIBLE, pair_path=t.path)
        for v, t in zip(vis, ir, strict=True)
    )
    captions = tuple(
        CaptionRecord(text=f"person {r.pid} view {i % 2}", pid=r.pid, pair_index=i) for i, r in enumerate(gallery)
    )
    rng = torch.Generator().manual_seed(0)
    table = {c.text: torch.rand(4, generator=rng) for c in captions}
    trial = Trial("text.t2rgbt", 0, captions, gallery, "text", 10)
    emb = PairTextEmbedder(table)
    res = run_protocol([trial], emb, transform=to_tensor, progress=False, batch_size=3)
    assert emb.pairs_seen == len(gallery) and set(emb.texts_seen.values()) == {1}
    assert res.metric_names == ("R1", "R5", "R10", "mAP", "mINP")

    pair_feats = []
    for g in gallery:
        rgb = to_tensor(Image.open(g.path).convert("RGB"))[None]
        th = to_tensor(Image.open(g.pair_path).convert("RGB"))[None]
        pair_feats.append(PairTextEmbedder(table).embed_pairs(rgb, th))
    gf = F.normalize(torch.cat(pair_feats), dim=1)
    qf = F.normalize(torch.stack([table[c.text] for c in captions]), dim=1)
    expected = evaluate_similarity(
        qf @ gf.T, [c.pid for c in captions], [g.pid for g in gallery], None, None, "text", 10
    )
    _same(res.trials[0].result, expected)
