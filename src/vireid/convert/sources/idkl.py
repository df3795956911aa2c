"""IDKL release (1KK077/IDKL ``models/baseline.py`` ``Baseline``, ``models/resnet.py`` ``embed_net``) -> ``idkl``.

File: ``torch.save(model.state_dict())`` as ``model_best.pth`` (the epoch with the best *test-set* rank-1) or
``model_<epoch>.pth``: a bare state dict, no stored metrics. Configs ``configs/SYSU.yml`` / ``LLCM.yml``
(384x144, batch 120) and ``RegDB.yml`` (256x128, batch 60, TGSA off) all build the same network with
``decompose: true`` and ``drop_last_stride: true``; convert with ``--config idkl/sysu``, ``idkl/llcm`` or
``idkl/regdb``.

The release builds three complete ImageNet ResNet-50s and uses a part of each (method-idkl.md section 2):
``backbone.shared_module_fr.model_sh_fr`` runs the stem and layer1-2 (shared by both modalities),
``backbone.shared_module_bh.model_sh_bh`` layer3-4 of the shared branch and ``backbone.special.special_module``
layer3-4 of the specific branch. The other stages of each copy are saved but never run; they are dropped
here by name. So are the unused ``special_att`` gate and the purifier InstanceNorm's running statistics
(the release builds it with ``track_running_stats=True``, but the specific branch only matters in training,
where instance statistics are used; vireid's IN keeps none). Everything else lands on :class:`IDKLNet`:

    release                                      vireid
    backbone.shared_module_fr.model_sh_fr.conv1  stems.shared.conv1 (bn1 likewise; layer1, layer2 -> layer1, layer2)
    backbone.shared_module_bh.model_sh_bh.layer3 branch_sh.layer3 (layer4 likewise)
    backbone.special.special_module.layer3       branch_sp.shared.layer3 (layer4 likewise)
    backbone.IN.weight / .bias                   purifier.instance_norm.weight / .bias
    backbone.mask1 (gate on IN(F): M_in)         purifier.gate_in (channel_attention.0 -> reduce, .2 -> expand)
    backbone.mask2 (gate on F: M_f)              purifier.gate_f
    bn_neck / bn_neck_sp                         bn_sh / bn_sp
    classifier / classifier_sp / C_sp_f          classifier_sh / classifier_sp / classifier_ent
    D_shared_pseu / D_special                    discriminator_sh / discriminator_sp
                                                 (fc1, bn1, fc2, bn2, fc3 -> 0, 1, 4, 5, 8)

GeM has no parameter in this release (fixed p = 3, clamp 1e-6) and the last stride is 1 in every config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vireid.convert.mapping import Drop, KeyMapping, Rename
from vireid.convert.source import ReleaseSource

_FRONT = "backbone.shared_module_fr.model_sh_fr."
_SHARED_BACK = "backbone.shared_module_bh.model_sh_bh."
_SPECIFIC_BACK = "backbone.special.special_module."
_DEAD = "unused ResNet-50 stages: the release builds three full ResNet-50s and runs one part of each"
_UNUSED_GATE = "the release's special_att gate, built but never called"
_IN_STATS = (
    "running statistics of the purifier's InstanceNorm: only used in eval mode, where the release discards the "
    "specific branch; vireid's IN keeps none"
)
_DISCRIMINATOR = (("fc1.", "0."), ("bn1.", "1."), ("fc2.", "4."), ("bn2.", "5."), ("fc3.", "8."))


def _gem(tensors: Mapping[str, torch.Tensor]) -> str:
    return "gem"  # embed_net pools both branches with a fixed-p GeM, whatever the config


def _num_classes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Rows of C_sh (the release's ``classifier``); C_sp and C_ent have the same."""
    weight = tensors.get("classifier_sh.weight")
    return int(weight.shape[0]) if weight is not None else 0


def _specific_branch(facts: Any, cfg: Any, tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """The release has one specific layer3-4 for both modalities (``branch_sp.shared``)."""
    branch = getattr(cfg.model, "specific_branch", None)
    if branch is not None and branch != "shared_weights":
        return [
            (f"specific branch: file one for both modalities, config {branch}", "model.specific_branch=shared_weights")
        ]
    return []


MAPPING = KeyMapping(
    renames=(
        Rename(f"{_FRONT}conv1.", "stems.shared.conv1."),
        Rename(f"{_FRONT}bn1.", "stems.shared.bn1."),
        Rename(f"{_FRONT}layer1.", "layer1."),
        Rename(f"{_FRONT}layer2.", "layer2."),
        Rename(f"{_SHARED_BACK}layer3.", "branch_sh.layer3."),
        Rename(f"{_SHARED_BACK}layer4.", "branch_sh.layer4."),
        Rename(f"{_SPECIFIC_BACK}layer3.", "branch_sp.shared.layer3."),
        Rename(f"{_SPECIFIC_BACK}layer4.", "branch_sp.shared.layer4."),
        Rename("backbone.IN.weight", "purifier.instance_norm.weight"),
        Rename("backbone.IN.bias", "purifier.instance_norm.bias"),
        Rename("backbone.mask1.channel_attention.0.", "purifier.gate_in.reduce."),
        Rename("backbone.mask1.channel_attention.2.", "purifier.gate_in.expand."),
        Rename("backbone.mask2.channel_attention.0.", "purifier.gate_f.reduce."),
        Rename("backbone.mask2.channel_attention.2.", "purifier.gate_f.expand."),
        Rename("bn_neck.", "bn_sh."),
        Rename("bn_neck_sp.", "bn_sp."),
        Rename("classifier.", "classifier_sh."),
        Rename("classifier_sp.", "classifier_sp."),
        Rename("C_sp_f.", "classifier_ent."),
        *(Rename(f"D_shared_pseu.{old}", f"discriminator_sh.{new}") for old, new in _DISCRIMINATOR),
        *(Rename(f"D_special.{old}", f"discriminator_sp.{new}") for old, new in _DISCRIMINATOR),
    ),
    drops=(
        *(Drop(f"{_FRONT}{stage}.", _DEAD) for stage in ("layer3", "layer4")),
        *(Drop(f"{_SHARED_BACK}{stage}.", _DEAD) for stage in ("conv1", "bn1", "layer1", "layer2")),
        *(Drop(f"{_SPECIFIC_BACK}{stage}.", _DEAD) for stage in ("conv1", "bn1", "layer1", "layer2")),
        Drop("backbone.special_att.", _UNUSED_GATE),
        *(Drop(f"backbone.IN.{name}", _IN_STATS) for name in ("running_mean", "running_var", "num_batches_tracked")),
    ),
)

SOURCE = ReleaseSource(
    name="idkl",
    release="1KK077/IDKL",
    release_commit="8676b620098798662296df17765b6d0bd62c3d4f",
    description="IDKL model_best.pth (bare state dict of Baseline: 3 ResNet-50s, purifier, 2 branches) -> idkl",
    methods=("idkl",),
    default_config="idkl/sysu",
    mapping=MAPPING,
    state_key=None,
    last_stride=1,  # drop_last_stride: true in SYSU.yml, RegDB.yml and LLCM.yml
    fixed_pooling=_gem,
    fixed_gem_p=3.0,
    num_classes_from=_num_classes,
    extra_checks=_specific_branch,
)
