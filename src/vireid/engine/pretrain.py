"""A pretrained start on synthetic data (``vireid pretrain``): a stand-in for ImageNet initialisation.

Why: IDKL, DAKD and the AGW baseline were all designed to start from an ImageNet-initialised ResNet, while the
synthetic benchmarks (and CPU machines without the ImageNet file) start from random weights, which changes what
each method's components can do. This module trains the ResNet trunk as an identity classifier on a *large*
synthetic SYSU-MM01-layout set, generated with its own generator seed so that its people are not the
benchmark's, over visible and infrared images alike, and writes the trunk as ``backbone.safetensors``.

Every ResNet config then loads that file through the same route as an ImageNet file,
``model.pretrained=OUT/backbone.safetensors`` (:func:`vireid.models.resnet.build_backbone`): the AGW network
(both modality stems start from the pretrained stem), the IDKL network (both layer3-4 branches start from the
pretrained layer3-4) and the DAKD / MCE network. The keys are those of
:class:`~vireid.models.resnet.ResNetBackbone` (``stem.conv1.weight``, ``layer1.0.conv1.weight``, ...);
non-local blocks are not pretrained (they start as identities, as with an ImageNet file). A JSON sidecar,
``backbone.json``, records the architecture, width and data so that a file of another width or depth is
refused with a clear error instead of loading half its tensors.

The recipe is deliberately plain (it is not any method's): random mini-batches over all images of both
modalities, flip + pad-and-crop augmentation, global average pooling, a BatchNorm1d neck and a linear
classifier, label-smoothed cross-entropy, Adam with a linear warm-up and cosine decay. Its cost is paid once;
a second call with the same options reuses the file.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vireid.errors import ConfigError, DataError
from vireid.models.resnet import SYNTHETIC_PRETRAIN_KIND

__all__ = ["PRETRAIN_KIND", "PretrainOptions", "PretrainReport", "pretrain_backbone"]

PRETRAIN_KIND = SYNTHETIC_PRETRAIN_KIND
WEIGHTS_FILE = "backbone.safetensors"
SIDECAR_FILE = "backbone.json"


@dataclass(frozen=True)
class PretrainOptions:
    """What to pretrain and on what.

    Attributes:
        backbone, width: the ResNet (``model.backbone`` / ``model.width`` of the configs that will load it).
        num_ids, data_seed, difficulty: the generated synthetic SYSU-layout set; every identity of it (all
            splits) is a training class. ``data_seed`` must differ from the benchmark set's seed (0 by default
            for ``vireid synth`` and the demos), so the pretraining people are not the benchmark's.
        height, image_width: input size (the benchmark's, so that BatchNorm statistics fit).
        steps, batch_size, lr, weight_decay, warmup_fraction, label_smoothing: the optimisation.
        seed: training seed (initialisation, batch order, augmentation with ``workers=0``).
        workers: image-decoding processes.
    """

    backbone: str = "resnet18"
    width: int = 32
    num_ids: int = 1000
    data_seed: int = 1000
    difficulty: float = 0.5
    height: int = 96
    image_width: int = 48
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    workers: int = 0
    images_per_camera: tuple[int, int] | None = None

    def training_options(self) -> dict[str, Any]:
        """The options that change the weights (``workers`` does not)."""
        options = asdict(self)
        options.pop("workers")
        options["images_per_camera"] = list(self.images_per_camera) if self.images_per_camera else None
        return options


@dataclass
class PretrainReport:
    """What :func:`pretrain_backbone` did."""

    weights: Path
    sidecar: Path
    reused: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        m = self.meta
        what = "reused" if self.reused else f"trained in {m.get('seconds', 0):.0f} s"
        return (
            f"pretrained {m.get('backbone')} (width {m.get('width')}) {what}: {m.get('num_classes')} identities, "
            f"{m.get('num_images')} images, {m.get('steps')} steps, "
            f"final loss {m.get('final_loss', float('nan')):.3f}, "
            f"train accuracy {100 * m.get('train_accuracy', float('nan')):.1f}% (last steps). "
            f"Load it with model.pretrained={self.weights}"
        )


class _Classifier(nn.Module):
    """Backbone -> global average pool -> BatchNorm1d -> linear identity classifier."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.neck(self.backbone(images).mean(dim=(2, 3))))


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from vireid.data.image_io import load_image

        return self.transform(load_image(self.paths[i])), self.labels[i]


def _records(data_dir: Path) -> tuple[list[str], list[int], int]:
    """Every image of every identity of the set, both modalities, with contiguous labels."""
    from vireid.data.catalog import get_dataset
    from vireid.data.readers.sysu import CAMERAS

    ds = get_dataset("sysu", str(data_dir))
    pids = sorted(set(ds.ids("trainval")) | set(ds.ids("test")))
    records = ds.images(pids, CAMERAS)
    label_of = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [str(r.path) for r in records], [label_of[r.pid] for r in records], len(label_of)


def _ensure_data(data_dir: Path, options: PretrainOptions) -> dict[str, Any]:
    """Generate the pretraining set unless it exists; refuse an existing set of other options."""
    from vireid.data.synthetic import SynthOptions, write_layout
    from vireid.data.synthetic.layouts import read_marker

    marker = read_marker(data_dir) if data_dir.is_dir() else None
    if marker is None:
        synth = SynthOptions(
            num_ids=options.num_ids,
            seed=options.data_seed,
            difficulty=options.difficulty,
            size=(options.height, options.image_width),
            images_per_camera=options.images_per_camera,
            workers=min(4, os.cpu_count() or 1),
        )
        write_layout("sysu", data_dir, synth, overwrite=False)
        marker = read_marker(data_dir)
        assert marker is not None
    if marker.get("layout") != "sysu" or marker.get("seed") != options.data_seed:
        raise DataError(
            f"{data_dir} is a synthetic {marker.get('layout')} set of generator seed {marker.get('seed')}, but "
            f"pretraining asks for a sysu set of seed {options.data_seed}.",
            fix="point --data at another folder (or delete it to regenerate).",
        )
    if marker.get("options", {}).get("num_ids") != options.num_ids:
        raise DataError(
            f"{data_dir} has {marker['options'].get('num_ids')} identities, pretraining asks for {options.num_ids}.",
            fix="point --data at another folder (or delete it to regenerate).",
        )
    return marker


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def pretrain_backbone(
    out: str | Path, options: PretrainOptions | None = None, *, data: str | Path | None = None, log=print
) -> PretrainReport:
    """Train a ResNet trunk as an identity classifier on a synthetic set; write ``OUT/backbone.safetensors``.

    ``data`` is the pretraining set's folder (default ``OUT/data``; generated when absent). When
    ``OUT/backbone.json`` already records the same options, nothing is trained and the file is reused.
    """
    from safetensors.torch import save_file
    from torchvision import transforms as T

    from vireid.config import ModelConfig
    from vireid.data.transforms.presets import IMAGENET_MEAN, IMAGENET_STD
    from vireid.models.resnet import build_backbone

    options = options or PretrainOptions()
    if options.steps < 1 or options.batch_size < 2:
        raise ConfigError(f"pretrain needs steps >= 1 and batch_size >= 2, got {options.steps}, {options.batch_size}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights, sidecar = out / WEIGHTS_FILE, out / SIDECAR_FILE
    if weights.is_file() and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        if meta.get("options") == options.training_options():
            return PretrainReport(weights, sidecar, reused=True, meta=meta)
    data_dir = Path(data) if data is not None else out / "data"
    marker = _ensure_data(data_dir, options)
    paths, labels, num_classes = _records(data_dir)

    torch.manual_seed(options.seed)
    cfg = ModelConfig(backbone=options.backbone, pretrained="none", width=options.width, non_local=False)
    backbone = build_backbone(cfg)
    model = _Classifier(backbone, backbone.out_channels, num_classes)
    pad = max(1, options.height // 24)  # 10 px at 256x128 (the AGW recipe), scaled to the input size
    transform = T.Compose(
        [
            T.Resize((options.height, options.image_width)),
            T.RandomHorizontalFlip(),
            T.Pad(pad),
            T.RandomCrop((options.height, options.image_width)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    generator = torch.Generator().manual_seed(options.seed)
    sampler = torch.utils.data.RandomSampler(
        range(len(paths)), replacement=True, num_samples=options.steps * options.batch_size, generator=generator
    )
    loader = torch.utils.data.DataLoader(
        _ImageSet(paths, labels, transform),
        batch_size=options.batch_size,
        sampler=sampler,
        num_workers=options.workers,
        drop_last=True,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    warmup = max(1, round(options.warmup_fraction * options.steps))

    def lr_factor(step: int) -> float:  # linear warm-up from 10%, then cosine to 0
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, options.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    started = time.perf_counter()
    recent_loss: list[float] = []
    recent_correct: list[float] = []
    window = max(1, min(50, options.steps // 10))
    for step, (images, targets) in enumerate(loader):
        logits = model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=options.label_smoothing)
        if not torch.isfinite(loss):
            raise DataError(f"pretraining loss became {loss.item()} at step {step}.", fix="lower --lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent_loss = [*recent_loss[-window + 1 :], float(loss.detach())]
        recent_correct = [*recent_correct[-window + 1 :], float((logits.argmax(1) == targets).float().mean())]
        if log is not None and (step + 1) % max(1, options.steps // 20) == 0:
            log(f"pretrain step {step + 1}/{options.steps}: loss {sum(recent_loss) / len(recent_loss):.3f}")
    seconds = time.perf_counter() - started
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    meta = {
        "kind": PRETRAIN_KIND,
        "backbone": options.backbone,
        "width": options.width,
        "num_classes": num_classes,
        "num_images": len(paths),
        "steps": options.steps,
        "final_loss": sum(recent_loss) / len(recent_loss),
        "train_accuracy": sum(recent_correct) / len(recent_correct),
        "seconds": round(seconds, 1),
        "data": str(data_dir),
        "data_generator": {"layout": marker.get("layout"), "seed": marker.get("seed"), **marker.get("options", {})},
        "options": options.training_options(),
        "torch": torch.__version__,
    }
    _atomic_write(weights, lambda p: save_file(state, str(p), metadata={"kind": PRETRAIN_KIND}))
    _atomic_write(sidecar, lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
    return PretrainReport(weights, sidecar, reused=False, meta=meta)
