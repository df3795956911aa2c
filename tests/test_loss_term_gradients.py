"""benchmarks/loss_term_gradients.py: per-term gradients on the retrieval path (issue 15 item 5's tool)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from layout_builders import build_sysu
from vireid.config import load_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_term_gradients.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("loss_term_gradients", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["loss_term_gradients"] = module  # dataclasses look their module up while the script runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("loss_term_gradients", None)


def test_term_gradients_are_the_hand_derivatives_and_add_up_to_the_total(tool):
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    v = torch.tensor([0.5, 4.0], requires_grad=True)
    x = torch.tensor([2.0, 1.0, -1.0])
    terms = {"linear": (w * x).sum(), "square": (w**2).sum() + 3 * v.sum(), "constant": torch.tensor(7.0)}
    total = terms["linear"] + terms["square"] + terms["constant"]
    grads, grad_total = tool.term_gradients(terms, total, [w, v])
    # d/dw (w.x) = x, d/dv = 0; d/dw |w|^2 = 2w, d/dv 3 sum(v) = 3; a constant has no gradient at all
    assert grads["linear"].tolist() == [2.0, 1.0, -1.0, 0.0, 0.0]
    assert grads["square"].tolist() == [2.0, -4.0, 6.0, 3.0, 3.0]
    assert grads["constant"].tolist() == [0.0] * 5
    torch.testing.assert_close(sum(grads.values()), grad_total, rtol=0, atol=0)

    # Cosines and shares over two "batches": the first term is orthogonal in batch 1, parallel in batch 2.
    batches = [{"a": (1.0, torch.tensor([1.0, 0.0])), "b": (2.0, torch.tensor([0.0, 3.0]))}] * 2
    rows = {r.name: r for r in tool.summarise(batches, [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])])}
    assert rows["a"].cosine_with_total == 0.0 and rows["b"].cosine_with_total == 1.0
    assert rows["a"].share == pytest.approx(0.25) and rows["b"].share == pytest.approx(0.75)
    assert rows["b"].value == 2.0 and rows["b"].grad_norm == 3.0


TRAIN = [
    "data.height=32", "data.width=16", "data.workers=0", "model.backbone=resnet18", "model.width=8",
    "model.pretrained=none", "sampler.P=2", "sampler.K=2", "sampler.epoch_length=2", "train.epochs=1",
    "train.progress=false", "eval.selection=last", "tgsa.regime=force",
]  # fmt: skip
SHARED_ONLY = [
    "loss.specific.id_weight=0", "loss.specific.modality_weight=0", "loss.triplet.weight_sp=0",
    "purifier.enabled=false", "tgsa.enabled=false", "csa.per_sample=false", "csa.per_identity=false",
    "confusion.weight=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def idkl_runs(tmp_path_factory):
    from vireid.engine.trainer import train

    tmp = tmp_path_factory.mktemp("runs")
    ids = list(range(1, 10))
    folders = {(cam, pid): 3 for pid in ids for cam in range(1, 7)}
    root = build_sysu(tmp / "sysu", folders, ids[:6], ids[6:7], ids[7:])
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in (("full", []), ("shared", SHARED_ONLY)):
            cfg = load_config("idkl/sysu", [f"data.root={root}", *TRAIN, *extra])
            runs[name] = train(cfg, run_dir=tmp / name).run_dir
    return runs


def test_idkl_retrieval_path_is_the_shared_branch_and_switched_off_terms_give_it_nothing(tool, idkl_runs):
    rows, facts = tool.measure(idkl_runs["shared"], batches=2)
    by_name = {r.name: r for r in rows}
    # The shared-only rung: the specific branch's terms have weight 0, so exactly no gradient reaches the path.
    for name in ("tri_sp", "id_sp", "modality_sp"):
        assert by_name[name].value == 0.0 and by_name[name].grad_norm == 0.0
    assert by_name["id"].grad_norm > 0 and by_name["tri_sh"].grad_norm > 0
    assert sum(r.share for r in rows) == pytest.approx(1.0)

    full, _ = tool.measure(idkl_runs["full"], batches=2)
    full = {r.name: r for r in full}
    # The specific branch forks after layer2: its identity loss reaches the shared stem and layers 1-2.
    assert full["id_sp"].grad_norm > 0 and {"tgsa", "csa_sample", "confusion"} <= set(full)

    from vireid.engine.loading import load_model

    model = load_model(idkl_runs["full"], device="cpu").model
    batch = type("B", (), {"images": torch.randn(4, 3, 32, 16), "modality": torch.tensor([0, 0, 1, 1])})()
    names = tool.retrieval_parameters(model, batch, "bn")
    assert len(names) == facts["retrieval_parameters"]
    assert any(n.startswith("branch_sh.layer4") for n in names) and "bn_sh.weight" in names
    assert not any(n.startswith(("branch_sp", "bn_sp", "classifier", "purifier", "discriminator")) for n in names)


def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tool, tmp_path):
    with pytest.raises(SystemExit, match="is not a vireid run folder"):
        tool.measure(tmp_path)


def test_dakd_student_and_mce_teacher_are_measured_with_their_per_run_state(tool, tmp_path):
    """DAKD needs its frozen teacher (run start) and prototypes (epoch start), MCE its memories (epoch start)."""
    from dakd_runs import mce_cfg, student_cfg, textured_sysu
    from vireid.engine.trainer import train

    root = textured_sysu(tmp_path / "sysu")
    steps = ["train.epochs=1", "train.iters_per_epoch=2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = train(mce_cfg(root, *steps), run_dir=tmp_path / "teacher").run_dir
        student = train(student_cfg(root, teacher, *steps), run_dir=tmp_path / "student").run_dir
        rows, facts = tool.measure(student, batches=2)
        teacher_rows, _ = tool.measure(teacher, batches=1)
    assert facts["method"] == "dakd" and [r.name for r in rows] == ["inst", "cls"]
    assert all(r.grad_norm > 0 for r in rows) and sum(r.share for r in rows) == pytest.approx(1.0)
    assert {"mem", "sid"} <= {r.name for r in teacher_rows}
