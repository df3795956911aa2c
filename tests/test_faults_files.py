"""Faults around files, folders, runs and checkpoints (docs/reliability.md, "Files, checkpoints and runs").

Each case is a command or call, the expected exit code or error, the key words of its one-line message, and
a check that nothing the user already had was lost. Read-only disks are simulated by monkeypatching the
write (the tests may run as root, where ``chmod`` stops nothing) or with a path under ``/proc``; a kill -9
is a real ``SIGKILL`` of a child process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import vireid
from deploy_fixtures import save_tiny_agw, write_gallery
from layout_builders import build_sysu
from vireid.cli import main
from vireid.config import load_config
from vireid.engine.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    load_trainer_state,
    nonfinite_tensors,
    resolve_checkpoint,
    save_checkpoint,
)
from vireid.engine.trainer import Trainer, train
from vireid.errors import CheckpointError, RunInUseError, StorageError, TrainingError
from vireid.files import LOCK_FILE, OWNER_FILE, TEMP_FILE, folder_kind

SRC = str(Path(vireid.__file__).resolve().parents[1])
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
    "train.epochs=1",
    "train.progress=false",
    "eval.selection=last",
    "optim.lr=0.05",
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sysu")
    ids = list(range(1, 11))
    return build_sysu(root, {(cam, pid): 3 for pid in ids for cam in range(1, 7)}, ids[:6], ids[6:8], ids[8:])


def tiny_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"train.out_dir={out}", *TINY, *extra]


def tiny_cfg(root: Path, out: Path, *extra: str):
    return load_config("baseline/sysu", tiny_overrides(root, out, *extra))


@pytest.fixture(scope="module")
def finished_run(sysu_root, tmp_path_factory) -> Path:
    """A finished 3-step run: checkpoints/s00000003 (resumable), best/, last.json, best.json."""
    out = tmp_path_factory.mktemp("runs")
    train(tiny_cfg(sysu_root, out), run_dir=out / "run")
    return out / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_agw(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    write_gallery(root, (1, 2), per_id=2)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (to show that nothing was changed or lost).

    The run lock file is left out: it is vireid's own and names whichever process held the run last."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def child(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, **kwargs)


# ------------------------------------------------------------------------ folders vireid did not create


def test_index_refuses_a_user_folder_that_holds_an_index_json(tiny_ckpt, gallery, tmp_path, capsys):
    """Before: any folder with a file named index.json was replaced (a web project lost src/app.js)."""
    project = tmp_path / "webapp"
    (project / "src").mkdir(parents=True)
    (project / "index.json").write_text('{"name": "webapp"}')
    (project / "src" / "app.js").write_text("console.log('mine')")
    before = snapshot(project)
    code, err = run_cli(["index", str(tiny_ckpt), "--images", str(gallery), "-o", str(project)], capsys)
    assert_one_line_error(code, err, str(project), "not created by vireid", "refusing to replace")
    assert snapshot(project) == before


def test_index_replaces_its_own_index_but_not_files_added_to_it(tiny_ckpt, gallery, tmp_path, capsys):
    out = tmp_path / "g.vidx"
    argv = ["index", str(tiny_ckpt), "--images", str(gallery), "-o", str(out)]
    assert main(argv) == 0 and folder_kind(out) == "index"
    assert main(argv) == 0  # HANDLED: an index vireid wrote is replaced atomically
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    capsys.readouterr()
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "notes.txt", "refusing to replace")
    assert snapshot(out) == before


def write_fake_demo_data(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "vireid_synthetic.json").write_text("{}")  # the demo then skips generating data
    return folder


class _TrainingStarted(Exception):
    pass


def _stop_at_training(monkeypatch) -> list[Path]:
    """Replace the demo's training by a recorder that stops the demo (what happened before training counts)."""
    import vireid.engine.trainer

    started: list[Path] = []

    def record(cfg, *, run_dir, **kwargs):
        started.append(Path(run_dir))
        raise _TrainingStarted

    monkeypatch.setattr(vireid.engine.trainer, "train", record)
    return started


