"""DAKD: standardised multi-temperature KL, confidence masking, release switches, prototypes, the frozen
teacher, and a tiny teacher -> student run on a generated SYSU-MM01 tree."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dakd_runs import (
    PLAIN_SGD,
    TINY_DATA,
    TINY_TRAIN,
    ddp_worker,
    free_port,
    mce_cfg,
    save_random_teacher,
    student_cfg,
    textured_sysu,
)
from dakd_runs import TINY_MODEL as TINY_MODEL_KEYS
from vireid.config import load_config, to_dict
from vireid.data.batch import CrossModalBatch
from vireid.data.records import ImageRecord, Modality
from vireid.errors import ConfigError, DataError
from vireid.losses import logit_standardize
from vireid.methods.base import StepContext
from vireid.methods.dakd import (
    METHOD,
    DAKDConfig,
    KDConfig,
    MaskConfig,
    TeacherState,
    _finished_run,
    confidence_weights,
    distillation_terms,
    load_teacher,
    masked_reduce,
    multi_temperature_kl,
    teacher_confidence,
    teacher_stage_config,
)
from vireid.methods.identity_means import CA, IR, RGB, identity_mean_embeddings
from vireid.models.dakd_net import DAKDModelConfig, DAKDNet

TINY_MODEL = DAKDModelConfig(backbone="resnet18", width=8, pretrained="none", nl_layer2=[1], nl_layer3=[1])
TINY_MODEL_OVERRIDES = TINY_MODEL_KEYS

# ---------------------------------------------------------------------------------------------------------
# Plain references (float64, Python lists)
# ---------------------------------------------------------------------------------------------------------


def ref_standardize(row: list[float]) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))  # unbiased
    return [(v - mean) / (std + 1e-7) for v in row]


def ref_log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def ref_kl(student: list[float], teacher: list[float], temperature: float, standardize: bool = True) -> float:
    """T² KL(softmax(z(t)/T) || softmax(z(s)/T)) of one row."""
    s = ref_standardize(student) if standardize else student
    t = ref_standardize(teacher) if standardize else teacher
    log_p = ref_log_softmax([v / temperature for v in s])
    log_q = ref_log_softmax([v / temperature for v in t])
    return temperature**2 * sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


def ref_multi(student: torch.Tensor, teacher: torch.Tensor, temps, standardize=True) -> list[float]:
    return [
        sum(ref_kl(s, t, float(T), standardize) for T in temps)
        for s, t in zip(student.double().tolist(), teacher.double().tolist())
    ]


# ---------------------------------------------------------------------------------------------------------
# Standardisation and temperatures
# ---------------------------------------------------------------------------------------------------------


def test_standardisation_is_invariant_to_shift_and_positive_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g)
    shift = torch.randn(5, 1, generator=g) * 10
    scale = torch.rand(5, 1, generator=g) * 20 + 0.05
    assert torch.allclose(logit_standardize(x), logit_standardize(x * scale + shift), atol=1e-5)
    teacher = torch.randn(5, 7, generator=g)
    base = multi_temperature_kl(x, teacher, [2, 3, 4, 5, 6])
    moved = multi_temperature_kl(x * scale + shift, teacher * 3.0 - 4.0, [2, 3, 4, 5, 6])
    assert torch.allclose(base, moved, rtol=1e-4, atol=1e-6)
    # Without standardisation the scale matters (the invariance is the standardisation's doing).
    raw = multi_temperature_kl(x, teacher, [2], standardize=False)
    assert not torch.allclose(raw, multi_temperature_kl(x * 5.0, teacher, [2], standardize=False))
    # Golden row: [1, 2, 3] has mean 2 and unbiased std 1.
    assert logit_standardize(torch.tensor([[1.0, 2.0, 3.0]])).tolist()[0] == pytest.approx([-1, 0, 1], abs=1e-6)


@pytest.mark.parametrize("temperature", [2.0, 3.0, 4.0, 5.0, 6.0])
def test_kl_at_each_temperature_equals_a_direct_computation(temperature):
    g = torch.Generator().manual_seed(int(temperature))
    student, teacher = torch.randn(4, 9, generator=g) * 3, torch.randn(4, 9, generator=g)
    got = multi_temperature_kl(student, teacher, [temperature])
    assert got.tolist() == pytest.approx(ref_multi(student, teacher, [temperature]), rel=1e-4, abs=1e-5)
    got_raw = multi_temperature_kl(student, teacher, [temperature], standardize=False)
    want_raw = ref_multi(student, teacher, [temperature], standardize=False)
    assert got_raw.tolist() == pytest.approx(want_raw, rel=1e-4, abs=1e-5)


def test_multi_temperature_sum_is_the_sum_of_single_temperatures():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    total = multi_temperature_kl(s, t, [2, 3, 4, 5, 6])
    parts = sum(multi_temperature_kl(s, t, [T]) for T in [2, 3, 4, 5, 6])
    assert torch.allclose(total, parts, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Confidence masking
# ---------------------------------------------------------------------------------------------------------


def test_batch_median_mask_keeps_exactly_the_confident_samples():
    conf = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1, 0.6])
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    near = labels.clone()
    # np.percentile(conf, 50) = 0.55: keep 0.9, 0.7, 0.6.
    w = confidence_weights(conf, near, labels, MaskConfig())
    assert w.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert float(torch.quantile(conf, 0.5)) == pytest.approx(np.percentile(conf.numpy(), 50))
    # Ties at the median are kept.
    tied = confidence_weights(torch.tensor([0.5, 0.5, 0.5, 0.1]), near[:4], labels[:4], MaskConfig())
    assert tied.tolist() == [1.0, 1.0, 1.0, 0.0]
    # Other quantiles, the fixed threshold, no mask, the release's "le" direction.
    assert confidence_weights(conf, near, labels, MaskConfig(q=0.75)).tolist() == [1, 0, 0, 1, 0, 0]
    assert confidence_weights(conf, near, labels, MaskConfig(rule="threshold", tau=0.6)).tolist() == [1, 0, 0, 1, 0, 1]
    assert confidence_weights(conf, near, labels, MaskConfig(rule="none")).tolist() == [1.0] * 6
    low = confidence_weights(conf, near, labels, MaskConfig(keep="low"))
    assert low.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_require_correct_and_soft_weights():
    conf = torch.tensor([0.9, 0.8, 0.3, 0.2])
    labels = torch.tensor([1, 2, 3, 4])
    near = torch.tensor([1, 0, 3, 4])  # row 1: confident but wrong identity
    cfg = MaskConfig(require_correct=True, low_weight=0.25)
    assert confidence_weights(conf, near, labels, cfg).tolist() == [1.0, 0.25, 0.25, 0.25]


def test_masked_reductions_on_hand_made_inputs():
    losses = torch.tensor([1.0, 2.0, 3.0, 6.0])
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert float(masked_reduce(losses, mask)) == pytest.approx(2.0)  # mean over the selected samples
    assert float(masked_reduce(losses, mask, "scalar")) == pytest.approx(3.0 * 0.5)  # release: mean x mean(M)
    assert float(masked_reduce(losses, torch.zeros(4))) == 0.0  # nothing selected: 0, not NaN
    soft = torch.tensor([1.0, 0.5, 1.0, 0.5])
    assert float(masked_reduce(losses, soft)) == pytest.approx((1 + 1 + 3 + 3) / 3.0)


def test_teacher_confidence_is_the_max_softmax_probability():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]])
    conf, near = teacher_confidence(logits)
    assert conf.tolist() == pytest.approx([0.75, math.exp(2) / (1 + math.exp(2))])
    assert near.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------------------
# The two levels, default and release layouts
# ---------------------------------------------------------------------------------------------------------


def random_level_inputs(seed: int, rows_per_modality: int = 6, dim: int = 10, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    n = rows_per_modality
    student = torch.randn(2 * n, dim, generator=g) * 2
    teacher = F.normalize(torch.randn(2 * n, dim, generator=g), dim=1)
    labels = torch.randint(0, classes, (2 * n,), generator=g)
    modality = torch.tensor([1, 0] * n)  # interleaved: the loss must read the modality field
    prototypes = F.normalize(torch.randn(2, classes, dim, generator=g), dim=-1)
    return student, teacher, labels, modality, prototypes


def test_default_terms_equal_the_mean_over_confident_samples_per_modality():
    student, teacher, labels, modality, protos = random_level_inputs(0)
    kd, mask = KDConfig(), MaskConfig()
    terms = distillation_terms(student, teacher, labels, modality, protos, kd, mask)
    want_inst = want_cls = 0.0
    for m in (0, 1):
        rows = [i for i in range(len(labels)) if int(modality[i]) == m]
        s, t = student[rows], teacher[rows]
        a, b = s @ protos[m].t() / 0.05, t @ protos[m].t() / 0.05
        conf = F.softmax(b.double(), dim=1).max(dim=1).values.tolist()
        median = float(np.percentile(conf, 50))
        keep = [i for i, c in enumerate(conf) if c >= median]
        inst, cls = ref_multi(s, t, kd.temperatures), ref_multi(a, b, kd.temperatures)
        want_inst += sum(inst[i] for i in keep) / len(keep)
        want_cls += sum(cls[i] for i in keep) / len(keep)
    assert float(terms.inst) == pytest.approx(want_inst, rel=1e-4)
    assert float(terms.cls) == pytest.approx(want_cls, rel=1e-4)
    assert float(terms.kept["rgb"]) == pytest.approx(0.5) and float(terms.kept["ir"]) == pytest.approx(0.5)


def test_release_switches_reproduce_the_release_formula():
    """L_lvl = Σ_{T∈{3,4,5}} KL_T(rgb) + Σ_{T∈{2,6}} KL_T(ir) + ρ Σ_{T∈{2..6}} KL_T(ir), ρ = mean(c <= median),
    c from the raw T = 1 softmax of each level's IR teacher logits, every KL a batch mean."""
    student, teacher, labels, modality, protos = random_level_inputs(1)
    cfg = load_config("dakd/dakd_release")
    assert (cfg.mask.keep, cfg.mask.reduce, cfg.mask.source, cfg.mask.modalities) == (
        "low",
        "scalar",
        "own_level_raw",
        ["ir"],
    )
    assert cfg.kd.release_temperature_sets and cfg.cutswap.mode == "full_image"
    terms = distillation_terms(student, teacher, labels, modality, protos, cfg.kd, cfg.mask)

    def mean(values):
        return sum(values) / len(values)

    rgb = [i for i in range(len(labels)) if int(modality[i]) == 0]
    ir = [i for i in range(len(labels)) if int(modality[i]) == 1]
    expected = {}
    for level in ("inst", "cls"):
        sv, tv, si, ti = student[rgb], teacher[rgb], student[ir], teacher[ir]
        if level == "cls":
            sv, tv = sv @ protos[0].t() / 0.05, tv @ protos[0].t() / 0.05
            si, ti = si @ protos[1].t() / 0.05, ti @ protos[1].t() / 0.05
        conf = F.softmax(ti.double(), dim=1).max(dim=1).values.numpy()
        rho = float(np.mean(conf <= np.percentile(conf, 50)))
        value = sum(mean(ref_multi(sv, tv, [T])) for T in (3, 4, 5))
        value += sum(mean(ref_multi(si, ti, [T])) for T in (2, 6))
        value += rho * sum(mean(ref_multi(si, ti, [T])) for T in (2, 3, 4, 5, 6))
        expected[level] = value
    assert float(terms.inst) == pytest.approx(expected["inst"], rel=1e-4)
    assert float(terms.cls) == pytest.approx(expected["cls"], rel=1e-4)


