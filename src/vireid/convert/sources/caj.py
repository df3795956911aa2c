"""CAJ release (mangye16/Cross-Modal-Re-ID-baseline, ``ICCV21_CAJ/``) -> vireid ``baseline`` (CAJ recipe).

``ICCV21_CAJ/model.py`` is the AGW ``embed_net`` unchanged (the two files are identical at the checked
commit) and ``train_ext.py`` saves the same ``{'net', 'cmc', 'mAP', 'mINP', 'epoch'}`` dict, so the key
table is AGW's; only the default recipe differs (``baseline/sysu_caj``).
"""

from __future__ import annotations

import dataclasses

from vireid.convert.sources.agw import SOURCE as AGW

SOURCE = dataclasses.replace(
    AGW,
    name="caj",
    description="CAJ (ICCV21_CAJ) *_best.t (the AGW network trained with channel augmentation) -> baseline",
    default_config="baseline/sysu_caj",
)
