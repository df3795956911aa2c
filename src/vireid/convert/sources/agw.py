"""AGW release (mangye16/Cross-Modal-Re-ID-baseline, ``model.py`` ``embed_net``) -> vireid ``baseline``.

File: ``torch.save({'net': net.state_dict(), 'cmc': ndarray, 'mAP': np.float64, 'mINP': np.float64,
'epoch': int})`` as ``<suffix>_best.t`` (best test-set rank-1 of the "fc" feature) or ``_epoch_N.t``.

The release builds three complete ImageNet ResNet-50s (``visible_module.visible``,
``thermal_module.thermal``, ``base_resnet.base``) and uses only the stem of the first two and layer1-4 of
the third; the unused parts are saved too and are dropped here by name. The non-local blocks live in
``NL_2`` / ``NL_3`` (after blocks 2, 3 of layer2 and 3, 4, 5 of layer3), the BNNeck is ``bottleneck``.
GeM has no parameter in this release (fixed p = 3); it is on exactly when the non-local blocks are (the
release's ``--method agw``; ``--method base`` turns both off and uses average pooling).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vireid.convert.mapping import Drop, KeyMapping, Rename, non_local_renames
from vireid.convert.source import ReleaseSource

_DEAD = "unused ResNet-50 parts: the release builds three full ResNet-50s and runs only two stems and one body"


def _pooling(tensors: Mapping[str, torch.Tensor]) -> str:
    # embed_net(no_local=..., gm_pool=...) is built with both 'on' (agw) or both 'off' (base) in train.py.
    return "gem" if any(".non_local." in k for k in tensors) else "avg"


MAPPING = KeyMapping(
    renames=(
        Rename("visible_module.visible.conv1.", "stems.visible.conv1."),
        Rename("visible_module.visible.bn1.", "stems.visible.bn1."),
        Rename("thermal_module.thermal.conv1.", "stems.infrared.conv1."),
        Rename("thermal_module.thermal.bn1.", "stems.infrared.bn1."),
        Rename("base_resnet.base.layer1.", "layer1."),
        Rename("base_resnet.base.layer2.", "layer2."),
        Rename("base_resnet.base.layer3.", "layer3."),
        Rename("base_resnet.base.layer4.", "layer4."),
        *non_local_renames("NL_2", "layer2", (2, 3)),
        *non_local_renames("NL_3", "layer3", (3, 4, 5)),
        Rename("bottleneck.", "bnneck."),
        Rename("classifier.", "classifier."),
    ),
    drops=(
        # The release's resnet.py ResNet has no fc layer, so these are all the unused parts.
        *(Drop(f"visible_module.visible.{part}.", _DEAD) for part in ("layer1", "layer2", "layer3", "layer4")),
        *(Drop(f"thermal_module.thermal.{part}.", _DEAD) for part in ("layer1", "layer2", "layer3", "layer4")),
        *(Drop(f"base_resnet.base.{part}.", _DEAD) for part in ("conv1", "bn1")),
    ),
)

SOURCE = ReleaseSource(
    name="agw",
    release="mangye16/Cross-Modal-Re-ID-baseline",
    release_commit="e817a2672c1e14e8802617acb980a79520ef9545",
    description="AGW *_best.t / *_epoch_N.t (two-stream ResNet-50, non-local, GeM) -> baseline",
    methods=("baseline",),
    default_config="baseline/sysu",
    mapping=MAPPING,
    state_key="net",
    last_stride=1,  # resnet50(last_conv_stride=1) in every embed_net
    fixed_pooling=_pooling,
    fixed_gem_p=3.0,
)
