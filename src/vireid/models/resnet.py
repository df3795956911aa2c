"""ResNet backbones for re-identification, built from torchvision's residual blocks.

Re-identification networks use a ResNet without its ImageNet head, often with the last stride set to 1,
sometimes with non-local blocks between residual blocks and with the stem duplicated per modality. This
module builds exactly that and nothing else: :class:`ResNetBackbone` holds a :class:`ResNetStem` and four
:class:`ResNetStage` s, and no classifier or pooling layer is ever created. The blocks are torchvision's own
(``BasicBlock`` / ``Bottleneck``) and the stage parameters keep torchvision's names (``layer2.0.conv1.weight``),
so ImageNet checkpoints load by name; only ``conv1``/``bn1`` move under ``stem.``.

``width`` scales every stage (64 = torchvision, 16 or 32 give tiny networks for CPU tests and demos).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from vireid.config import ModelConfig
from vireid.errors import CheckpointError, ConfigError
from vireid.models.non_local import NonLocalBlock, resolve_inter_channels
from vireid.models.weights import load_state_dict_file, resolve_pretrained

logger = logging.getLogger(__name__)

# ``kind`` in the JSON sidecar of a backbone written by ``vireid pretrain`` (vireid.engine.pretrain).
SYNTHETIC_PRETRAIN_KIND = "vireid.synthetic_pretrain"

ARCHITECTURES: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}
"""Block type and blocks per stage of each supported torchvision ResNet."""

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class ResNetStem(nn.Module):
    """conv1 (7x7, stride 2) + bn1 + ReLU + maxpool (3x3, stride 2): (B, 3, H, W) -> (B, width, H/4, W/4)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class ResNetStage(nn.Module):
    """One ResNet stage: residual blocks run in order, each optionally followed by a non-local block.

    Blocks are registered under ``"0"``, ``"1"``, ... (as ``nn.Sequential`` does, so torchvision names
    load unchanged) and the non-local blocks under ``non_local.<index of the block they follow>``. A stage is
    self-contained: ``copy.deepcopy(stage)`` gives an independent branch with its non-local blocks (IDKL's
    two layer3-4 branches).
    """

    def __init__(self, blocks: Sequence[nn.Module], non_local: Mapping[int, nn.Module] | None = None):
        super().__init__()
        self.num_blocks = len(blocks)
        for index, block in enumerate(blocks):
            self.add_module(str(index), block)
        non_local = dict(non_local or {})
        for index in non_local:
            if not 0 <= index < self.num_blocks:
                raise ValueError(f"non-local index {index} is outside 0..{self.num_blocks - 1}")
        self.non_local = nn.ModuleDict({str(i): non_local[i] for i in sorted(non_local)})

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> nn.Module:
        if index < 0:
            index += self.num_blocks
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"stage has {self.num_blocks} blocks; index {index} is out of range")
        return self._modules[str(index)]  # type: ignore[return-value]

    @property
    def non_local_indices(self) -> list[int]:
        return [int(i) for i in self.non_local]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(self.num_blocks):
            x = self._modules[str(index)](x)  # type: ignore[misc]
            key = str(index)
            if key in self.non_local:
                x = self.non_local[key](x)
        return x