def test_demo_refuses_to_delete_a_run_folder_it_did_not_create(tmp_path, capsys):
    """Before: `vireid demo --out DIR` deleted DIR/run whenever it was not a finished demo run."""
    out = tmp_path / "out"
    (out / "run").mkdir(parents=True)
    (out / "run" / "thesis.tex").write_text("years of work")
    data = write_fake_demo_data(tmp_path / "data")
    before = snapshot(out)
    code, err = run_cli(["demo", "--out", str(out), "--data", str(data)], capsys)
    assert_one_line_error(code, err, str(out / "run"), "not created by vireid", "refusing to delete")
    assert snapshot(out) == before


def test_quick_demo_never_touches_the_full_demo_model(tmp_path, monkeypatch):
    """Before: `vireid demo --quick` after `make demo` deleted the trained demo model."""
    out = tmp_path / "out"
    full = out / "run"
    (full / "checkpoints" / "best").mkdir(parents=True)
    (full / OWNER_FILE).write_text(json.dumps({"kind": "demo-run"}))
    (full / "checkpoints" / "best" / "model.safetensors").write_bytes(b"the trained demo model")
    before = snapshot(full)
    started = _stop_at_training(monkeypatch)
    from vireid.demo import run_demo

    with pytest.raises(_TrainingStarted):
        run_demo(out=out, data=write_fake_demo_data(tmp_path / "data"), quick=True)
    assert started == [out / "run-quick"] and folder_kind(out / "run-quick") == "demo-run"
    assert snapshot(full) == before


def test_demo_replaces_only_its_own_unfinished_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    stale = out / "run"
    stale.mkdir(parents=True)
    (stale / OWNER_FILE).write_text(json.dumps({"kind": "demo-run"}))
    (stale / "config.yaml").write_text("interrupted: true")
    started = _stop_at_training(monkeypatch)
    from vireid.demo import run_demo

    with pytest.raises(_TrainingStarted):
        run_demo(out=out, data=write_fake_demo_data(tmp_path / "data"))
    assert started == [stale] and not (stale / "config.yaml").exists()  # HANDLED: retrained from scratch


# ---------------------------------------------------------------------------------------- run locking


LOCK_HOLDER = """
import sys
from vireid.files import RunLock
lock = RunLock.acquire(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_train_into_a_locked_run_folder_fails_naming_the_holder(sysu_root, tmp_path, capsys):
    """Before: two `vireid train` runs into one folder both proceeded (the check raced with mkdir)."""
    run = tmp_path / "run"
    first = Trainer(tiny_cfg(sysu_root, tmp_path), run_dir=run)  # holds the lock until fit() or close()
    with pytest.raises(RunInUseError, match=rf"run folder {run} is in use by another vireid run \(pid {os.getpid()}"):
        Trainer(tiny_cfg(sysu_root, tmp_path), run_dir=run)
    first.close()
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        code, err = run_cli(["train", "baseline/sysu", *tiny_overrides(sysu_root, tmp_path, "train.name=run")], capsys)
        assert_one_line_error(code, err, str(run), "in use", f"pid {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.communicate("")
    Trainer(tiny_cfg(sysu_root, tmp_path), run_dir=run).close()  # released when the holder exits (even kill -9)


# ------------------------------------------------------------------------------ non-finite checkpoints


def test_weights_blown_up_by_the_optimiser_step_are_never_checkpointed(sysu_root, tmp_path, monkeypatch):
    """Before: a step that left inf/NaN weights (loss still finite) was saved and last.json pointed at it."""
    original = torch.amp.GradScaler.step
    calls = {"n": 0}

    def exploding_step(self, optimizer, *args, **kwargs):
        result = original(self, optimizer, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].mul_(float("inf"))
        return result

    monkeypatch.setattr(torch.amp.GradScaler, "step", exploding_step)
    run = tmp_path / "run"
    cfg = tiny_cfg(sysu_root, tmp_path, "train.checkpoint_every_iters=1")
    with pytest.raises(TrainingError, match=r"NaN/infinite after the optimiser step .*s00000001.*last\.json"):
        train(cfg, run_dir=run)
    last = resolve_checkpoint(run, prefer="last")
    assert last.name == "s00000001"
    assert all(torch.isfinite(t).all() for t in load_checkpoint(last).state_dict.values() if t.is_floating_point())
    assert not list((run / "checkpoints").glob("s00000002"))


def test_save_checkpoint_refuses_nonfinite_tensors(tmp_path):
    state = {"w": torch.ones(3), "bn.running_var": torch.tensor([1.0, float("nan")])}
    with pytest.raises(CheckpointError, match=r"NaN or infinite values \(bn\.running_var\)"):
        save_checkpoint(tmp_path / "ck", model_state=state, meta={})
    assert list(tmp_path.iterdir()) == []


def test_nonfinite_screen_matches_an_elementwise_reference():
    """The per-step check screens by sums; it must report exactly the tensors with a NaN/inf value, and not
    finite tensors whose sum overflows."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        state = {f"t{i}": torch.randn(int(torch.randint(1, 40, (1,), generator=gen)), generator=gen) for i in range(6)}
        state["huge"] = torch.full((4,), 3e38)  # finite, but its float32 sum is inf
        state["half"] = torch.full((8,), 60000.0, dtype=torch.float16)  # finite, fp16 sum would overflow
        state["steps"] = torch.tensor([1, 2])
        for name in ("t1", "t4", "half"):
            if torch.rand(1, generator=gen) < 0.5:
                flat = state[name].view(-1)
                flat[int(torch.randint(0, flat.numel(), (1,), generator=gen))] = [
                    float("nan"),
                    float("inf"),
                    -float("inf"),
                ][int(torch.randint(0, 3, (1,), generator=gen))]
        reference = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert nonfinite_tensors(state) == reference