def test_unmasked_modalities_are_averaged_and_the_terms_ignore_row_order():
    student, teacher, labels, modality, protos = random_level_inputs(2)
    kd = KDConfig(temperatures=[4.0])
    only_ir = distillation_terms(student, teacher, labels, modality, protos, kd, MaskConfig(modalities=["ir"]))
    rgb = torch.nonzero(modality == 0).flatten()
    ir = torch.nonzero(modality == 1).flatten()
    ir_only = distillation_terms(student[ir], teacher[ir], labels[ir], modality[ir], protos, kd, MaskConfig())
    rgb_plain = sum(ref_multi(student[rgb], teacher[rgb], [4.0])) / len(rgb)
    assert rgb_plain > 0
    assert float(only_ir.inst) == pytest.approx(float(ir_only.inst) + rgb_plain, rel=1e-4)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    shuffled = distillation_terms(student[perm], teacher[perm], labels[perm], modality[perm], protos, kd, MaskConfig())
    base = distillation_terms(student, teacher, labels, modality, protos, kd, MaskConfig())
    assert float(shuffled.inst) == pytest.approx(float(base.inst), rel=1e-5)
    assert float(shuffled.cls) == pytest.approx(float(base.cls), rel=1e-5)


def test_default_mask_gives_unselected_rows_exactly_zero_gradient():
    """Default mask (keep the confident half, per-sample reduction, low_weight 0): rows the mask drops get no
    gradient at either level; every kept row gets one. The selection is recomputed here from the definition."""
    student, teacher, labels, modality, protos = random_level_inputs(4)
    student.requires_grad_(True)
    terms = distillation_terms(student, teacher, labels, modality, protos, KDConfig(), MaskConfig())
    (terms.inst + terms.cls).backward()
    grad_norm = student.grad.abs().sum(dim=1)
    kept = torch.zeros(len(labels), dtype=torch.bool)
    for m in (0, 1):
        rows = torch.nonzero(modality == m).flatten()
        conf = F.softmax(teacher[rows].double() @ protos[m].double().t() / 0.05, dim=1).max(dim=1).values
        kept[rows] = torch.from_numpy(conf.numpy() >= np.percentile(conf.numpy(), 50))
    assert 0 < int(kept.sum()) < len(labels)
    assert torch.all(grad_norm[~kept] == 0.0)  # exactly zero, not merely small
    assert torch.all(grad_norm[kept] > 0.0)


