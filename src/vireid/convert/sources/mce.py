"""MCE release (IDLNL/MCE ``model.py`` ``Model``) -> vireid ``mce`` (the DAKD teacher recipe).

File: ``torch.save({'net': net.state_dict(), 'cmc', 'mAP', 'mINP', 'epoch'})`` (``*_best.t``, best test mAP).
One single-stream ResNet-50 (``backbone.*``, stem shared by both modalities), non-local blocks
``backbone.NL_2`` / ``NL_3``, learnable GeM ``backbone.pool.p`` and the BNNeck ``bn_neck``. The identity
memories that training attaches to the model (``memory``, ``memory_rgb``, ``memory_ir``, ``memory_ca``:
one ``features`` buffer of (identities, 2048) each) are saved with it and dropped here; their row count
gives the number of training identities. ``classifier`` exists only with ``--nce``.
"""

from __future__ import annotations

from vireid.convert.mapping import CopyFrom, Drop, KeyMapping, Rename, non_local_renames
from vireid.convert.source import ReleaseSource

_MEMORY = "MCE identity memories (training state, rebuilt every epoch; not part of the network)"

MAPPING = KeyMapping(
    renames=(
        Rename("backbone.conv1.", "stems.shared.conv1."),
        Rename("backbone.bn1.", "stems.shared.bn1."),
        Rename("backbone.layer1.", "layer1."),
        Rename("backbone.layer2.", "layer2."),
        Rename("backbone.layer3.", "layer3."),
        Rename("backbone.layer4.", "layer4."),
        *non_local_renames("backbone.NL_2", "layer2", (2, 3)),
        *non_local_renames("backbone.NL_3", "layer3", (3, 4, 5)),
        Rename("backbone.pool.p", "pool.p"),
        Rename("bn_neck.", "bnneck."),
        Rename(
            "classifier.",
            "classifier.",
            drop_if_model_lacks="identity classifier of --nce; the vireid model of this config has none",
        ),
    ),
    drops=tuple(Drop(f"{name}.", _MEMORY) for name in ("memory", "memory_rgb", "memory_ir", "memory_ca")),
    # The release normalises both modalities with one set of running statistics; a vireid student with
    # per-modality running statistics (student.bn=per_modality) gets that set for its infrared rows too, so its
    # output equals the release's.
    copies=(
        CopyFrom(
            "infrared_bn_stats.",
            "",
            "the release keeps one set of BatchNorm running statistics for both modalities",
        ),
    ),
)

SOURCE = ReleaseSource(
    name="mce",
    release="IDLNL/MCE",
    release_commit="deea89539bc83d0b1ce7e7dc3cb2d77ee49c3cf0",
    description="MCE *_best.t (single-stream ResNet-50, non-local, learnable GeM) -> mce (DAKD teacher)",
    methods=("mce",),
    default_config="dakd/sysu_teacher",
    mapping=MAPPING,
    state_key="net",
    last_stride=1,  # Model(drop_last_stride=True) in train.py and test.py
    memory_prefix="memory",
)