# ------------------------------------------------------------------------------- orphaned temp folders

DIE_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
from vireid.files import make_temp_folder
# save_checkpoint's first steps: a marked temporary folder next to the target, then the weights file
tmp = make_temp_folder(Path(sys.argv[1]), "checkpoint")
(tmp / "model.safetensors").write_bytes(b"half a file")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_during_first_checkpoint_write_blocks_neither_fresh_start_nor_resume(sysu_root, tmp_path):
    """Before: the temp folder left by a SIGKILL made the run 'already hold checkpoints' and unresumable."""
    cfg = tiny_cfg(sysu_root, tmp_path)
    run = tmp_path / "run"
    Trainer(cfg, run_dir=run).close()  # config.yaml written, as when a run starts
    died = child(DIE_WHILE_SAVING, str(run / "checkpoints" / "s00000001"))
    assert died.returncode == -9, died.stderr
    orphans = [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".s00000001.tmp-")]
    assert len(orphans) == 1 and (orphans[0] / TEMP_FILE).is_file()
    user_hidden = run / "checkpoints" / ".s00000009.tmp-mine"  # looks alike but carries no vireid mark
    user_hidden.mkdir()
    Trainer(cfg, run_dir=run).close()  # a fresh start is accepted and cleans the orphan
    assert not orphans[0].exists() and user_hidden.is_dir()
    shutil.rmtree(user_hidden)
    resumed = train(cfg, resume=run)  # HANDLED: nothing finished yet, so the run starts from the beginning
    assert resumed.global_step == 3 and resolve_checkpoint(run, prefer="last").name == "s00000003"


