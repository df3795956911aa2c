"""Shared set-up of the DAKD and MCE training tests: a textured tiny SYSU-MM01 tree, tiny configs, a
random teacher checkpoint, and the worker of the two-process (gloo) DDP comparison.

``layout_builders.build_sysu`` writes one flat colour into every file, which is all readers and protocols
need; a teacher, its prototypes and its confidences would then tie exactly across identities. Here every
image gets an identity colour plus noise. The DDP worker lives here (not in a test module) so that the
spawned processes import as little as possible.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layout_builders import build_sysu, default_sysu_folders

TINY_MODEL = [
    "model.backbone=resnet18",
    "model.width=8",
    "model.pretrained=none",
    "model.nl_layer2=[1]",
    "model.nl_layer3=[1]",
]
TINY_DATA = ["data.height=32", "data.width=16", "data.workers=0", "sampler.P=2", "sampler.K=2"]
TINY_TRAIN = ["train.progress=false", "train.log_every=1", "eval.selection=last"]
# SGD without momentum for the DDP comparisons: Adam turns rounding noise in near-zero gradients into
# +-lr steps, which would hide real differences behind optimiser noise.
PLAIN_SGD = ["optim.name=sgd", "optim.lr=0.01", "optim.momentum=0"]


def textured_sysu(root: Path) -> Path:
    """Train ids 1-4, val 5-6, test 7-11 (``default_sysu_folders``), 16x8 textured JPEGs."""
    build_sysu(root, default_sysu_folders(), (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11))
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.jpg")):
        pid = int(path.parent.name)
        base = np.array([37 * pid % 256, 91 * pid % 256, 53 * pid % 256], dtype=np.float64)
        pixels = np.clip(base + rng.normal(0, 40, (16, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
    return root


def mce_cfg(root: Path, *extra: str):
    from vireid.config import load_config

    return load_config("dakd/sysu_teacher", [f"data.root={root}", *TINY_MODEL, *TINY_DATA, *TINY_TRAIN, *extra])


def student_cfg(root: Path, teacher: Path | str, *extra: str):
    from vireid.config import load_config

    base = [f"data.root={root}", *TINY_MODEL, *TINY_DATA, *TINY_TRAIN, f"teacher={teacher}"]
    return load_config("dakd/sysu", [*base, *extra])


def save_random_teacher(folder: Path, seed: int = 0) -> Path:
    """A vireid checkpoint of an untrained MCE DAKDNet: enough to exercise the student's machinery."""
    from vireid.config import load_config, to_dict
    from vireid.engine.checkpoint import save_checkpoint
    from vireid.models.dakd_net import DAKDNet

    torch.manual_seed(seed)
    cfg = load_config(None, TINY_MODEL, method="mce")
    model = DAKDNet(cfg.model, 0)
    meta = {"config": to_dict(cfg), "method": "mce", "num_classes": 0}
    return save_checkpoint(folder, model_state=model.state_dict(), meta=meta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(rank: int, world: int, port: int, root: str, teacher: str, out: str) -> None:
    """One rank: one MCE step, then one DAKD student step, in ``<out>/ddp_mce`` and ``<out>/ddp_student``."""
    from vireid.engine.trainer import train

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)})
    os.environ.update({"WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    train(mce_cfg(Path(root), *PLAIN_SGD), run_dir=Path(out) / "ddp_mce", stop_after_iters=1)
    train(student_cfg(Path(root), teacher, *PLAIN_SGD), run_dir=Path(out) / "ddp_student", stop_after_iters=1)
    torch.distributed.destroy_process_group()