@dataclass
class WeightLoadReport:
    """What happened when a weight file was loaded into a module (tolerant loading, as fast-reid does).

    Attributes:
        path: the file.
        loaded: number of tensors copied.
        missing: module keys the file did not provide (they keep their fresh initialisation).
        unexpected: file keys the module has no place for (ignored).
        mismatched: ``key: file shape vs module shape`` for keys present in both with different shapes
            (ignored, the module keeps its initialisation).
        expected_missing / expected_unexpected: the subsets that are normal for this kind of file (non-local
            blocks absent from an ImageNet checkpoint; its ``fc`` classifier, which vireid never builds).
    """

    path: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    expected_unexpected: list[str] = field(default_factory=list)

    @property
    def surprising(self) -> list[str]:
        """Every mismatch that is not expected for the file kind; empty for a clean ImageNet load."""
        return (
            [f"missing {k}" for k in self.missing if k not in self.expected_missing]
            + [f"unexpected {k}" for k in self.unexpected if k not in self.expected_unexpected]
            + [f"shape {k}" for k in self.mismatched]
        )

    def summary(self) -> str:
        text = (
            f"loaded {self.loaded} tensors from {self.path}; {len(self.missing)} missing "
            f"({len(self.expected_missing)} expected), {len(self.unexpected)} unexpected "
            f"({len(self.expected_unexpected)} expected), {len(self.mismatched)} with a different shape"
        )
        odd = self.surprising
        if odd:
            shown = ", ".join(odd[:10]) + (f", ... ({len(odd) - 10} more)" if len(odd) > 10 else "")
            text += f". Not expected: {shown}"
        return text


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without pooling or classifier: (B, 3, H, W) -> (B, out_channels, H/s, W/s).

    ``s`` is 32, or 16 with ``last_stride=1`` (the first block of layer4 then uses stride 1 in its 3x3 conv
    and in its 1x1 downsample conv, with no dilation; 288x144 -> 18x9).

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        width: channels of the stem and of layer1's ``planes``; stages use width x (1, 2, 4, 8). 64 is
            torchvision's ResNet.
        last_stride: stride of layer4 (1 or 2).
        non_local: ``{"layer2": [2, 3], "layer3": [3, 4, 5]}``: 0-based indices of the blocks after which a
            :class:`~vireid.models.non_local.NonLocalBlock` is inserted.
        nl_inter_channels: inner width of the non-local blocks (1, ``half`` or an int).

    Attributes:
        stem, layer1..layer4: the parts, usable on their own (``forward`` is stem then the four stages).
        stage_channels: output channels of layer1..layer4.
        out_channels: channels of the final feature map (2048 for ResNet-50 at width 64).
        load_report: the :class:`WeightLoadReport` of the pretrained weights, or ``None``.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        width: int = 64,
        last_stride: int = 1,
        non_local: Mapping[str, Sequence[int]] | None = None,
        nl_inter_channels: int | str = 1,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown model.backbone '{arch}'.", fix=f"use one of {', '.join(ARCHITECTURES)}.")
        if last_stride not in (1, 2):
            raise ConfigError(f"model.last_stride={last_stride} is not supported.", fix="use 1 (AGW) or 2.")
        if width < 1:
            raise ConfigError(f"model.width={width} must be a positive integer.", fix="use 64 (torchvision).")
        block, depths = ARCHITECTURES[arch]
        non_local = {k: list(v) for k, v in (non_local or {}).items()}
        _check_non_local(arch, depths, non_local)

        self.arch = arch
        self.width = width
        self.last_stride = last_stride
        self.stem = ResNetStem(width)
        _init_like_torchvision(self.stem)
        inplanes = width
        channels: list[int] = []
        for name, depth, multiplier, stride in zip(STAGE_NAMES, depths, (1, 2, 4, 8), (1, 2, 2, last_stride)):
            blocks, inplanes = _make_blocks(block, inplanes, width * multiplier, depth, stride)
            for b in blocks:
                _init_like_torchvision(b)
            inter = resolve_inter_channels(nl_inter_channels, inplanes) if non_local.get(name) else 1
            nl = {i: NonLocalBlock(inplanes, inter) for i in non_local.get(name, [])}
            self.add_module(name, ResNetStage(blocks, nl))
            channels.append(inplanes)
        self.stage_channels = tuple(channels)
        self.out_channels = inplanes
        self.load_report: WeightLoadReport | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
        return x


def _make_blocks(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, depth: int, stride: int
) -> tuple[list[nn.Module], int]:
    """The residual blocks of one stage, as torchvision's ``ResNet._make_layer`` builds them (no dilation).

    Written out here rather than calling the private ``_make_layer`` through a subclass: torchvision's
    ``ResNet.__init__`` would also build the 1000-way ``fc`` head and fixes the stem at 64 channels.
    """
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    blocks: list[nn.Module] = [block(inplanes, planes, stride, downsample)]
    blocks += [block(out, planes) for _ in range(1, depth)]
    return blocks, out