def test_release_mask_gives_every_row_a_gradient():
    """dakd_release keeps every row (the mask only scales the IR terms by mean(mask)): no row is dropped."""
    cfg = load_config("dakd/dakd_release")
    student, teacher, labels, modality, protos = random_level_inputs(4)
    student.requires_grad_(True)
    terms = distillation_terms(student, teacher, labels, modality, protos, cfg.kd, cfg.mask)
    (terms.inst + terms.cls).backward()
    assert torch.all(student.grad.abs().sum(dim=1) > 0.0)


# ---------------------------------------------------------------------------------------------------------
# Prototypes
# ---------------------------------------------------------------------------------------------------------


class FakeSource:
    """What identity_mean_embeddings needs from the training dataset: record lists and ``load``."""

    def __init__(self, num_vis: int, num_ir: int, classes: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pixels: dict[tuple[int, int], np.ndarray] = {}
        self.visible, self.infrared = [], []
        for modality, count, target in (
            (Modality.VISIBLE, num_vis, self.visible),
            (Modality.INFRARED, num_ir, self.infrared),
        ):
            for i in range(count):
                target.append(
                    ImageRecord(
                        path=f"/x/{int(modality)}_{i}.jpg",
                        pid=100 + i % classes,
                        camid=1,
                        modality=modality,
                        label=i % classes,
                    )
                )
                self.pixels[(int(modality), i)] = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)

    def load(self, modality, index):
        return Image.fromarray(self.pixels[(int(modality), index)])


