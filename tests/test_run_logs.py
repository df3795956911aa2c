"""Run logs: ``log.txt`` keeps what the console shows, per-iteration losses, library log records (the
pretrained-weights load report) and warnings; the load report is also saved as ``pretrained_load.json``."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from fault_injection import poison_baseline_loss
from layout_builders import build_sysu
from vireid.cli import main
from vireid.config import load_config
from vireid.engine.logging import RunLogger
from vireid.engine.trainer import train
from vireid.errors import TrainingError
from vireid.models.resnet import ResNetBackbone

TINY = [
    "data.height=32",
    "data.width=16",
    "data.workers=0",
    "model.backbone=resnet18",
    "model.width=8",
    "model.non_local=false",
    "sampler.P=4",
    "sampler.K=2",
    "train.iters_per_epoch=3",
    "train.epochs=1",
    "train.progress=false",
    "train.log_every=1",
    "eval.selection=last",
]


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sysu_logs")
    ids = list(range(1, 11))
    return build_sysu(root, {(cam, pid): 3 for pid in ids for cam in range(1, 7)}, ids[:6], ids[6:8], ids[8:])


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """A weight file for the tiny backbone (as a user's own pretrained ResNet would be)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_w8.pth"
    torch.save(ResNetBackbone("resnet18", width=8).state_dict(), path)
    return path


def test_log_txt_holds_the_console_iterations_load_report_and_warnings(sysu_root, backbone_file, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: baseline\ndata:\n  dataset: sysu\n")
    overrides = [f"data.root={sysu_root}", f"train.out_dir={tmp_path}", "train.name=r", *TINY]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown (not recorded), as outside pytest
        assert main(["train", str(config), *overrides, f"model.pretrained={backbone_file}", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    log = (tmp_path / "r" / "log.txt").read_text()

    assert "vireid train method=baseline dataset=sysu" in log  # the console header, without colour codes
    assert "[bold]" not in log and "\x1b[" not in log
    steps = re.findall(r"^step (\d+)  epoch 1 iter (\d+)  loss (\S+) \(id (\S+), wrt (\S+)\)  lr", log, re.M)
    assert [(s, i) for s, i, *_ in steps] == [("1", "0"), ("2", "1"), ("3", "2")]
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [float(loss) for *_, loss, _, _ in steps] == pytest.approx([r["loss"] for r in records], abs=1e-4)
    # Not a terminal (captured): the iteration lines were printed there too, as under a batch scheduler.
    assert "step 3  epoch 1 iter 2" in out
    # The library logger's load report reached the log, and the report is kept as JSON.
    assert re.search(r"^info: vireid\.models\.resnet: pretrained backbone: .*loaded", log, re.M)
    report = json.loads((tmp_path / "r" / "pretrained_load.json").read_text())
    assert report["path"] == str(backbone_file) and report["loaded"] == len(torch.load(backbone_file))
    # The dataset count check's warning, and the closing lines of `vireid train`.
    assert re.search(r"^warning: DataWarning: SYSU-MM01 at .* expected 491", log, re.M)
    assert f"done run folder: {tmp_path / 'r'}" in log and f"vireid test {tmp_path / 'r'}" in log


def test_the_reason_a_run_stopped_is_in_its_log(sysu_root, tmp_path, monkeypatch):
    poison_baseline_loss(monkeypatch, at_step=1)
    cfg = load_config(
        "baseline/sysu", [f"data.root={sysu_root}", f"train.out_dir={tmp_path}", "model.pretrained=none", *TINY]
    )
    with warnings.catch_warnings(), pytest.raises(TrainingError):
        warnings.simplefilter("ignore")
        train(cfg, run_dir=tmp_path / "run", device="cpu")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert re.search(r"^error: TrainingError: the loss became nan at epoch 1, iteration 1", log, re.M)
    assert "step 1  epoch 1 iter 0" in log  # the good step before it was logged
    assert not [h for h in logging.getLogger("vireid").handlers if type(h).__name__ == "_RunLogHandler"]


def test_library_logging_is_attached_only_while_a_run_is_open(tmp_path):
    library = logging.getLogger("vireid")
    level, showwarning = library.level, warnings.showwarning
    run_log = RunLogger(tmp_path, tensorboard=False)
    logging.getLogger("vireid.some.module").info("before the run starts")
    run_log.attach_library_logging()
    logging.getLogger("vireid.some.module").info("hello from a library module")
    logging.getLogger("elsewhere").warning("not vireid's")
    run_log.close()
    logging.getLogger("vireid.some.module").warning("after the run")
    text = (tmp_path / "log.txt").read_text()
    assert "info: vireid.some.module: hello from a library module" in text
    assert "not vireid's" not in text and "after the run" not in text and "before the run" not in text
    assert library.level == level and warnings.showwarning is showwarning
