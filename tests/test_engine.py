"""Training engine: exact resume, checkpoint format, DDP equivalence, and clear failures."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch

from fault_injection import poison_baseline_loss
from layout_builders import build_sysu
from vireid.config import load_config
from vireid.engine.checkpoint import STATE_FILE, load_checkpoint, load_trainer_state, resolve_checkpoint
from vireid.engine.trainer import Trainer, train
from vireid.errors import CheckpointError, ConfigError, TrainingError

TINY = [
    "data.height=32",
    "data.width=16",
    "data.workers=0",
    "model.backbone=resnet18",
    "model.width=8",
    "model.pretrained=none",
    "model.non_local=false",
    "sampler.P=4",
    "sampler.K=2",
    "train.iters_per_epoch=3",
    "train.progress=false",
    "train.log_every=1",
    "eval.selection=last",
    "optim.lr=0.05",
]


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sysu")
    ids = list(range(1, 11))
    folders = {(cam, pid): 3 for pid in ids for cam in range(1, 7)}
    return build_sysu(root, folders, ids[:6], ids[6:8], ids[8:])


def tiny_cfg(root: Path, out: Path, *extra: str):
    return load_config("baseline/sysu", [f"data.root={root}", f"train.out_dir={out}", *TINY, *extra])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir, prefer="last").state_dict


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize(("stop_at", "extra"), [(4, ()), (3, ()), (2, ("aug.preset=caj", "data.workers=2"))])
def test_resume_continues_exactly(sysu_root, tmp_path, stop_at, extra):
    """Stop mid-epoch (or at an epoch boundary), resume, and get bit-identical weights."""
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=2", *extra)
    full = train(cfg, run_dir=tmp_path / "full")
    assert full.global_step == 6 and not full.interrupted

    part = train(cfg, run_dir=tmp_path / "part", stop_after_iters=stop_at)
    assert part.interrupted and part.global_step == stop_at
    resumed = train(cfg, run_dir=tmp_path / "part", resume=tmp_path / "part")
    assert resumed.global_step == 6 and not resumed.interrupted
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    # The metrics log of the resumed run has every step exactly once.
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(s for s in steps) == list(range(1, 7))


def test_checkpoint_layout_and_weights_only_state(sysu_root, tmp_path):
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=1")
    result = train(cfg, run_dir=tmp_path / "run")
    last = result.last_checkpoint
    assert sorted(p.name for p in last.iterdir()) == ["meta.json", "model.safetensors", STATE_FILE]
    # weights_only=True: no pickled modules or numpy objects in the trainer state.
    state = torch.load(last / STATE_FILE, weights_only=True)
    assert {"optimizer", "scheduler", "rng", "epoch", "iteration", "global_step"} <= set(state)
    assert state["epoch"] == 1 and state["iteration"] == 0 and state["global_step"] == 3
    meta = json.loads((last / "meta.json").read_text())
    assert meta["method"] == "baseline" and meta["num_classes"] == 8 and meta["selection"] == "last"
    assert meta["config"]["train"]["epochs"] == 1
    # A run folder resolves to its best checkpoint, which carries weights only.
    best = resolve_checkpoint(tmp_path / "run")
    assert best.name == "best" and not (best / STATE_FILE).exists()
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_trainer_state(best)
    assert_same_weights(load_checkpoint(best).state_dict, load_checkpoint(last).state_dict)


def test_resume_refuses_changed_config(sysu_root, tmp_path):
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=2")
    train(cfg, run_dir=tmp_path / "run", stop_after_iters=2)
    changed = tiny_cfg(sysu_root, tmp_path, "train.epochs=2", "optim.lr=0.01")
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.05 -> 0\.01"):
        Trainer(changed, resume=tmp_path / "run")
    result = train(changed, resume=tmp_path / "run", allow_config_change=True)
    assert result.global_step == 6


def test_existing_run_folder_is_not_overwritten(sysu_root, tmp_path):
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=1")
    train(cfg, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(cfg, run_dir=tmp_path / "run")


def test_nan_loss_stops_with_step_and_hint(sysu_root, tmp_path, monkeypatch):
    poison_baseline_loss(monkeypatch, at_step=1)
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=1")
    with pytest.raises(TrainingError, match=r"became nan at epoch 1, iteration 1 \(global step 1\).*grad_clip"):
        train(cfg, run_dir=tmp_path / "run")


def test_failed_checkpoint_write_keeps_previous(sysu_root, tmp_path, monkeypatch):
    """A full disk while writing a checkpoint leaves the previous checkpoint and pointer intact."""
    import safetensors.torch

    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=2")
    run = tmp_path / "run"
    train(cfg, run_dir=run, stop_after_iters=3)  # writes the epoch-1 checkpoint
    before = resolve_checkpoint(run, prefer="last")
    weights_before = load_checkpoint(before).state_dict

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, run_dir=run, resume=run)
    assert resolve_checkpoint(run, prefer="last") == before
    assert_same_weights(load_checkpoint(before).state_dict, weights_before)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_test_split_selection_needs_explicit_permission(sysu_root, tmp_path):
    cfg = tiny_cfg(sysu_root, tmp_path, "eval.selection=test")
    with pytest.raises(ConfigError, match="allow_test_selection"):
        Trainer(cfg, run_dir=tmp_path / "run")


def test_wrong_data_root_is_a_clear_error(tmp_path):
    from vireid.errors import DataError

    cfg = tiny_cfg(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        train(cfg, run_dir=tmp_path / "run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cfg = tiny_cfg(Path(root), Path(out), "train.epochs=1", "aug.preset=caj")
    train(cfg, run_dir=Path(out) / "ddp")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(sysu_root, tmp_path):
    """gloo on the CPU, SyncBN, losses on the gathered global batch: the same weights as one process."""
    torch.set_num_threads(1)
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=1", "aug.preset=caj")
    train(cfg, run_dir=tmp_path / "single")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(sysu_root), str(tmp_path)), nprocs=2, join=True)
    assert_same_weights(final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp"), atol=2e-5)


def test_validation_selection_picks_best_checkpoint(sysu_root, tmp_path):
    """eval.selection=val evaluates the held-out val identities and keeps the best checkpoint, labelled val."""
    cfg = tiny_cfg(sysu_root, tmp_path, "train.epochs=2", "eval.selection=val", "eval.every=1")
    result = train(cfg, run_dir=tmp_path / "run")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["split"] == "val" and 0.0 <= h["rank1"] <= 100.0 for h in result.history)
    best = load_checkpoint(tmp_path / "run")
    assert best.meta["selection"] == "val"
    assert best.meta["num_classes"] == 6  # train ids only: the 2 val ids are held out
    assert best.meta["metrics"]["mAP"] == max(h["mAP"] for h in result.history)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines].count("val") == 2


def test_regdb_trial_checkpoints_are_reported_together(tmp_path):
    """RegDB trains one model per trial; `vireid test a b` scores trial k with the model of trial k only."""
    from rich.console import Console

    from vireid.data.synthetic import SynthOptions, write_layout
    from vireid.engine.testing import test_checkpoint as run_test  # renamed: not a pytest test
    from vireid.errors import ProtocolError

    root = tmp_path / "RegDB"
    write_layout("regdb", root, SynthOptions(num_ids=8, seed=1, size=(32, 16), images_per_camera=(2, 2)))
    runs = {}
    for trial, seed in ((2, 0), (1, 7)):
        run_keys = [f"data.trial={trial}", f"train.seed={seed}", "train.epochs=1", "train.iters_per_epoch=1"]
        cfg = load_config("baseline/regdb", [f"data.root={root}", *TINY, *run_keys, "sampler.P=2"])
        runs[trial] = train(cfg, run_dir=tmp_path / f"trial{trial}").run_dir
    quiet = Console(record=True)
    alone = {t: run_test(runs[t], protocols=["regdb.v2t"], out=tmp_path / f"t{t}", console=quiet)[0] for t in runs}
    (both,) = run_test([runs[2], runs[1]], protocols=["regdb.v2t"], out=tmp_path / "both", console=quiet)
    assert [t.index for t in both.trials] == [2, 1] and both.metadata["num_trials"] == 2
    for t in both.trials:  # each trial scored by its own model, exactly as when tested alone
        assert t.result.mAP == alone[t.index].trials[0].result.mAP
        assert list(t.result.cmc) == list(alone[t.index].trials[0].result.cmc)
    assert [Path(p).parent.parent for p in both.metadata["checkpoint"]] == [runs[2], runs[1]]
    with pytest.raises(ProtocolError, match="both trained on RegDB trial 1"):
        run_test([runs[1], runs[1]], protocols=["regdb.v2t"], out=tmp_path / "dup", console=quiet)