def test_prototypes_equal_the_per_identity_means_of_normalised_teacher_features():
    source = FakeSource(num_vis=11, num_ir=7, classes=3)
    weight = torch.randn(3 * 8 * 4, 5, generator=torch.Generator().manual_seed(0))

    def embed(images, modality):  # a deterministic "teacher", shifted per modality
        return images.flatten(1) @ weight + (0.5 if modality == 1 else 0.0)

    got = identity_mean_embeddings(embed, source, [RGB, IR], 3, batch_size=4)
    from torchvision import transforms as T

    to_tensor = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    for g, (records, modality) in enumerate(((source.visible, 0), (source.infrared, 1))):
        for k in range(3):
            feats = [
                F.normalize(embed(to_tensor(source.load(modality, i)).unsqueeze(0), modality), dim=1)[0]
                for i, r in enumerate(records)
                if r.label == k
            ]
            expected = F.normalize(torch.stack(feats).mean(0), dim=0)
            assert torch.allclose(got[g, k], expected, atol=1e-5)
    # The channel-exchanged group is seeded per image: the same seed gives the same means.
    ca1 = identity_mean_embeddings(embed, source, [CA], 3, batch_size=5, seed=3)
    ca2 = identity_mean_embeddings(embed, source, [CA], 3, batch_size=2, seed=3)
    assert torch.allclose(ca1, ca2, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Network and frozen teacher
# ---------------------------------------------------------------------------------------------------------


def test_per_modality_bn_forward_equals_separate_passes_in_input_order():
    torch.manual_seed(0)
    model = DAKDNet(TINY_MODEL, 0).train()
    images = torch.randn(6, 3, 32, 16)
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    out = model(images, modality, per_modality_bn=True)
    vis, ir = modality == 0, modality == 1
    ref_vis, ref_ir = model(images[vis], 0), model(images[ir], 1)
    assert torch.allclose(out.bn[vis], ref_vis.bn, atol=1e-5) and torch.allclose(out.bn[ir], ref_ir.bn, atol=1e-5)
    joint = model(images, modality)
    assert not torch.allclose(joint.bn, out.bn, atol=1e-4)  # joint statistics differ
    assert out.logits is None


def make_batch(n_draws: int, classes: int) -> CrossModalBatch:
    labels = torch.arange(n_draws) % classes
    draws = torch.arange(n_draws)
    return CrossModalBatch(
        images=torch.randn(2 * n_draws, 3, 32, 16),
        label=labels.repeat(2),
        modality=torch.tensor([0] * n_draws + [1] * n_draws),
        view=torch.zeros(2 * n_draws, dtype=torch.int64),
        pair_index=draws.repeat(2),
        slot=labels.repeat(2),
        inst=(draws // classes).repeat(2),
        camid=torch.ones(2 * n_draws, dtype=torch.int64),
    )


def trainer_with_teacher(tmp_path: Path, *overrides: str) -> SimpleNamespace:
    """The parts of a Trainer that DAKDMethod.on_train_start uses, with a random MCE teacher checkpoint; the
    method loads the teacher itself (``trainer.method_state["dakd"]``)."""
    folder = save_random_teacher(tmp_path / "teacher", seed=5)
    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, f"teacher={folder}", *overrides], method="dakd")
    torch.manual_seed(6)
    trainer = SimpleNamespace(
        cfg=cfg,
        model=METHOD.build_model(cfg, 3),
        dist=SimpleNamespace(device=torch.device("cpu")),
        logger=SimpleNamespace(print=lambda *a, **k: None),
        method_state={},
        run_dir=tmp_path / "run",
        teacher_folder=folder,
    )
    METHOD.on_train_start(trainer)
    state = trainer.method_state["dakd"]
    state.prototypes = F.normalize(torch.randn(2, 3, trainer.model.feature_dim), dim=-1)
    return trainer


def step_context(trainer) -> StepContext:
    extras = {"dakd": trainer.method_state["dakd"]}
    return StepContext(epoch=0, iteration=0, global_step=0, dist=None, cfg=trainer.cfg, extras=extras)


def test_the_methods_own_teacher_stays_frozen_through_a_training_step(tmp_path):
    """The teacher that on_train_start loads: no parameter trainable, eval mode even after the trainer puts
    the student in training mode, parameters and buffers bit-identical to its checkpoint after a step."""
    from vireid.engine.checkpoint import load_checkpoint

    trainer = trainer_with_teacher(tmp_path)
    teacher = trainer.method_state["dakd"].model
    saved = load_checkpoint(trainer.teacher_folder).state_dict  # read back from the file, not from the model
    student = trainer.model.train()  # what the trainer does at every epoch start
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    batch = make_batch(6, 3)
    batch.images = batch.images * 2.0 + 1.0  # away from the teacher's initial running statistics
    ctx = step_context(trainer)
    for _ in range(2):
        optimizer.zero_grad()
        loss = METHOD.loss(METHOD.forward(student, batch, ctx), batch, ctx)
        loss.total.backward()
        optimizer.step()
    assert set(loss.parts) >= {"inst", "cls", "mask_kept_rgb", "mask_kept_ir"}
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    state = teacher.state_dict()
    assert set(state) == set(saved)
    for key, value in state.items():
        assert torch.equal(value, saved[key]), key
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not any("teacher" in k for k in student.state_dict())  # the teacher stays out of the student