KILLED_MID_RUN = """
import os, signal, sys
from pathlib import Path
import safetensors.torch
real_save = safetensors.torch.save_file

def save_or_die(tensors, path, metadata=None):
    if "s00000002" in str(path):  # SIGKILL in the middle of writing the second checkpoint
        Path(path).write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(tensors, path, metadata=metadata)

safetensors.torch.save_file = save_or_die
from vireid.config import load_config
from vireid.engine.trainer import train
train(load_config("baseline/sysu", sys.argv[2:]), run_dir=Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_kill_9_while_checkpointing_then_resume_is_bit_identical(sysu_root, finished_run, tmp_path):
    """A real SIGKILL mid-write leaves the lock (released by the OS) and a marked temporary folder; the resume
    cleans it up and ends with exactly the weights of the uninterrupted run."""
    run = tmp_path / "run"
    overrides = tiny_overrides(sysu_root, tmp_path, "train.checkpoint_every_iters=1")
    died = child(KILLED_MID_RUN, str(run), *overrides)
    assert died.returncode == -9, died.stderr[-2000:]
    hidden = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".s")]
    assert len(hidden) == 1 and hidden[0].startswith(".s00000002.tmp-"), hidden
    assert resolve_checkpoint(run, prefer="last").name == "s00000001"
    resumed = train(load_config(run / "config.yaml"), resume=run)
    assert resumed.global_step == 3 and not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
    reference = load_checkpoint(finished_run, prefer="last").state_dict
    weights = load_checkpoint(run, prefer="last").state_dict
    assert reference.keys() == weights.keys()
    assert all(torch.equal(reference[k], weights[k]) for k in reference)


DIE_WHILE_INDEXING = """
import os, signal, sys
from pathlib import Path
from vireid.files import make_temp_folder
tmp = make_temp_folder(Path(sys.argv[1]), "index")
(tmp / "features.safetensors").write_bytes(b"half")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_index_cleans_the_orphan_of_a_killed_index_build(tiny_ckpt, gallery, tmp_path):
    out = tmp_path / "g.vidx"
    assert child(DIE_WHILE_INDEXING, str(out)).returncode == -9
    unmarked = tmp_path / ".g.vidx.tmp-users"
    unmarked.mkdir()
    assert main(["index", str(tiny_ckpt), "--images", str(gallery), "-o", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.vidx.tmp-users", "g.vidx"]


# ------------------------------------------------------------------------------------- best checkpoint


@pytest.mark.parametrize("damage", ["best folder removed", "best.json removed"])
def test_export_refuses_a_run_whose_best_checkpoint_is_missing(run_copy, tmp_path, capsys, damage):
    """Before: `vireid export RUN` silently exported the last checkpoint instead."""
    if damage == "best folder removed":
        shutil.rmtree(run_copy / "checkpoints" / "best")
        missing = str(run_copy / "checkpoints" / "best" / "model.safetensors")
    else:
        (run_copy / "checkpoints" / "best.json").unlink()
        missing = str(run_copy / "checkpoints" / "best.json")
    code, err = run_cli(["export", str(run_copy), "--onnx", str(tmp_path / "m.onnx"), "--no-check"], capsys)
    assert_one_line_error(code, err, missing, "refusing to use")
    assert not list(tmp_path.glob("m.*"))


# --------------------------------------------------------------------- corrupt files: one clear line


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


RESUME = "resume"


@pytest.mark.parametrize(
    ("case", "damage", "command", "words"),
    [
        ("zero-byte weights", lambda r: _truncate(r / "checkpoints/best/model.safetensors", 0), "test", ["unreadable"]),
        (
            "truncated weights",
            lambda r: _truncate(r / "checkpoints/best/model.safetensors", 0.5),
            "test",
            ["unreadable"],
        ),
        ("truncated sidecar", lambda r: _truncate(r / "checkpoints/best/meta.json", 0.5), "test", ["meta.json"]),
        (
            "truncated trainer state",
            lambda r: _truncate(r / "checkpoints/s00000003/trainer_state.pt", 0.5),
            RESUME,
            ["trainer_state.pt", "unreadable"],
        ),
        ("junk last.json", lambda r: (r / "checkpoints/last.json").write_text("{oops"), RESUME, ["last.json"]),
        (
            "last.json escaping the folder",
            lambda r: (r / "checkpoints/last.json").write_text('{"folder": "../../etc"}'),
            RESUME,
            ["last.json", "malformed"],
        ),
    ],
)
def test_corrupt_checkpoint_files_end_in_one_line(run_copy, capsys, case, damage, command, words):
    damage(run_copy)
    before = snapshot(run_copy)
    if command == RESUME:
        argv = ["train", str(run_copy / "config.yaml"), "--resume", str(run_copy)]
    else:
        argv = ["test", str(run_copy), "--out", str(run_copy.parent / "t")]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *words)
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing already written was changed


def test_planted_pickle_in_trainer_state_is_refused_without_running(run_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"optimizer": Payload()}, run_copy / "checkpoints/s00000003/trainer_state.pt")
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_trainer_state(run_copy / "checkpoints/s00000003")
    assert not marker.exists()


