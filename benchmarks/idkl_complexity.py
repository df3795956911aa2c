"""Parameters and FLOPs of vireid's IDKL network against the IDKL release's three-ResNet-50 model.

Everything is built on the ``meta`` device (no memory, no weights) from vireid's own blocks:

* vireid IDKL: :class:`vireid.models.idkl_net.IDKLNet` as the SYSU config builds it (ResNet-50, 395
  training identities, 384x144), with both ``model.specific_branch`` options.
* the release's model, as method-idkl.md section 2 describes it: three full ResNet-50 bodies (no fc), of
  which it uses the stem + layer1-2 of the first and layer3-4 of the other two; an affine InstanceNorm, two
  used gates and one unused gate (``special_att``), two BNNecks, three classifiers and two discriminators.
  "Never trained" = the parts no forward pass touches. Its inference also computes the specific branch and
  the purifier (and throws them away), which is what its inference FLOPs count here.

FLOPs are :func:`vireid.models.complexity.count_flops` (2 per multiply-add of convolutions and matrix
products) for one image; "training forward" is the whole training output (both branches, purifier, heads).

    PYTHONPATH=src python benchmarks/idkl_complexity.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from vireid.config import load_config
from vireid.methods.idkl import build_idkl_net
from vireid.models.complexity import count_flops, count_parameters
from vireid.models.heads import BNNeck, IdentityClassifier
from vireid.models.idkl_net import IDKLNet, ModalityDiscriminator, PositionGate
from vireid.models.resnet import ResNetBackbone


def numel(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def release_parameters(num_classes: int) -> tuple[int, int]:
    """(total, never trained) parameters of the release's model, from its description."""
    a, b, c = (ResNetBackbone("resnet50", last_stride=1) for _ in range(3))
    channels = a.out_channels
    instance_norm = nn.InstanceNorm2d(channels, affine=True)
    gates = [PositionGate(channels, 16) for _ in range(3)]  # mask1, mask2 and the unused special_att
    heads = [BNNeck(channels), BNNeck(channels)]
    heads += [IdentityClassifier(channels, num_classes) for _ in range(3)]
    heads += [ModalityDiscriminator(channels), ModalityDiscriminator(channels)]
    total = numel(a, b, c, instance_norm, *gates, *heads)
    front = (b.stem, b.layer1, b.layer2, c.stem, c.layer1, c.layer2)
    never = numel(a.layer3, a.layer4, *front, gates[2])
    return total, never


def release_inference_flops(model: IDKLNet, image: torch.Tensor) -> int:
    """The release's eval forward: the shared path plus the specific branch and purifier it discards."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        trunk = model.forward_trunk(x, 0)
        embedding = model.bn_sh(model.pool(model.branch_sh(trunk)).flatten(1))
        discarded = model.pool(model.purifier(model.branch_sp(trunk, 0)).purified)
        return embedding + discarded.sum() * 0

    return count_flops(forward, image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=395, help="training identities (SYSU-MM01: 395)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=144)
    args = parser.parse_args()

    image = torch.zeros(1, 3, args.height, args.width, device="meta")
    rows = []
    with torch.device("meta"):
        total, never = release_parameters(args.classes)
        reference = build_idkl_net(load_config("idkl/sysu", ["model.pretrained=none"]), args.classes).eval()
        for branch in ("shared_weights", "per_modality"):
            cfg = load_config("idkl/sysu", ["model.pretrained=none", f"model.specific_branch={branch}"])
            model = build_idkl_net(cfg, args.classes).eval()
            counts = count_parameters(model)
            rows.append(
                (
                    f"vireid IDKL ({branch})",
                    counts.total,
                    counts.trainable,
                    0,
                    count_flops(model.extract, image, 0),
                    count_flops(model, image, 0),
                )
            )
        train_flops = count_flops(reference, image, 0)
        rows.insert(
            0, ("release (3 x ResNet-50)", total, None, never, release_inference_flops(reference, image), train_flops)
        )

    print(f"IDKL model complexity: ResNet-50, {args.classes} identities, {args.height}x{args.width}, per image")
    header = ("model", "params M", "trainable M", "never trained M", "inference GFLOPs", "train fwd GFLOPs")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, params, trainable, dead, inf, train in rows:
        trainable_text = f"{trainable / 1e6:.2f}" if trainable is not None else "-"
        cells = (
            name,
            f"{params / 1e6:.2f}",
            trainable_text,
            f"{dead / 1e6:.2f}",
            f"{inf / 1e9:.2f}",
            f"{train / 1e9:.2f}",
        )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