def test_the_teacher_receives_exactly_the_students_augmented_tensors(tmp_path):
    """Row for row, the teacher's network input is the tensor the student's network gets (the batch's
    augmented images, untouched by the student's forward), each through its own modality."""
    trainer = trainer_with_teacher(tmp_path)
    state = trainer.method_state["dakd"]
    student = trainer.model.train()
    seen: dict[str, list[tuple[torch.Tensor, int]]] = {"student": [], "teacher": []}
    student.stems.register_forward_pre_hook(
        lambda _m, args: seen["student"].append((args[0].detach().clone(), int(args[1])))
    )
    teacher_embed = state.embedder.embed_images

    def recording_embed(images, modality):
        seen["teacher"].append((images.detach().clone(), int(modality)))
        return teacher_embed(images, modality)

    state.embedder.embed_images = recording_embed
    batch = make_batch(6, 3).index_select(torch.randperm(12, generator=torch.Generator().manual_seed(0)))
    original = batch.images.clone()
    METHOD.forward(student, batch, step_context(trainer))
    for who in ("student", "teacher"):
        by_modality = {m: images for images, m in seen[who]}
        assert sorted(by_modality) == [0, 1] and len(seen[who]) == 2, who
        for m in (0, 1):
            assert torch.equal(by_modality[m], original[batch.modality == m]), (who, m)


# ---------------------------------------------------------------------------------------------------------
# Per-modality BatchNorm running statistics (student.bn: per_modality)
# ---------------------------------------------------------------------------------------------------------

BANK = "infrared_bn_stats."


def statistics_as_plain_network(model: DAKDNet, modality: int) -> DAKDNet:
    """A DAKDNet with one set of running statistics, those of ``modality`` in ``model``'s state dict: the
    reference that evaluates the way a network trained on that modality alone would."""
    state = model.state_dict()
    plain = {k: v for k, v in state.items() if not k.startswith(BANK)}
    if modality == 1:
        plain.update({k.removeprefix(BANK): v for k, v in state.items() if k.startswith(BANK)})
    reference = DAKDNet(TINY_MODEL, 0)
    reference.load_state_dict(plain, strict=True)
    return reference.eval()


def two_distribution_batch(n_draws: int = 4) -> CrossModalBatch:
    """``make_batch`` with visible and infrared images from clearly different distributions."""
    batch = make_batch(n_draws, 2)
    g = torch.Generator().manual_seed(7)
    vis = batch.modality == 0
    images = torch.randn(batch.images.shape, generator=g)
    batch.images = torch.where(vis[:, None, None, None], images * 1.5 + 2.0, images * 0.5 - 1.0)
    perm = torch.randperm(len(batch), generator=g)  # interleave: routing must read the modality field
    return batch.index_select(perm)