def _init_like_torchvision(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_non_local(arch: str, depths: Sequence[int], non_local: Mapping[str, Sequence[int]]) -> None:
    for name, indices in non_local.items():
        if name not in STAGE_NAMES:
            raise ConfigError(f"non-local blocks asked for in unknown stage '{name}'.", fix="use layer1..layer4.")
        depth = depths[STAGE_NAMES.index(name)]
        key = f"model.nl_{name}"
        if len(set(indices)) != len(indices):
            raise ConfigError(f"{key}={list(indices)} repeats an index.", fix="list each block index once.")
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < depth:
                raise ConfigError(
                    f"{key}={list(indices)}: index {index} does not exist; {arch} {name} has {depth} blocks "
                    f"(valid 0-based indices 0..{depth - 1}).",
                    fix=f"choose indices in 0..{depth - 1} (e.g. {key}=[{depth - 1}]) or set model.non_local=false.",
                )


def non_local_layout(cfg: ModelConfig) -> dict[str, list[int]]:
    """``{"layer2": [...], "layer3": [...]}`` from ``model.non_local`` / ``nl_layer2`` / ``nl_layer3``."""
    if not cfg.non_local:
        return {}
    return {"layer2": list(cfg.nl_layer2), "layer3": list(cfg.nl_layer3)}


def torchvision_key_to_backbone(key: str) -> str:
    """Map a torchvision ResNet parameter name to :class:`ResNetBackbone` (``conv1.weight`` -> ``stem.conv1.weight``).

    A ``module.`` prefix (DataParallel) is dropped.
    """
    key = key.removeprefix("module.")
    if key.startswith(("conv1.", "bn1.")):
        return "stem." + key
    return key


def load_backbone_weights(backbone: nn.Module, path: str | Path, *, strict: bool = False) -> WeightLoadReport:
    """Copy the tensors of a weight file into ``backbone`` by name, tolerating and reporting mismatches.

    Accepts torchvision ImageNet checkpoints (``conv1.weight``, ``layer1.0...``, ``fc.*``) and files saved
    from a :class:`ResNetBackbone` (``stem.conv1.weight``). Missing keys keep their initialisation,
    unexpected keys and tensors of another shape are skipped; all three are listed in the returned report
    and logged. ``strict=True`` turns any surprising mismatch into a :class:`~vireid.errors.CheckpointError`.
    A file that matches nothing at all is always an error: it is certainly not a backbone of this kind.
    """
    state = {torchvision_key_to_backbone(k): v for k, v in load_state_dict_file(path).items()}
    own = backbone.state_dict()
    report = WeightLoadReport(path=str(path))
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(tensor.shape):
            report.mismatched.append(f"{key}: file {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = tensor
    report.missing = [k for k in own if k not in state]
    # Non-local blocks are new modules; old torchvision files predate BatchNorm's num_batches_tracked.
    report.expected_missing = [k for k in report.missing if ".non_local." in k or k.endswith(".num_batches_tracked")]
    report.expected_unexpected = [k for k in report.unexpected if k.startswith("fc.")]
    report.loaded = len(to_load)
    if not to_load:
        raise CheckpointError(
            f"no tensor of {path} matches the {type(backbone).__name__} (first file keys: "
            f"{', '.join(list(state)[:5])}).",
            fix="give a torchvision ResNet checkpoint of the same architecture as model.backbone.",
        )
    if strict and report.surprising:
        raise CheckpointError(f"weights do not fit the backbone: {report.summary()}", fix="use strict=False.")
    backbone.load_state_dict(to_load, strict=False)
    if report.surprising:
        logger.warning("pretrained backbone: %s", report.summary())
    else:
        logger.info("pretrained backbone: %s", report.summary())
    return report


def build_backbone(cfg: ModelConfig) -> ResNetBackbone:
    """Build the ResNet of ``cfg`` (``model.*`` keys) and load its pretrained weights, if any.

    ``model.pretrained``: ``none`` (random init), ``imagenet`` (the torchvision file found offline by
    :func:`vireid.models.weights.resolve_pretrained`; needs ``width`` 64) or a weight-file path. The file is
    resolved before the network is built, so a missing file fails fast.
    """
    spec = str(cfg.pretrained)
    if spec.lower() == "imagenet" and cfg.width != 64:
        raise ConfigError(
            f"model.pretrained=imagenet needs model.width=64 (torchvision's ResNet), but model.width={cfg.width}.",
            fix="set model.width=64, or model.pretrained=none for a small random-init network.",
        )
    path = resolve_pretrained(spec, cfg.backbone) if cfg.backbone in ARCHITECTURES else None
    backbone = ResNetBackbone(
        arch=cfg.backbone,
        width=cfg.width,
        last_stride=cfg.last_stride,
        non_local=non_local_layout(cfg),
        nl_inter_channels=cfg.nl_inter_channels,
    )
    if path is not None:
        _check_pretrain_sidecar(path, cfg)
        backbone.load_report = load_backbone_weights(backbone, path)
    return backbone


def _check_pretrain_sidecar(path: Path, cfg: ModelConfig) -> None:
    """A ``vireid pretrain`` file of another depth or width would load only a few tensors: refuse it.

    Tolerant loading suits ImageNet files (their ``fc`` head is expected to be left over), but a pretrained
    file of width 32 loaded into width 16 would leave every convolution at random init with only a warning.
    """
    sidecar = Path(path).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    except (OSError, ValueError):
        return
    if not isinstance(meta, dict) or meta.get("kind") != SYNTHETIC_PRETRAIN_KIND:
        return
    if (meta.get("backbone"), meta.get("width")) != (cfg.backbone, cfg.width):
        raise ConfigError(
            f"model.pretrained={path} is a {meta.get('backbone')} of width {meta.get('width')} (see {sidecar}), "
            f"but the config builds a {cfg.backbone} of width {cfg.width}.",
            fix=f"set model.backbone={meta.get('backbone')} model.width={meta.get('width')}, or pretrain one "
            f"with vireid pretrain --backbone {cfg.backbone} --width {cfg.width}.",
        )
