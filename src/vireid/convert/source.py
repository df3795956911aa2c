"""What a release source declares, and the architecture facts read from a converted state dict's shapes.

A :class:`ReleaseSource` is data, not code paths: its key table, the container layout of its files, the
vireid methods it converts into and the few architecture facts its code fixes without showing them in
tensor shapes (the last stride; AGW's coupling of GeM with the non-local blocks). Everything else about the
architecture is read from the renamed tensors by :func:`architecture_facts` and compared with the vireid
config by :func:`config_mismatches`, so that a mismatch names the override that fixes it instead of
surfacing as a list of missing keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vireid.convert.mapping import KeyMapping
from vireid.models.resnet import ARCHITECTURES, STAGE_NAMES

TRAINING_IDENTITIES: dict[str, int] = {"sysu": 395, "regdb": 206, "llcm": 713}
"""Training identities of the official splits; a classifier (or memory) of one of these sizes tells the
dataset a release checkpoint was trained on."""


@dataclass(frozen=True)
class ReleaseSource:
    """One released checkpoint format (``vireid convert --from NAME``).

    Attributes:
        name: the ``--from`` name.
        release: the GitHub repository of the authors' code.
        release_commit: the commit of that repository the table was checked against (parity measured there).
        description: one line for ``--help`` and the sidecar.
        methods: vireid methods whose model the file converts into (the config's ``method`` must be one).
        default_config: the packaged preset used when no ``--config`` is given.
        mapping: the explicit key table.
        state_key: the entry of the saved dict that holds the state dict (``"net"``), or ``None`` when the
            file is the state dict itself.
        last_stride: the last stride the release code hard-codes (not visible in any tensor shape).
        fixed_pooling: for a release without a pooling parameter, a function of the renamed tensors that
            returns its pooling (``"gem"`` or ``"avg"``); ``None`` when ``pool.p`` tells (learnable GeM).
        fixed_gem_p: the exponent of a release's fixed GeM (AGW: 3).
        memory_prefix: release keys whose first dimension is the number of training identities when there
            is no classifier (MCE's memories).
        num_classes_from: the number of training identities from the renamed tensors, for a network whose
            classifier is not ``classifier.weight`` (e.g. several heads); default: ``classifier.weight`` rows,
            else the memories.
        extra_checks: further (difference, override) pairs for facts only this source's network has, given
            the facts, the config and the renamed tensors; they are reported with the generic ones.
    """

    name: str
    release: str
    release_commit: str
    description: str
    methods: tuple[str, ...]
    default_config: str
    mapping: KeyMapping
    state_key: str | None = "net"
    last_stride: int = 1
    fixed_pooling: Callable[[Mapping[str, torch.Tensor]], str] | None = None
    fixed_gem_p: float | None = None
    memory_prefix: str | None = None
    num_classes_from: Callable[[Mapping[str, torch.Tensor]], int] | None = None
    extra_checks: Callable[[ArchitectureFacts, Any, Mapping[str, torch.Tensor]], list[tuple[str, str]]] | None = None


@dataclass
class ArchitectureFacts:
    """The architecture a converted state dict implies (in vireid's ``model.*`` terms)."""

    backbone: str | None
    width: int | None
    stems: str | None
    non_local: dict[str, list[int]] = field(default_factory=dict)
    nl_inter_channels: int | None = None
    pooling: str = "gem"
    gem_learnable: bool = False
    gem_p: float | None = None
    last_stride: int = 1
    num_classes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Matched anywhere in the key, so that stages inside branches (IDKL's ``branch_sh.layer3``) count too.
_BLOCK = re.compile(r"(?:^|\.)(layer[1-4])\.(\d+)\.")
_NON_LOCAL = re.compile(r"(?:^|\.)(layer[1-4])\.non_local\.(\d+)\.")


def architecture_facts(
    tensors: Mapping[str, torch.Tensor], source: ReleaseSource, release_state: Mapping[str, torch.Tensor]
) -> ArchitectureFacts:
    """Read backbone depth and width, stems, non-local layout, pooling and classes from renamed tensors."""
    depths = {name: set() for name in STAGE_NAMES}
    non_local: dict[str, list[int]] = {}
    for key in tensors:
        if m := _BLOCK.search(key):
            depths[m.group(1)].add(int(m.group(2)))
        if m := _NON_LOCAL.search(key):
            indices = non_local.setdefault(m.group(1), [])
            if int(m.group(2)) not in indices:
                indices.append(int(m.group(2)))
    bottleneck = any(k.endswith("layer1.0.conv3.weight") for k in tensors)
    layout = tuple(len(depths[name]) for name in STAGE_NAMES)
    matches = [a for a, (blk, d) in ARCHITECTURES.items() if tuple(d) == layout and (blk.expansion == 4) == bottleneck]
    backbone = matches[0] if matches else None
    stems = None
    width = None
    for name, kind in (("stems.visible.conv1.weight", "per_modality"), ("stems.shared.conv1.weight", "shared")):
        if name in tensors:
            stems, width = kind, int(tensors[name].shape[0])
    inter = next((int(v.shape[0]) for k, v in tensors.items() if ".non_local." in k and k.endswith("g.weight")), None)
    if "pool.p" in tensors:
        pooling, learnable, p = "gem", True, None
    else:
        pooling = source.fixed_pooling(tensors) if source.fixed_pooling else "avg"
        learnable, p = False, source.fixed_gem_p if pooling == "gem" else None
    num_classes = int(tensors["classifier.weight"].shape[0]) if "classifier.weight" in tensors else 0
    if source.num_classes_from is not None:
        num_classes = int(source.num_classes_from(tensors))
    elif not num_classes and source.memory_prefix:
        rows = [v.shape[0] for k, v in release_state.items() if k.startswith(source.memory_prefix) and v.dim() == 2]
        num_classes = int(rows[0]) if rows else 0
    return ArchitectureFacts(
        backbone=backbone,
        width=width,
        stems=stems,
        non_local={k: sorted(v) for k, v in sorted(non_local.items())},
        nl_inter_channels=inter,
        pooling=pooling,
        gem_learnable=learnable,
        gem_p=p,
        last_stride=source.last_stride,
        num_classes=num_classes,
    )


class _ModelView:
    """Attribute access to a ``model`` config section that yields ``None`` for keys a method does not have."""

    def __init__(self, section: Any):
        self._section = section

    def __getattr__(self, name: str) -> Any:
        return getattr(self._section, name, None)


def config_mismatches(
    facts: ArchitectureFacts, cfg: Any, tensors: Mapping[str, torch.Tensor] | None = None, source: Any = None
) -> list[tuple[str, str]]:
    """(what differs, the override that makes the config match the file) for every architecture fact.

    A config section without one of the keys (a method whose network has no such option) is not compared
    on it; ``source.extra_checks`` adds the source's own facts.
    """
    model = _ModelView(cfg.model)
    out: list[tuple[str, str]] = []

    def differ(what: str, file_value: Any, cfg_value: Any, override: str) -> None:
        if file_value is not None and cfg_value is not None and file_value != cfg_value:
            out.append((f"{what}: file {file_value}, config {cfg_value}", override))

    differ("backbone", facts.backbone, model.backbone, f"model.backbone={facts.backbone}")
    differ("width", facts.width, model.width, f"model.width={facts.width}")
    differ("stems", facts.stems, model.stems, f"model.stems={facts.stems}")
    file_nl = bool(facts.non_local)
    if model.non_local is not None and file_nl != bool(model.non_local):
        out.append((f"non-local blocks: file {'on' if file_nl else 'off'}", f"model.non_local={str(file_nl).lower()}"))
    elif file_nl:
        for stage in ("layer2", "layer3"):
            want = facts.non_local.get(stage, [])
            have = list(getattr(model, f"nl_{stage}") or [])
            differ(f"non-local blocks in {stage}", want, have, f"model.nl_{stage}=[{','.join(map(str, want))}]")
        extra = sorted(set(facts.non_local) - {"layer2", "layer3"})
        if extra:
            out.append((f"non-local blocks in {', '.join(extra)} (vireid has them in layer2/3 only)", "--from"))
        if facts.nl_inter_channels is not None and str(model.nl_inter_channels) != str(facts.nl_inter_channels):
            inter = facts.nl_inter_channels
            differ("non-local width", inter, model.nl_inter_channels, f"model.nl_inter_channels={inter}")
    differ("pooling", facts.pooling, model.pooling, f"model.pooling={facts.pooling}")
    if facts.pooling == "gem" and model.pooling == "gem":
        learnable = str(facts.gem_learnable).lower()
        differ("learnable GeM p", facts.gem_learnable, model.gem_learnable, f"model.gem_learnable={learnable}")
        if facts.gem_p is not None and model.gem_p is not None and float(model.gem_p) != facts.gem_p:
            differ("GeM p", facts.gem_p, model.gem_p, f"model.gem_p={facts.gem_p}")
    differ("last stride", facts.last_stride, model.last_stride, f"model.last_stride={facts.last_stride}")
    dataset = cfg.data.dataset
    by_count = {count: name for name, count in TRAINING_IDENTITIES.items()}
    if facts.num_classes in by_count and dataset in TRAINING_IDENTITIES and by_count[facts.num_classes] != dataset:
        out.append(
            (
                f"classes: file {facts.num_classes} (the {by_count[facts.num_classes]} training identities), "
                f"config data.dataset={dataset} ({TRAINING_IDENTITIES[dataset]})",
                f"data.dataset={by_count[facts.num_classes]}",
            )
        )
    if source is not None and source.extra_checks is not None:
        out.extend(source.extra_checks(facts, cfg, tensors or {}))
    return out