def test_per_modality_running_statistics_after_a_training_step():
    """One DAKD step under student.bn=per_modality: each modality's pass moves only its own running statistics
    (checked in closed form on the first BatchNorm layer), and eval normalises each modality with its own."""
    from vireid.methods.base import ImageEmbedder

    torch.manual_seed(2)
    cfg = DAKDConfig(model=TINY_MODEL)
    assert cfg.student.bn == "per_modality"
    student = METHOD.build_model(cfg, 3).train()
    assert student.modality_running_stats
    teacher = DAKDNet(TINY_MODEL, 0).eval().requires_grad_(False)
    state = TeacherState(teacher, ImageEmbedder(teacher), "mem", "mce", "self_kd")
    state.prototypes = F.normalize(torch.randn(2, 2, student.feature_dim), dim=-1)
    ctx = StepContext(epoch=0, iteration=0, global_step=0, dist=None, cfg=cfg, extras={"dakd": state})
    batch = two_distribution_batch()
    vis, ir = batch.modality == 0, batch.modality == 1
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():  # closed form for the stem's BatchNorm: 0.9 old + 0.1 batch moment of its modality
        stem_in = {m: student.stems.shared.conv1(batch.images[rows]) for m, rows in ((0, vis), (1, ir))}

    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    METHOD.loss(METHOD.forward(student, batch, ctx), batch, ctx).total.backward()
    optimizer.step()

    after = student.state_dict()
    for m, prefix in ((0, ""), (1, BANK)):
        x = stem_in[m]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
        key = f"{prefix}stems.shared.bn1"
        torch.testing.assert_close(after[f"{key}.running_mean"], 0.9 * before[f"{key}.running_mean"] + 0.1 * mean)
        torch.testing.assert_close(after[f"{key}.running_var"], 0.9 * before[f"{key}.running_var"] + 0.1 * var)
    # Every layer's two sets moved, once each (one pass per modality, one forward per step).
    for path in student._bn_paths:
        for prefix in ("", BANK):
            assert int(after[f"{prefix}{path}.num_batches_tracked"]) == 1, prefix + path
            assert not torch.equal(after[f"{prefix}{path}.running_mean"], before[f"{prefix}{path}.running_mean"])

    # A visible-only pass leaves the infrared statistics untouched, and the other way round.
    for only, untouched in ((0, BANK), (1, "")):
        snapshot = {k: v.clone() for k, v in student.state_dict().items()}
        rows = batch.modality == only
        student(batch.images[rows], batch.modality[rows], per_modality_bn=True)
        now = student.state_dict()
        for path in student._bn_paths:
            moved = ("" if untouched == BANK else BANK) + path
            assert torch.equal(now[f"{untouched}{path}.running_mean"], snapshot[f"{untouched}{path}.running_mean"])
            assert torch.equal(now[f"{untouched}{path}.running_var"], snapshot[f"{untouched}{path}.running_var"])
            assert not torch.equal(now[f"{moved}.running_mean"], snapshot[f"{moved}.running_mean"])

    # Eval: each modality with its own statistics, against plain networks holding only that modality's.
    student.eval()
    ref_vis, ref_ir = statistics_as_plain_network(student, 0), statistics_as_plain_network(student, 1)
    images = batch.images
    with torch.no_grad():
        got_vis, got_ir = student.extract(images[vis], 0), student.extract(images[ir], 1)
        torch.testing.assert_close(got_vis, ref_vis.extract(images[vis], 0))
        torch.testing.assert_close(got_ir, ref_ir.extract(images[ir], 1))
        assert (got_ir - ref_vis.extract(images[ir], 1)).abs().max() > 1e-2  # the sets really differ
        mixed = student.extract(images, batch.modality)  # a mixed batch: rows back in the input order
        torch.testing.assert_close(mixed[vis], got_vis)
        torch.testing.assert_close(mixed[ir], got_ir)
        embedded = ImageEmbedder(student).embed_images(images[ir], 1)  # what evaluation calls
        torch.testing.assert_close(embedded, got_ir)
    with pytest.raises(DataError, match="per modality"):
        student.extract(images, None)


def test_release_bn_setting_updates_one_set_of_running_statistics():
    cfg = load_config("dakd/dakd_release", TINY_MODEL_OVERRIDES)
    assert cfg.student.bn == "per_modality_batch"
    model = METHOD.build_model(cfg, 3).train()
    assert not model.modality_running_stats
    assert not any(k.startswith(BANK) for k in model.state_dict())
    batch = two_distribution_batch()
    model(batch.images, batch.modality, per_modality_bn=True)
    assert int(model.stems.shared.bn1.num_batches_tracked) == 2  # both passes update the same buffers


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_per_modality_statistics_survive_checkpoints_and_onnx_export(tmp_path):
    """The infrared statistics are saved and loaded (load_model) and used by the infrared ONNX graph."""
    import onnxruntime as ort

    from vireid.engine.checkpoint import save_checkpoint
    from vireid.engine.loading import load_model
    from vireid.export import export_onnx

    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "data.height=32", "data.width=16"], method="dakd")
    torch.manual_seed(3)
    model = METHOD.build_model(cfg, 0).train()
    batch = two_distribution_batch()
    with torch.no_grad():
        for _ in range(3):
            model(batch.images, batch.modality, per_modality_bn=True)
    meta = {"config": to_dict(cfg), "method": "dakd", "num_classes": 0}
    folder = save_checkpoint(tmp_path / "ckpt", model_state=model.state_dict(), meta=meta)
    loaded = load_model(folder, device="cpu").model
    saved = model.state_dict()
    assert any(k.startswith(BANK) for k in saved)
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())

    # The parity check is done below, against an independent reference instead of the exported module.
    report = export_onnx(folder, tmp_path / "onnx" / "model.onnx", modalities=["infrared"], check=False)
    (ir_graph,) = report.graphs
    images = batch.images[batch.modality == 1]
    got = ort.InferenceSession(str(ir_graph.path)).run(["features"], {"images": images.numpy()})[0]
    model.eval()
    with torch.no_grad():
        want = F.normalize(statistics_as_plain_network(model, 1).extract(images, 1), dim=1).numpy()
        visible_stats = F.normalize(statistics_as_plain_network(model, 0).extract(images, 1), dim=1).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - visible_stats).max() > 1e-2


def test_weights_with_one_set_of_statistics_fill_both_with_a_warning():
    torch.manual_seed(4)
    plain = DAKDNet(TINY_MODEL, 0).train()
    plain(torch.randn(4, 3, 32, 16) + 1.0, 0)  # running statistics away from their initial values
    model = DAKDNet(TINY_MODEL, 0, modality_running_stats=True)
    with pytest.warns(UserWarning, match="one set of BatchNorm running statistics"):
        model.load_state_dict(plain.state_dict(), strict=True)
    state = model.state_dict()
    for path in model._bn_paths:
        assert torch.equal(state[f"{BANK}{path}.running_mean"], state[f"{path}.running_mean"])
    images = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().extract(images, 1), plain.eval().extract(images, 1))


