"""DAKD release (Fouroy4/DAKD ``model.py`` ``Model``) -> vireid ``dakd`` student (or ``mce`` teacher).

Student file: ``torch.save({'net': student.state_dict(), 'cmc', 'mAP', 'epoch', 'ablation', 'config'})``
(``<ablation>_best.pth``, best test mAP); the teacher it loads is an MCE file. The network is MCE's: one
``backbone`` ResNet-50 with ``NL_2`` / ``NL_3``, learnable GeM ``backbone.pool.p`` and ``bn_neck``.
``train.py`` builds the student with ``classification=args.nce`` (off by default), so a student file has
no ``classifier`` unless trained with ``--nce``; one that has it keeps it when the vireid config has a
classifier (``loss.ce > 0``) and drops it otherwise. A teacher file carries MCE memories, dropped as in the
``mce`` source.
"""

from __future__ import annotations

import dataclasses

from vireid.convert.sources.mce import SOURCE as MCE

SOURCE = dataclasses.replace(
    MCE,
    name="dakd",
    release="Fouroy4/DAKD",
    release_commit="bba5edd7bec67d1ad2e55cb622edb2cd3c06ca78",
    description="DAKD student/teacher *_best.pth (the MCE network) -> dakd student or mce teacher",
    methods=("dakd", "mce"),
    default_config="dakd/sysu",
)
