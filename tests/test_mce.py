"""MCE (DAKD's teacher recipe): memory updates and losses against direct computations; resumable memories."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dakd_runs import mce_cfg, textured_sysu
from vireid.data.batch import CrossModalBatch
from vireid.methods.mce import (
    MCELossConfig,
    MCEMemory,
    global_centre_triplet,
    hard_momentum_update,
    mce_loss,
    mean_momentum_update,
    update_memories,
)

# ------------------------------------------------------------------------------------------------ helpers


def three_view_batch(labels: list[int]) -> CrossModalBatch:
    """Rows [RGB view 0 of every draw; CA (visible view 1); IR], draw k has identity labels[k]."""
    n = len(labels)
    label = torch.tensor(labels * 3)
    draws = torch.arange(n).repeat(3)
    return CrossModalBatch(
        images=torch.zeros(3 * n, 3, 4, 2),
        label=label,
        modality=torch.tensor([0] * (2 * n) + [1] * n),
        view=torch.tensor([0] * n + [1] * n + [0] * n),
        pair_index=draws,
        slot=draws,
        inst=torch.zeros(3 * n, dtype=torch.int64),
        camid=torch.ones(3 * n, dtype=torch.int64),
    )


def random_memory(num_classes: int, dim: int, seed: int) -> MCEMemory:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(3, num_classes, dim, generator=g), dim=-1)
    memory = MCEMemory.from_means(means, ["rgb", "ir", "ca"], epoch=0)
    # Let the step memories drift from the epoch-start snapshots, as after some updates.
    memory.global_features = F.normalize(memory.global_features + 0.3 * torch.randn(num_classes, dim, generator=g))
    for k in memory.features:
        memory.features[k] = F.normalize(memory.features[k] + 0.3 * torch.randn(num_classes, dim, generator=g))
    return memory


def ce(logits: list[float], target: int) -> float:
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(v - top) for v in logits)))


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------- memory updates


def test_hard_update_moves_towards_the_least_similar_row_of_each_identity():
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(5, 6, generator=g), dim=1)
    feats = F.normalize(torch.randn(9, 6, generator=g), dim=1)
    labels = torch.tensor([0, 2, 0, 3, 2, 0, 3, 3, 2])
    feats[5] = feats[2]  # a tie for identity 0's least similar row: the first row must win
    out = hard_momentum_update(memory, feats, labels, 0.1)
    for k in range(5):
        rows = [i for i in range(9) if int(labels[i]) == k]
        if not rows:
            assert torch.equal(out[k], memory[k])  # absent identities keep their memory
            continue
        sims = [dot(feats[i].tolist(), memory[k].tolist()) for i in rows]
        hard = rows[sims.index(min(sims))]
        expected = [0.1 * m + 0.9 * f for m, f in zip(memory[k].tolist(), feats[hard].tolist())]
        norm = math.sqrt(sum(v * v for v in expected))
        assert out[k].tolist() == pytest.approx([v / norm for v in expected], abs=1e-6)
    assert not torch.equal(out, memory)


def test_mean_update_moves_towards_the_batch_mean_of_each_identity():
    g = torch.Generator().manual_seed(1)
    memory = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    feats = torch.randn(6, 3, generator=g)
    labels = torch.tensor([1, 1, 3, 1, 3, 3])
    before = memory.clone()
    out = mean_momentum_update(memory, feats, labels, 0.25)
    assert torch.equal(memory, before)  # a new tensor, the input is untouched
    for k in range(4):
        rows = [feats[i].tolist() for i in range(6) if int(labels[i]) == k]
        if not rows:
            assert torch.equal(out[k], memory[k])
            continue
        mean = [sum(col) / len(rows) for col in zip(*rows)]
        expected = [0.25 * m + 0.75 * f for m, f in zip(memory[k].tolist(), mean)]
        norm = math.sqrt(sum(v * v for v in expected))
        assert out[k].tolist() == pytest.approx([v / norm for v in expected], abs=1e-6)


def test_update_memories_replaces_step_features_and_keeps_the_epoch_snapshots():
    memory = random_memory(4, 5, seed=2)
    batch = three_view_batch([0, 0, 2, 2])
    feats = F.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(3)), dim=1)
    snapshot = {k: v.clone() for k, v in memory.centres.items()}
    old_rgb, old_ir, old_ca = (memory.features[k].clone() for k in ("rgb", "ir", "ca"))
    old_global = memory.global_features.clone()
    cfg = MCELossConfig()
    update_memories(memory, feats, batch, cfg)
    rgb, ca, ir = torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12)
    label = batch.label
    assert torch.allclose(memory.features["rgb"], mean_momentum_update(old_rgb, feats[rgb], label[rgb], 0.25))
    assert torch.allclose(memory.features["ca"], mean_momentum_update(old_ca, feats[ca], label[ca], 0.25))
    assert torch.allclose(memory.features["ir"], mean_momentum_update(old_ir, feats[ir], label[ir], 0.25))
    assert torch.allclose(memory.global_features, hard_momentum_update(old_global, feats, label, 0.1))
    for k, v in snapshot.items():
        assert torch.equal(memory.centres[k], v)


def test_memories_from_means_average_without_renormalising_and_round_trip_weights_only():
    means = F.normalize(torch.randn(3, 4, 6), dim=-1)
    memory = MCEMemory.from_means(means, ["rgb", "ir", "ca"], epoch=7)
    assert torch.allclose(memory.global_features, (means[0] + means[1] + means[2]) / 3)
    assert memory.global_features.norm(dim=1).max() < 1.0 + 1e-6  # not renormalised
    buffer = io.BytesIO()
    torch.save(memory.state(), buffer)
    buffer.seek(0)
    restored = MCEMemory.from_state(torch.load(buffer, weights_only=True))
    assert restored.epoch == 7
    assert torch.equal(restored.global_centres, memory.global_centres)
    assert all(torch.equal(restored.features[k], memory.features[k]) for k in memory.features)


# ------------------------------------------------------------------------------------------------- losses


def reference_mce(feats: torch.Tensor, labels: list[int], memory: MCEMemory, cfg: MCELossConfig) -> dict[str, float]:
    """Direct per-row computation on the row layout of ``three_view_batch`` (n draws, [RGB; CA; IR])."""
    f = feats.double().tolist()
    n = len(labels) // 3
    y = labels
    tau = cfg.temperature
    mg = memory.global_features.double().tolist()
    gc_centres = memory.global_centres.double().tolist()
    feat_mem = {k: v.double().tolist() for k, v in memory.features.items()}
    cent = {k: v.double().tolist() for k, v in memory.centres.items()}

    def dist(a, c):
        return math.sqrt(max(dot(a, a) + dot(c, c) - 2 * dot(a, c), 1e-12))

    gc = []
    for i in range(3 * n):
        pos = dist(f[i], gc_centres[y[i]])
        neg = min(dist(f[i], gc_centres[y[j]]) for j in range(3 * n) if y[j] != y[i])
        gc.append(max(0.0, pos - neg + cfg.gc_margin))
    mem = [ce([dot(f[i], m) / tau for m in mg], y[i]) for i in range(3 * n)]
    rgb, ca, ir = range(0, n), range(n, 2 * n), range(2 * n, 3 * n)

    def mean_ce(rows, name):
        return sum(ce([dot(f[i], m) / tau for m in feat_mem[name]], y[i]) for i in rows) / n

    sid = mean_ce(rgb, "rgb") + mean_ce(ir, "ir") + cfg.caid * mean_ce(ca, "ca")

    def kl_row(z_src, z_centres, q_src, q_centres):
        z = [dot(z_src, c) / tau for c in z_centres]
        q = [dot(q_src, c) / tau for c in q_centres]
        zt, qt = max(z), max(q)
        log_p = [v - zt - math.log(sum(math.exp(u - zt) for u in z)) for v in z]
        log_q = [v - qt - math.log(sum(math.exp(u - qt) for u in q)) for v in q]
        return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))

    kl = []
    for k in range(n):  # draw k: RGB row k, CA row n+k, IR row 2n+k
        kl.append(kl_row(f[k], cent["rgb"], f[2 * n + k], cent["rgb"]))
        kl.append(kl_row(f[2 * n + k], cent["ir"], f[k], cent["ir"]))
        kl.append(kl_row(f[n + k], cent["ca"], f[n + k], cent["ir"]))
    return {
        "gc": cfg.gc * sum(gc) / len(gc),
        "mem": cfg.mem * sum(mem) / len(mem),
        "sid": cfg.sid * sid,
        "kl": cfg.kl * sum(kl) / len(kl),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_mce_loss_equals_a_direct_computation_and_ignores_row_order(seed):
    labels = [0, 0, 1, 3, 3, 1]
    batch = three_view_batch(labels)
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(len(batch), 8, generator=g), dim=1)
    memory = random_memory(5, 8, seed=seed + 10)
    cfg = MCELossConfig()
    total, parts = mce_loss(feats, batch, memory, cfg)
    expected = reference_mce(feats, batch.label.tolist(), memory, cfg)
    for key, value in expected.items():
        assert float(parts[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert float(total) == pytest.approx(sum(expected.values()), rel=1e-5)
    # Pairing comes from the batch's fields: shuffling the rows changes nothing.
    perm = torch.randperm(len(batch), generator=g)
    total_perm, _ = mce_loss(feats[perm], batch.index_select(perm), memory, cfg)
    assert float(total_perm) == pytest.approx(float(total), rel=1e-6)


def test_global_centre_triplet_golden_values():
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1])
    # Row 0: d+ = 0 (1e-6 after the clamp), d- = sqrt(2). Row 1: d+ = |(0.6,-0.2)| , d- = |(-0.4, 0.8)|.
    row1 = max(0.0, math.sqrt(0.36 + 0.04) - math.sqrt(0.16 + 0.64) + 0.3)
    expected = (max(0.0, 1e-6 - math.sqrt(2) + 0.3) + row1) / 2
    assert float(global_centre_triplet(feats, labels, centres, 0.3)) == pytest.approx(expected, abs=1e-6)


def reference_kl_with_constant_targets(feats: torch.Tensor, n: int, memory: MCEMemory, tau: float) -> torch.Tensor:
    """L_kl on the ``three_view_batch`` layout with every target Q built from a *constant* copy of the
    features (a leaf without gradient), so only the Z side can pass a gradient to ``feats``."""
    const = feats.detach().clone()
    c = memory.centres
    rgb, ca, ir = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    z = torch.cat([feats[rgb] @ c["rgb"].t(), feats[ir] @ c["ir"].t(), feats[ca] @ c["ca"].t()]) / tau
    q = torch.cat([const[ir] @ c["rgb"].t(), const[rgb] @ c["ir"].t(), const[ca] @ c["ir"].t()]) / tau
    log_p, log_q = F.log_softmax(z, dim=1), F.log_softmax(q, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def test_kl_gradient_flows_only_through_the_student_side():
    """The gradient of L_kl on the features equals that of a run whose targets Q are constants."""
    labels = [0, 1, 1]
    batch = three_view_batch(labels)
    g = torch.Generator().manual_seed(5)
    base = F.normalize(torch.randn(len(batch), 6, generator=g), dim=1)
    memory = random_memory(2, 6, seed=5)
    cfg = MCELossConfig(gc=0.0, mem=0.0, sid=0.0, kl=1.0)
    feats = base.clone().requires_grad_(True)
    total, _ = mce_loss(feats, batch, memory, cfg)
    total.backward()
    reference = base.clone().requires_grad_(True)
    want = reference_kl_with_constant_targets(reference, len(labels), memory, cfg.temperature)
    want.backward()
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    assert reference.grad.abs().sum() > 0
    torch.testing.assert_close(feats.grad, reference.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    return textured_sysu(tmp_path_factory.mktemp("sysu_mce"))


def checkpoint_state(run: Path):
    """(weights, MCE memory state) of the last checkpoint of a run."""
    from vireid.engine.checkpoint import load_checkpoint, load_trainer_state

    last = load_checkpoint(run, prefer="last")
    return last.state_dict, load_trainer_state(last.path)["method_state"]["memory"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mce_training_resumes_mid_epoch_with_the_updated_memories(sysu_root, tmp_path):
    from vireid.engine.trainer import train

    cfg = mce_cfg(sysu_root, "train.epochs=1", "train.iters_per_epoch=4")
    # Both runs stop after step 3 (inside the epoch), so both leave a resumable checkpoint to compare.
    whole = train(cfg, run_dir=tmp_path / "whole", stop_after_iters=3)
    part = train(cfg, run_dir=tmp_path / "part", stop_after_iters=2)
    assert part.interrupted
    _, memory_mid = checkpoint_state(tmp_path / "part")
    assert memory_mid["epoch"] == 0
    resumed = train(cfg, resume=tmp_path / "part", stop_after_iters=3)
    assert resumed.global_step == whole.global_step == 3
    weights_a, memory_a = checkpoint_state(tmp_path / "whole")
    weights_b, memory_b = checkpoint_state(tmp_path / "part")
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for key in ("rgb", "ir", "ca"):
        assert torch.equal(memory_a["features"][key], memory_b["features"][key])
        assert torch.equal(memory_a["centres"][key], memory_b["centres"][key])
    assert torch.equal(memory_a["global_features"], memory_b["global_features"])
    # The step updates moved the memories away from the epoch-start snapshot.
    assert not torch.allclose(memory_a["global_features"], memory_a["global_centres"])