def test_student_has_a_classifier_only_with_the_ce_option():
    assert METHOD.build_model(DAKDConfig(model=TINY_MODEL), 5).classifier is None
    cfg = load_config(None, ["loss.ce=1.0", *TINY_MODEL_OVERRIDES], method="dakd")
    model = METHOD.build_model(cfg, 5)
    assert model.classifier is not None and model.classifier.bias is None


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"prototypes\.refresh_every"):
        METHOD.build_model(load_config(None, ["prototypes.refresh_every=5"], method="dakd"), 3)
    with pytest.raises(ConfigError, match=r"mask\.modalities"):
        METHOD.build_model(load_config(None, ["mask.modalities=[rgb, nir]"], method="dakd"), 3)
    with pytest.raises(ConfigError, match=r"kd\.temperatures"):
        METHOD.build_model(load_config(None, ["kd.temperatures=[]"], method="dakd"), 3)
    with pytest.raises(ConfigError, match=r"mask\.keep"):
        load_config(None, ["mask.keep=median"], method="dakd")


def test_teacher_stage_config_inherits_the_students_data_and_selection():
    cfg = load_config("dakd/regdb", ["data.root=/data/RegDB", "data.trial=4", "train.seed=3", "eval.selection=last"])
    teacher = teacher_stage_config(cfg, "mce")
    assert teacher.method == "mce" and teacher.sched.milestones == [31, 60]
    assert (teacher.data.root, teacher.data.trial, teacher.data.height, teacher.data.width) == (
        "/data/RegDB",
        4,
        288,
        144,
    )
    assert teacher.train.seed == 3 and teacher.eval.selection == "last"
    assert teacher.sampler.K == 5 and teacher.aug.preset == "caj" and teacher.cutswap.p == 0.0
    base = teacher_stage_config(load_config("dakd/sysu", ["teacher_run.overrides=[train.epochs=3]"]), "baseline")
    assert base.method == "baseline" and base.model.stems == "shared" and base.train.epochs == 3
    with pytest.raises(ConfigError, match="recipe"):
        teacher_stage_config(cfg, "idkl")


def test_dakd_configs_wire_region_cutswap_into_the_visible_stream_only():
    from vireid.data.transforms import build_train_views

    cfg = load_config("dakd/sysu")
    assert (cfg.cutswap.p, cfg.cutswap.mode) == (0.5, "region")
    views = build_train_views(cfg.aug, cfg.cutswap, 32, 16)
    names = [type(t).__name__ for t in views.visible[0].transforms]
    assert names[-2:] == ["CutSwap", "ChannelRandomErasing"] and views.visible[0].transforms[-2].mode == "region"
    assert all(type(t).__name__ != "CutSwap" for t in views.infrared[0].transforms)


# ---------------------------------------------------------------------------------------------------------
# End to end: teacher (MCE, nested run) -> student
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    return textured_sysu(tmp_path_factory.mktemp("sysu_dakd"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_teacher_then_student_end_to_end(sysu_root, tmp_path):
    from vireid.engine.checkpoint import load_checkpoint
    from vireid.engine.loading import load_model
    from vireid.engine.trainer import train

    short = ["train.epochs=1", "train.iters_per_epoch=2"]
    # The teacher inherits the student's data section; its recipe keeps its own model, sampler and length.
    teacher_overrides = [*TINY_MODEL_KEYS, *TINY_DATA[-2:], *TINY_TRAIN, *short]
    overrides = [f"data.root={sysu_root}", *TINY_MODEL_KEYS, *TINY_DATA, *TINY_TRAIN, *short]
    overrides.append(f"teacher_run.overrides={json.dumps(teacher_overrides)}")  # JSON is YAML: quoted items
    cfg = load_config("dakd/sysu", overrides)
    result = train(cfg, run_dir=tmp_path / "student")
    teacher_dir = tmp_path / "student" / "teacher"
    assert load_checkpoint(teacher_dir).meta["method"] == "mce"
    meta = load_checkpoint(result.run_dir).meta
    assert meta["extra"]["distillation"] == "self_kd" and meta["extra"]["teacher_method"] == "mce"
    assert meta["extra"]["teacher"].startswith(str(teacher_dir))
    student = load_checkpoint(result.run_dir).state_dict
    assert not any("teacher" in k for k in student)
    # student.bn=per_modality (default): the checkpoint holds both modalities' BatchNorm running statistics.
    assert set(student) == set(DAKDNet(TINY_MODEL, 0, modality_running_stats=True).state_dict())
    assert any(k.startswith("infrared_bn_stats.") for k in student)
    lm = load_model(result.run_dir, device="cpu")  # inference never builds the teacher
    assert isinstance(lm.model, DAKDNet) and lm.model.classifier is None
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) and "inst" in x and "cls" in x for x in lines if x["kind"] == "train")

    # A finished nested teacher is reused, not retrained, when the student runs again or resumes.
    assert _finished_run(teacher_dir, teacher_stage_config(cfg, "mce"))
    changed = load_config("dakd/sysu", [*overrides, "train.seed=5"])  # another seed: another teacher
    assert not _finished_run(teacher_dir, teacher_stage_config(changed, "mce"))