def test_resume_with_a_changed_model_shape_is_one_line(run_copy, capsys):
    argv = ["train", str(run_copy / "config.yaml"), "model.width=16", "--resume", str(run_copy)]
    code, err = run_cli([*argv, "--allow-config-change"], capsys)
    assert_one_line_error(code, err, "does not fit the model", "size mismatch", "--allow-config-change")


# ------------------------------------------------------------------------------ full and read-only disks


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch

    manager = CheckpointManager(tmp_path / "run")
    state = {"w": torch.arange(4.0)}
    manager.save("s00000001", model_state=state, meta={"step": 1}, trainer_state={"epoch": 1})
    before = snapshot(tmp_path / "run")

    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(StorageError, match=r"s00000002: No space left on device\. Fix: free disk space.*intact"):
        manager.save("s00000002", model_state=state, meta={"step": 2}, trainer_state={"epoch": 2})
    assert snapshot(tmp_path / "run") == before and manager.last().name == "s00000001"
    assert isinstance(StorageError("x"), OSError)  # callers that caught OSError still do


def _read_only(monkeypatch, marker: str) -> None:
    """Make every mkdir/mkdtemp/mkstemp under a path containing ``marker`` fail like a read-only disk."""
    real_mkdir, real_mkdtemp, real_mkstemp = pathlib.Path.mkdir, tempfile.mkdtemp, tempfile.mkstemp

    def refuse(path):
        if marker in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def mkdir(self, *args, **kwargs):
        if not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def mkdtemp(*args, dir=None, **kwargs):
        refuse(dir)
        return real_mkdtemp(*args, dir=dir, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(
    ("case", "out_dir", "words"),
    [
        ("train.out_dir is a file", "file", ["a file stands where"]),
        ("train.out_dir under /proc", "/proc/vireid-faults/runs", ["/proc/vireid-faults", "cannot create"]),
        ("train.out_dir read-only", "ro-disk/runs", ["Read-only file system", "writable"]),
    ],
)
def test_unwritable_train_out_dir_is_one_line(sysu_root, tmp_path, capsys, monkeypatch, case, out_dir, words):
    (tmp_path / "file").write_text("mine")
    if out_dir.startswith("ro-disk"):
        _read_only(monkeypatch, "ro-disk")
    target = out_dir if out_dir.startswith("/") else str(tmp_path / out_dir)
    before = snapshot(tmp_path)
    code, err = run_cli(["train", "baseline/sysu", *tiny_overrides(sysu_root, Path(target))], capsys)
    assert_one_line_error(code, err, *words)
    assert snapshot(tmp_path) == before


def test_test_out_that_is_a_file_is_one_line(finished_run, tmp_path, capsys):
    (tmp_path / "results").write_text("mine")
    code, err = run_cli(["test", str(finished_run), "--out", str(tmp_path / "results")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "results"), "a file stands where")
    assert (tmp_path / "results").read_text() == "mine"


def test_read_only_index_target_keeps_the_existing_index(tiny_ckpt, gallery, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro-disk" / "g.vidx"
    argv = ["index", str(tiny_ckpt), "--images", str(gallery), "-o", str(out)]
    assert main(argv) == 0
    before = snapshot(out)
    _read_only(monkeypatch, "ro-disk")
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, str(out), "Read-only file system")
    assert snapshot(out) == before
    code, err = run_cli([*argv[:-1], "/proc/vireid-faults/g.vidx"], capsys)
    assert_one_line_error(code, err, "/proc/vireid-faults", "cannot create")


def test_failed_onnx_export_keeps_the_existing_file(tiny_ckpt, tmp_path, capsys, monkeypatch):
    code, err = run_cli(["export", str(tiny_ckpt), "--onnx", "/proc/vireid-faults/m.onnx", "--no-check"], capsys)
    assert_one_line_error(code, err, "/proc/vireid-faults", "cannot create")
    existing = tmp_path / "m.visible.onnx"
    existing.write_bytes(b"a model exported earlier")

    def disk_full(model, args, f, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", disk_full)
    argv = ["export", str(tiny_ckpt), "--onnx", str(tmp_path / "m.onnx"), "--modality", "visible", "--no-check"]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, str(existing), "No space left on device")
    assert existing.read_bytes() == b"a model exported earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.visible.onnx"]


