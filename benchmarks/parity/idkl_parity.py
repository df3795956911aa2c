"""Numerical parity of vireid's IDKL with the authors' release, 1KK077/IDKL (issue 13, items 5 and 6).

Given a checkout of the release (never part of vireid; nothing of it is imported at vireid import time),
this script

1. imports the release's ``models/baseline.py`` with four shims that change no arithmetic: a stub ``cv2``
   module (imported, never used by the model), ResNet constructors forced to ``pretrained=False`` (nothing is
   downloaded), a default ``modality_attention=0`` for the three sub-module constructors that the release's
   ``embed_net`` calls without it (it crashes as committed), and, for the objective only, dropout switched
   off on both sides (the two implementations draw their dropout masks in a different order);
2. builds ``Baseline`` as ``train.py`` does with the SYSU/LLCM switches (``decompose``, ``IP``, ``bg_kl``,
   ``sm_kl``, ``distalign``, ``triplet`` margin 1.3, ``classification``, last stride 1) with random weights,
   random BatchNorm / InstanceNorm affine parameters and BatchNorm running statistics accumulated by
   training-mode passes over random inputs;
3. saves it in the release's format (``torch.save(model.state_dict())`` as ``model_best.pth``), converts it
   with :func:`vireid.convert.convert_checkpoint` (``--from idkl``) and loads it with
   :func:`vireid.engine.loading.load_model`;
4. **features** (item 5): the release's eval output ``Baseline(x, cam_ids=...)`` = BN_sh(f_sh) against
   ``load_model(DIR).model.extract(x, modality, feature="bn")``, eval mode, fp32, CPU, for visible and
   infrared inputs (max abs difference, raw and after the evaluator's l2 normalisation);
5. **objective** (item 6): on the same converted weights, in training mode, one batch in the release's
   order (per identity, draws interleaved infrared, visible) through the release's ``train_forward`` and
   through vireid's ``idkl_objective`` with the release's switches (the reproduction configs), term by
   term, for three regimes: SYSU at batch 120 (full TGSA, CSA 0.8), the non-120 regime at batch 48 with an
   even k = 4 (reduced TGSA, CSA 0.3) and RegDB at batch 60 (TGSA off, CSA 0.3).

It prints one JSON line per comparison and exits 1 when a feature difference exceeds ``--tolerance`` or a
term's relative difference exceeds ``--rel-tolerance``. ``--manifest FILE`` writes the key/shape manifest
of the saved file (``tests/manifests/idkl.json``).

    PYTHONPATH=src python benchmarks/parity/idkl_parity.py /path/to/IDKL [--manifest tests/manifests/idkl.json]

The checkout is the repository root (holding ``IDKL/models/baseline.py``) or its ``IDKL`` folder. Run it
outside the tests: it builds three full ResNet-50s (about a minute on two CPU cores at the default sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

RELEASE_SWITCHES = dict(
    decompose=True, drop_last_stride=True, classification=True, triplet=True, margin=1.3, bg_kl=True,
    sm_kl=True, distalign=True, IP=True, center_cluster=False, center=False, fb_dt=False, k_size=10,
    pattern_attention=False, modality_attention=0, mutual_learning=False, num_parts=6,
)  # fmt: skip
"""``Baseline(**kwargs)`` as train.py builds it from configs/SYSU.yml (LLCM.yml identical; RegDB: distalign off)."""

NON_120 = ["tgsa.form=reduced", "tgsa.inter_weight=1.0", "tgsa.scale=0.1", "csa.inter_weight=0.3"]
REGIMES = (
    # name, vireid config, overrides, P identities, k draws per modality, release distalign (TGSA)
    ("sysu_batch120", "idkl/sysu", [], 12, 5, True),
    ("non120_batch48_even_k", "idkl/sysu", NON_120, 6, 4, True),
    ("regdb_batch60", "idkl/regdb", [], 6, 5, False),
)
TERMS = (
    # release metric key, release weight inside its total, vireid parts summed
    ("tri", 1.0, ("tri_sh", "tri_sp")),
    ("soft_dt", 1.0, ("tgsa",)),
    ("F_p", 0.1, ("entropy",)),
    ("IN_p", 0.1, ("centroid",)),
    ("id_pl", 1.0, ("id_sp",)),
    ("unad", 1.0, ("modality_sp",)),
    ("pse", 1.0, ("confusion",)),
    ("bg_kl", 1.0, ("csa_sample",)),
    ("sm_kl", 1.0, ("csa_identity",)),
    ("ce", 1.0, ("id",)),
)


def release_folder(checkout: Path) -> Path:
    for folder in (checkout / "IDKL", checkout):
        if (folder / "models" / "baseline.py").is_file():
            return folder
    raise SystemExit(
        f"error: {checkout} is not a checkout of the IDKL release (no IDKL/models/baseline.py under it). "
        "Fix: give the path of a clone of github.com/1KK077/IDKL (or of its IDKL/ folder)."
    )


def import_release(folder: Path):
    """The release's ``models.baseline`` module, with the shims of the module docstring."""
    sys.path.insert(0, str(folder))
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # imported by models/baseline.py, never used
    resnet = importlib.import_module("models.resnet")

    def no_download(*args, **kwargs):
        raise RuntimeError("the parity check must not download weights")

    resnet.load_state_dict_from_url = no_download
    original_resnet50 = resnet.resnet50

    def random_resnet50(pretrained=False, progress=True, **kwargs):
        return original_resnet50(False, progress, **kwargs)

    resnet.resnet50 = random_resnet50
    for cls in (resnet.Shared_module_fr, resnet.Special_module, resnet.Shared_module_bh):
        # embed_net calls these without the modality_attention argument their constructors require.
        def init(self, drop_last_stride, modality_attention=0, _original=cls.__init__):
            _original(self, drop_last_stride, modality_attention)

        cls.__init__ = init
    return importlib.import_module("models.baseline")


