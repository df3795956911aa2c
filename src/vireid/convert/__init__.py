"""Converting the authors' released checkpoints into vireid checkpoints (``vireid convert``).

    vireid convert sysu_agw_p4_n8_lr_0.1_seed_0_best.t --from agw --config baseline/sysu --out runs/agw-release

    from vireid.convert import convert_checkpoint
    folder = convert_checkpoint("sysu_agw_..._best.t", source="agw", config="baseline/sysu", out="runs/agw-release")

The result is an ordinary checkpoint folder (``model.safetensors`` + ``meta.json``) that ``vireid test``,
``index``/``search``, ``export``, :class:`~vireid.FeatureExtractor`, :func:`~vireid.engine.loading.load_model`
and DAKD's ``teacher=DIR`` accept. The sidecar's ``converted`` entry records the provenance: source, release
repository and the commit the table was checked against, file name and sha256, the release's stored metrics,
the keys dropped and why. Results printed for such a model say "converted from SOURCE".

Steps (:func:`convert_checkpoint`):

1. read the file with ``torch.load(weights_only=True)`` and only NumPy's array/scalar globals allowed
   (:mod:`vireid.convert.reading`); any other global is refused by name before anything runs;
2. rename its keys with the source's explicit table (:mod:`vireid.convert.mapping`): ``module.`` stripped,
   prefixes renamed, dead or training-only keys dropped *by name* with a reason;
3. read the architecture the shapes imply (backbone, width, stems, non-local layout, GeM vs average pooling,
   learnable p, classes) plus the facts the release code fixes (last stride) and compare them with the
   config; a difference names the override (``model.non_local=false``) (:mod:`vireid.convert.source`);
4. build the config's model and refuse any unexpected, missing or mis-shaped key, grouped by prefix; load
   with ``strict=True``; write the folder atomically.

How to add a source
-------------------
1. Create ``src/vireid/convert/sources/<name>.py`` exposing ``SOURCE =``
   :class:`~vireid.convert.source.ReleaseSource` (name, release repository and the commit you checked,
   the vireid ``methods`` it converts into, a ``default_config`` preset, ``state_key`` of the saved dict or
   ``None`` for a bare state dict, the release's hard-coded ``last_stride``) and its
   :class:`~vireid.convert.mapping.KeyMapping`: one :class:`~vireid.convert.mapping.Rename` per release
   prefix (``mapping.non_local_renames`` writes the AGW non-local blocks), one
   :class:`~vireid.convert.mapping.Drop` with a reason per prefix the vireid model deliberately lacks (list
   dead copies one by one; never a catch-all; ``Rename(..., drop_if_model_lacks=reason)`` for an optional
   head). ``<name>`` must be in :data:`~vireid.convert.sources.KNOWN_SOURCES`; the registry finds the module
   by name. The generic architecture checks read the renamed tensors (``stems.*``, ``layerN.<i>.`` anywhere
   in a key, ``*.non_local.*``, ``pool.p``, ``classifier.weight``) and compare only the ``model.*`` keys the
   config has; a release without a pooling tensor declares ``fixed_pooling``/``fixed_gem_p``, a network
   whose classes are not ``classifier.weight`` declares ``num_classes_from``, and facts only that network
   has go in ``extra_checks`` (each returns ``(difference, override)`` pairs).
2. Build the release's model from its own code with random weights (outside this repository), save it in
   the release's format, and write its key/shape manifest ``tests/manifests/<name>.json`` with
   ``benchmarks/parity/release_parity.py --manifest``; ``tests/test_convert.py`` then checks on every run
   that a file with exactly those keys converts, that a missing or extra key is refused and that each
   tensor lands where the table says.
3. Measure parity (``benchmarks/parity/release_parity.py``: release eval output vs
   ``load_model(DIR).model.extract(x, modality, feature="bn")`` after the same normalisation) and record
   the figures and the release commit in ``docs/methods/<method>.md``; document the file format, the
   convert command and the release's test protocol in ``docs/deployment.md`` ("Released checkpoints").
"""

from __future__ import annotations

from vireid.convert.core import convert_checkpoint
from vireid.convert.mapping import ConversionError
from vireid.convert.reading import UnsafeCheckpointError, read_release_file
from vireid.convert.sources import KNOWN_SOURCES, available_sources, get_source

__all__ = [
    "KNOWN_SOURCES",
    "ConversionError",
    "UnsafeCheckpointError",
    "available_sources",
    "convert_checkpoint",
    "get_source",
    "read_release_file",
]