# ------------------------------------------------------------------------- environment and determinism


def test_env_info_reads_versions_without_importing_the_packages(monkeypatch):
    """Before: writing env.json imported onnxruntime (whose import writes under ~/.cache)."""
    import importlib
    from importlib import metadata

    from vireid import env_info

    imported: list[str] = []
    real_import = importlib.import_module

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", spy)
    info = env_info.collect_info()
    assert not set(imported) & set(env_info.OPTIONAL_PACKAGES)
    assert info["optional"]["onnxruntime"] == metadata.version("onnxruntime")
    assert info["optional"]["onnx"] == metadata.version("onnx")


WEIGHTS = {f"layer{i}.weight": [[float(i + r + c) / 7 for c in range(2)] for r in range(3)] for i in range(6)}

SAVE_FOUR_TIMES_WITHOUT_TORCH = """
import hashlib, json, sys, tempfile
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file
from vireid.files import canonicalize_safetensors_header
arrays = {k: np.asarray(v, dtype=np.float32) for k, v in json.loads(sys.argv[1]).items()}
for _ in range(4):
    path = Path(tempfile.mkdtemp()) / "model.safetensors"
    save_file(arrays, str(path), metadata={"format": "pt", "vireid": "1"})
    canonicalize_safetensors_header(path)
    print(hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_same_weights_give_the_same_bytes_in_two_processes(tmp_path):
    """Before: the safetensors header order changed between (and within) processes, so the same weights
    saved twice differed byte for byte. Here: four saves through ``save_checkpoint`` in this process and four
    through the same header canonicalisation in a second process (which skips importing torch, to stay fast)
    give one and the same file."""
    state = {k: torch.tensor(v) for k, v in WEIGHTS.items()}
    here = [
        hashlib.sha256(
            (save_checkpoint(tmp_path / f"c{k}", model_state=state, meta={}) / "model.safetensors").read_bytes()
        ).hexdigest()
        for k in range(4)
    ]
    done = child(SAVE_FOUR_TIMES_WITHOUT_TORCH, json.dumps(WEIGHTS))
    assert done.returncode == 0, done.stderr
    hashes = here + done.stdout.split()
    assert len(hashes) == 8 and len(set(hashes)) == 1, hashes


def test_fingerprint_hashes_tensors_not_header_order(tmp_path):
    from safetensors.torch import save_file

    from vireid.index import weights_fingerprint

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    for name, meta in (("x", {"format": "pt", "vireid": "1"}), ("y", {"vireid": "1", "format": "pt", "z": "2"})):
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"), metadata=meta)
    assert (tmp_path / "x/model.safetensors").read_bytes() != (tmp_path / "y/model.safetensors").read_bytes()
    assert weights_fingerprint(tmp_path / "x") == weights_fingerprint(tmp_path / "y")
    (tmp_path / "z").mkdir()
    save_file({**state, "b": torch.tensor([1, 3])}, str(tmp_path / "z/model.safetensors"))
    assert weights_fingerprint(tmp_path / "z") != weights_fingerprint(tmp_path / "x")


def test_index_fingerprint_accepts_legacy_file_hashes_and_refuses_other_weights(tiny_ckpt, gallery, tmp_path):
    from vireid.index import GalleryIndex, build_index, check_checkpoint_matches

    index = build_index(tiny_ckpt, gallery, tmp_path / "g.vidx")
    meta_path = tmp_path / "g.vidx" / "index.json"
    legacy = json.loads(meta_path.read_text())
    legacy["checkpoint"]["weights_sha256"] = hashlib.sha256((tiny_ckpt / "model.safetensors").read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(legacy))
    check_checkpoint_matches(GalleryIndex.open(tmp_path / "g.vidx"), tiny_ckpt)  # an index of an older vireid
    other = save_tiny_agw(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="is not the model that built the index"):
        check_checkpoint_matches(index, other)