def training_pass(net: nn.Module, x: torch.Tensor) -> None:
    """Every BatchNorm of the release network in training mode once, without its losses."""
    _, sh_pl, sp_pl, *_ = net.backbone(x)
    feat, feat_sp = net.bn_neck(sh_pl), net.bn_neck_sp(sp_pl)
    net.D_shared_pseu(feat)
    net.D_special(feat_sp)


@torch.no_grad()
def randomise(net: nn.Module, seed: int, size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.InstanceNorm2d) and module.affine:
            module.weight.copy_(torch.empty_like(module.weight).uniform_(0.5, 1.5, generator=gen))
            if module.bias.requires_grad:  # the BNNecks' biases are frozen at 0 in the release
                module.bias.copy_(torch.empty_like(module.bias).normal_(0.0, 0.1, generator=gen))
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.momentum = None  # running statistics = the average over the passes below
            module.reset_running_stats()
    net.train()
    for _ in range(3):
        training_pass(net, torch.randn(8, 3, *size, generator=gen))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.momentum = 0.1
    net.eval()


@contextlib.contextmanager
def dropout_off():
    """F.dropout as the identity on both sides (the masks would be drawn in a different order)."""
    original = F.dropout
    F.dropout = lambda input, p=0.5, training=True, inplace=False: input
    try:
        yield
    finally:
        F.dropout = original


def release_order_batch(num_slots: int, k: int, num_classes: int, size: tuple[int, int], seed: int):
    """Images, labels, cam ids (release) and the matching vireid batch, rows in the release's order."""
    from vireid.data.batch import CrossModalBatch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(num_classes, generator=gen)[:num_slots]
    rows = [(s, i, m) for s in range(num_slots) for i in range(k) for m in (1, 0)]  # infrared first
    slot = torch.tensor([r[0] for r in rows])
    inst = torch.tensor([r[1] for r in rows])
    modality = torch.tensor([r[2] for r in rows])
    images = torch.randn(len(rows), 3, *size, generator=gen)
    cam_ids = torch.where(modality == 1, 3, 1)  # SYSU cameras 3 and 6 are infrared in the release
    batch = CrossModalBatch(
        images=images,
        label=ids[slot],
        modality=modality,
        view=torch.zeros(len(rows), dtype=torch.int64),
        pair_index=slot * k + inst,
        slot=slot,
        inst=inst,
        camid=cam_ids,
    )
    return images, ids[slot], cam_ids, batch


def manifest(path: Path, commit: str | None, config: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "source": "idkl",
        "release_commit": commit,
        "config": config,
        "state_key": None,
        "stored": {},
        "tensors": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()],
    }


def manifest_json(data: dict) -> str:
    """JSON with one tensor per line (diffs of a manifest stay readable), as the other manifests."""
    head = {k: v for k, v in data.items() if k != "tensors"}
    lines = ",\n".join(f"  {json.dumps(t)}" for t in data["tensors"])
    return json.dumps(head, indent=1)[:-2] + ',\n "tensors": [\n' + lines + "\n ]\n}\n"


def compare_features(net, converted, size, batch_size, seed, tolerance) -> float:
    gen = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for modality, name in ((0, "visible"), (1, "infrared")):
        x = torch.randn(batch_size, 3, *size, generator=gen)
        cams = torch.full((batch_size,), 3 if modality else 1)
        with torch.no_grad():
            ref = net(x, cam_ids=cams)  # eval mode: bn_neck(GeM(F_sh)), not normalised
            ours = converted.extract(x, modality, feature="bn")
        raw = (ours - ref).abs().max().item()
        normalised = (F.normalize(ours, dim=1) - F.normalize(ref, dim=1)).abs().max().item()
        worst = max(worst, raw)
        print(
            json.dumps(
                {
                    "check": "features",
                    "modality": name,
                    "input": [batch_size, 3, *size],
                    "max_abs_diff_bn": raw,
                    "max_abs_diff_l2_bn": normalised,
                    "bn_abs_max": ref.abs().max().item(),
                    "tolerance": tolerance,
                }
            )
        )
    return worst