def test_a_teacher_of_another_architecture_is_labelled_kd(tmp_path):
    from vireid.engine.checkpoint import save_checkpoint
    from vireid.models.agw import AGWNet

    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "model.stems=per_modality"], method="baseline")
    teacher = AGWNet(cfg.model, 3)  # two modality stems: another architecture, same feature size
    folder = save_checkpoint(
        tmp_path / "ckpt",
        model_state=teacher.state_dict(),
        meta={"config": to_dict(cfg), "method": "baseline", "num_classes": 3},
    )
    student = DAKDNet(TINY_MODEL, 0)
    state = load_teacher(folder, student, "cpu")
    assert state.distillation == "kd" and state.method == "baseline"
    assert all(not p.requires_grad for p in state.model.parameters()) and not state.model.training
    same = DAKDNet(TINY_MODEL, 0, modality_running_stats=True)  # what a dakd config builds (student.bn)
    folder2 = save_checkpoint(
        tmp_path / "ckpt2",
        model_state=same.state_dict(),
        meta={"config": to_dict(DAKDConfig(model=TINY_MODEL)), "method": "dakd", "num_classes": 3},
    )
    assert load_teacher(folder2, student, "cpu").distillation == "self_kd"
    emb = state.embed(torch.randn(4, 3, 32, 16), torch.tensor([0, 1, 1, 0]))
    assert emb.shape == (4, student.feature_dim) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# A teacher given as a folder: student initialisation, and DDP equivalence
# ---------------------------------------------------------------------------------------------------------


def test_student_init_from_the_teacher_with_the_ce_option(tmp_path):
    folder = save_random_teacher(tmp_path / "teacher", seed=3)
    cfg = load_config(
        None, [*TINY_MODEL_OVERRIDES, f"teacher={folder}", "student.init=teacher", "loss.ce=0.5"], method="dakd"
    )
    torch.manual_seed(4)
    student = METHOD.build_model(cfg, 6)
    printed = []
    trainer = SimpleNamespace(
        cfg=cfg,
        model=student,
        dist=SimpleNamespace(device=torch.device("cpu")),
        logger=SimpleNamespace(print=lambda *a, **k: printed.append(" ".join(map(str, a)))),
        method_state={},
        run_dir=tmp_path / "run",
    )
    METHOD.on_train_start(trainer)
    state = trainer.method_state["dakd"]
    teacher_weights = state.model.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith("classifier."):
            continue
        # The MCE teacher has one set of BatchNorm running statistics: it starts both of the student's sets.
        assert torch.equal(value, teacher_weights[key.removeprefix("infrared_bn_stats.")]), key
    assert student.classifier is not None and state.distillation == "self_kd"
    assert "self_kd" in printed[-1] and not (tmp_path / "run" / "teacher").exists()
    assert METHOD.checkpoint_extra(trainer)["teacher"] == str(folder)
    bad = load_config(None, [*TINY_MODEL_OVERRIDES, f"teacher={tmp_path / 'nowhere'}"], method="dakd")
    with pytest.raises(ConfigError, match="neither a recipe"):
        METHOD.on_train_start(SimpleNamespace(**{**trainer.__dict__, "cfg": bad}))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_process_training_matches_one_process(sysu_root, tmp_path):
    """Two gloo processes against one, one step each of MCE and of the student (shared process start-up).

    MCE: sharded memory rebuild, loss and memory updates on the gathered batch. Student: per-modality BN
    passes, the teacher on each rank's shard, masks and losses on the gathered batch, sharded prototypes.
    """
    from vireid.engine.checkpoint import load_checkpoint, load_trainer_state
    from vireid.engine.trainer import train

    torch.set_num_threads(1)
    teacher = save_random_teacher(tmp_path / "teacher")
    train(mce_cfg(sysu_root, *PLAIN_SGD), run_dir=tmp_path / "mce", stop_after_iters=1)
    train(student_cfg(sysu_root, teacher, *PLAIN_SGD), run_dir=tmp_path / "student", stop_after_iters=1)
    args = (2, free_port(), str(sysu_root), str(teacher), str(tmp_path))
    torch.multiprocessing.spawn(ddp_worker, args=args, nprocs=2)
    for single_dir, ddp_dir in (("mce", "ddp_mce"), ("student", "ddp_student")):
        single = load_checkpoint(tmp_path / single_dir, prefer="last")
        ddp = load_checkpoint(tmp_path / ddp_dir, prefer="last")
        for key, value in single.state_dict.items():
            torch.testing.assert_close(value.float(), ddp.state_dict[key].float(), atol=2e-5, rtol=0, msg=key)
        state_a = load_trainer_state(single.path)["method_state"]
        state_b = load_trainer_state(ddp.path)["method_state"]
        if single_dir == "mce":
            a, b = state_a["memory"], state_b["memory"]
            torch.testing.assert_close(a["global_features"], b["global_features"], atol=2e-5, rtol=0)
            for key in ("rgb", "ir", "ca"):
                torch.testing.assert_close(a["features"][key], b["features"][key], atol=2e-5, rtol=0)
                torch.testing.assert_close(a["centres"][key], b["centres"][key], atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(state_a["prototypes"], state_b["prototypes"], atol=1e-6, rtol=0)