def compare_objective(baseline, net, converted, size, num_classes, seed, rel_tolerance) -> float:
    from vireid.config import load_config
    from vireid.methods.idkl import centroid_gap_loss, idkl_objective, modality_centroid_gaps, pair_identities, switches

    worst = 0.0
    captured: dict[str, tuple] = {}
    net.backbone.register_forward_hook(lambda module, args, output: captured.__setitem__("maps", output))
    for name, config, overrides, num_slots, k, distalign in REGIMES:
        cfg = load_config(config, [f"sampler.P={num_slots}", f"sampler.K={k}", *overrides])
        images, labels, cam_ids, batch = release_order_batch(num_slots, k, num_classes, size, seed)
        net.TGSA = distalign
        net.train()
        converted.train()
        with dropout_off(), torch.no_grad():
            release_total, metric = net(images, labels, cam_ids=cam_ids, epoch=0)
            out = converted(batch.images, batch.modality)
            result = idkl_objective(out, batch, cfg)
        terms = {}
        for key, weight, parts in TERMS:
            if key not in metric:
                assert not any(p in result.parts for p in parts), (name, key)
                continue
            release = weight * float(metric[key])
            ours = float(sum(result.parts[p] for p in parts))
            terms[key] = (release, ours)
        terms["total"] = (float(release_total), float(result.total))
        # The release's centroid gap (margin 0) is exactly 0 on these random weights: gating with M_in in (0, 1)
        # shrinks every identity's modality gap. Compare the same function with a margin (the median gap
        # reduction) at which about half of the identities are active, so the comparison is not 0 vs 0.
        pairs = pair_identities(batch)
        reduction = modality_centroid_gaps(out.centroid_in, batch, pairs) - modality_centroid_gaps(
            out.centroid_in_gated, batch, pairs
        )
        margin = float(reduction.median())
        _, _, _, sp_in, sp_in_gated, _, _ = captured["maps"]
        sub = (cam_ids == 3) + (cam_ids == 6)
        release_gap = baseline.modal_centroid_loss(
            baseline.gem_p(sp_in), baseline.gem_p(sp_in_gated), labels, sub, margin
        )
        ours_gap = centroid_gap_loss(out.centroid_in, out.centroid_in_gated, batch, pairs, margin)
        terms[f"IN_p(margin={margin:.4g})"] = (float(release_gap), float(ours_gap))
        for key, (release, ours) in terms.items():
            rel = abs(ours - release) / max(abs(release), 1e-12)
            worst = max(worst, rel)
            print(
                json.dumps(
                    {
                        "check": "objective",
                        "regime": name,
                        "batch": len(batch),
                        "term": key,
                        "release": release,
                        "vireid": ours,
                        "rel_diff": rel,
                        "tolerance": rel_tolerance,
                    }
                )
            )
        print(json.dumps({"check": "objective", "regime": name, "vireid_switches": switches(cfg)}))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the IDKL release (repository root or its IDKL/ folder)")
    parser.add_argument("--classes", type=int, default=395, help="SYSU-MM01's training identities")
    parser.add_argument("--size", default="96x48", help="input HxW of the feature check")
    parser.add_argument("--objective-size", default="64x32", help="input HxW of the objective check")
    parser.add_argument("--batch", type=int, default=3, help="images per modality in the feature check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs feature difference")
    parser.add_argument("--rel-tolerance", type=float, default=1e-4, help="max relative loss-term difference")
    parser.add_argument("--manifest", type=Path, default=None, help="also write the key/shape manifest here")
    parser.add_argument("--skip-objective", action="store_true")
    args = parser.parse_args(argv)
    if not args.checkout.exists():
        parser.error(f"{args.checkout} does not exist; give the path of a checkout of github.com/1KK077/IDKL.")
    folder = release_folder(args.checkout)
    torch.manual_seed(args.seed)
    size = tuple(int(v) for v in args.size.split("x"))
    objective_size = tuple(int(v) for v in args.objective_size.split("x"))
    baseline = import_release(folder)
    net = baseline.Baseline(num_classes=args.classes, **RELEASE_SWITCHES)
    randomise(net, args.seed, size)

    from vireid.convert import convert_checkpoint
    from vireid.engine.loading import load_model

    git = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() or None
    with tempfile.TemporaryDirectory(prefix="vireid-idkl-parity-") as tmp:
        release_file = Path(tmp) / "model_best.pth"
        torch.save(net.state_dict(), release_file)
        if args.manifest:
            args.manifest.parent.mkdir(parents=True, exist_ok=True)
            args.manifest.write_text(manifest_json(manifest(release_file, commit, "idkl/sysu")))
        out = convert_checkpoint(release_file, source="idkl", config="idkl/sysu", out=Path(tmp) / "converted")
        converted = load_model(out, device="cpu").model
        print(json.dumps({"release": "1KK077/IDKL", "release_commit": commit, "converted": str(out.name)}))
        worst_feature = compare_features(net, converted, size, args.batch, args.seed, args.tolerance)
        worst_term = 0.0
        if not args.skip_objective:
            worst_term = compare_objective(
                baseline, net, converted, objective_size, args.classes, args.seed, args.rel_tolerance
            )
    ok = worst_feature <= args.tolerance and worst_term <= args.rel_tolerance
    print(json.dumps({"worst_feature_diff": worst_feature, "worst_term_rel_diff": worst_term, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
