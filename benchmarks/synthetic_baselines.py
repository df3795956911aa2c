"""Baselines on the synthetic SYSU-MM01-layout set: chance, colour histograms, and a small CNN (optional).

Why: the synthetic generator must make colour useless across modalities (a colour histogram matcher should
be near chance for infrared -> visible) while colour still carries identity within the visible modality,
and the identity cues it draws must be learnable by a small CNN trained from scratch on the CPU.

The script generates the default ``sysu`` set (timing it), then scores with the SYSU-MM01 protocol
semantics: query = all infrared (cam3, cam6) images of the test ids; gallery = one randomly chosen image per
(test id, visible camera 1, 2, 4, 5) drawn with ``random.Random(trial)``; a cam3 query ignores every cam2
gallery image; rank-1 and mAP averaged over 10 galleries. The same-modality row uses visible queries against
the same kind of gallery, ignoring gallery images from the query's own camera.

Run:  PYTHONPATH=src python benchmarks/synthetic_baselines.py [--data DIR] [--cnn-steps 300]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vireid.data.synthetic import SynthOptions, write_layout

# ------------------------------------------------------------------------------------------------------
# MINIMAL SCORER (benchmark only). vireid's exact evaluator (vireid.evaluation) implements the full
# protocols; this small version exists so the generator can be checked on its own. Rank-1 here equals the
# de-duplicated CMC rank-1; AP is computed on the junk-filtered ranking.
# ------------------------------------------------------------------------------------------------------

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)


@dataclass(frozen=True)
class Item:
    path: Path
    pid: int
    cam: int


def read_sysu_test(root: Path) -> tuple[list[int], dict[tuple[int, int], list[Path]]]:
    ids = [int(v) for v in (root / "exp" / "test_id.txt").read_text().splitlines()[0].split(",")]
    folders = {}
    for pid in ids:
        for cam in (*VISIBLE_CAMS, *INFRARED_CAMS):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():
                folders[(cam, pid)] = sorted(folder.iterdir())
    return sorted(ids), folders


def queries(ids: list[int], folders: dict[tuple[int, int], list[Path]], cams: tuple[int, ...]) -> list[Item]:
    return [Item(p, pid, cam) for pid in ids for cam in cams for p in folders.get((cam, pid), [])]


def gallery(ids: list[int], folders: dict[tuple[int, int], list[Path]], trial: int) -> list[Item]:
    rng = random.Random(trial)
    out = []
    for pid in ids:
        for cam in VISIBLE_CAMS:
            if (cam, pid) in folders:
                out.append(Item(rng.choice(folders[(cam, pid)]), pid, cam))
    return out


def score(dist: np.ndarray, q: list[Item], g: list[Item], junk: Callable[[Item, Item], bool]) -> tuple[float, float]:
    """Mean rank-1 and mAP (in %) over valid queries; ``dist`` is (Q, G), smaller = more similar."""
    r1, aps = [], []
    for i, qi in enumerate(q):
        keep = np.array([not junk(qi, gj) for gj in g])
        order = np.argsort(dist[i, keep], kind="stable")
        match = np.array([gj.pid == qi.pid for gj in g])[keep][order]
        if not match.any():
            continue
        ranks = np.flatnonzero(match) + 1
        r1.append(float(match[0]))
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return 100 * float(np.mean(r1)), 100 * float(np.mean(aps))


def cross_modal_junk(q: Item, g: Item) -> bool:
    return q.cam == 3 and g.cam == 2  # cam2 and cam3 film the same room


def same_camera_junk(q: Item, g: Item) -> bool:
    return q.cam == g.cam


# --------------------------------------------------------------------------------------------- features


def rgb_histogram(img: np.ndarray, bins: int = 16) -> np.ndarray:
    h = [np.histogram(img[..., c], bins=bins, range=(0, 256))[0] for c in range(3)]
    v = np.concatenate(h).astype(np.float64)
    return v / v.sum()


def hsv_histogram(img: np.ndarray) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(img).convert("HSV"))
    hist, _ = np.histogramdd(hsv.reshape(-1, 3), bins=(8, 4, 4), range=((0, 256), (0, 256), (0, 256)))
    v = hist.ravel().astype(np.float64)
    return v / v.sum()


def chi_square(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a[:, None, :] - b[None, :, :]) ** 2
    den = a[:, None, :] + b[None, :, :] + 1e-12
    return 0.5 * (num / den).sum(-1)


def evaluate_features(
    feats: dict[Path, np.ndarray], q: list[Item], galleries: list[list[Item]], dist_fn, junk
) -> tuple[float, float]:
    qf = np.stack([feats[x.path] for x in q])
    results = [score(dist_fn(qf, np.stack([feats[x.path] for x in g])), q, g, junk) for g in galleries]
    return float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results]))


def chance(q: list[Item], galleries: list[list[Item]], junk, repeats: int = 5) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    results = [score(rng.random((len(q), len(g))), q, g, junk) for g in galleries for _ in range(repeats)]
    return float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results]))


# ------------------------------------------------------------------------------------------ CNN check


def train_cnn(root: Path, steps: int, size: tuple[int, int], seed: int = 0, gray: float = 0.0):
    """Train a random-init torchvision ResNet-18 with plain cross-entropy on train+val ids, both modalities.

    Returns a function mapping image paths to L2-normalised 512-d pooled features.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ids = []
    for name in ("train_id.txt", "val_id.txt"):
        ids += [int(v) for v in (root / "exp" / name).read_text().splitlines()[0].split(",")]
    paths, labels = [], []
    label_of = {pid: i for i, pid in enumerate(sorted(ids))}
    for cam in (*VISIBLE_CAMS, *INFRARED_CAMS):
        for pid in sorted(ids):
            folder = root / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    paths.append(p)
                    labels.append(label_of[pid])

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def load(ps: list[Path]) -> torch.Tensor:
        arr = np.stack(
            [np.asarray(Image.open(p).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)) for p in ps]
        )
        return ((torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0) - mean) / std

    x = load(paths)
    y = torch.tensor(labels)
    model = torchvision.models.resnet18(num_classes=len(ids))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    start = time.perf_counter()
    seen = 0
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        xb = x[idx]
        flip = torch.rand(len(idx), generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        if gray > 0:  # optional random greyscale (a common cross-modal augmentation), off for the plain check
            to_gray = torch.rand(len(idx), generator=g) < gray
            g3 = (xb * std + mean).mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            xb = torch.where(to_gray.view(-1, 1, 1, 1), (g3.expand_as(xb) - mean) / std, xb)
        shift = torch.randint(-3, 4, (2,), generator=g)
        xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(idx)
    took = time.perf_counter() - start
    print(
        f"  CNN: {steps} steps of 64, {seen / len(x):.1f} epochs over {len(x)} images in {took:.0f} s, "
        f"last loss {loss.item():.3f}"
    )
    model.fc = torch.nn.Identity()
    model.eval()

    def embed(ps: list[Path]) -> np.ndarray:
        with torch.no_grad():
            feats = torch.cat([model(load(ps[i : i + 256])) for i in range(0, len(ps), 256)])
        return torch.nn.functional.normalize(feats, dim=1).numpy()

    return embed


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - a @ b.T


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="existing sysu-layout set (default: generate one)")
    ap.add_argument("--ids", type=int, default=None)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ir-look", default="auto", choices=["auto", "thermal", "nir"])
    ap.add_argument("--cnn-steps", type=int, default=0, help="also train a small CNN for this many steps of 64")
    ap.add_argument("--cnn-size", default="64x32")
    ap.add_argument("--cnn-gray", type=float, default=0.0, help="probability of converting a training image to grey")
    args = ap.parse_args(argv)

    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name) / "sysu"
        opts = SynthOptions(
            num_ids=args.ids, seed=args.seed, difficulty=args.difficulty, workers=args.workers, ir_look=args.ir_look
        )
        summary = write_layout("sysu", root, opts)
        print(summary.describe())
        print(
            f"generation: {summary.files} images in {summary.seconds:.1f} s "
            f"({summary.files / summary.seconds:.0f} images/s, workers={args.workers})"
        )

    ids, folders = read_sysu_test(root)
    q_ir = queries(ids, folders, INFRARED_CAMS)
    q_vis = queries(ids, folders, VISIBLE_CAMS)
    galleries = [gallery(ids, folders, t) for t in range(10)]
    print(
        f"test ids {len(ids)}, infrared queries {len(q_ir)}, visible queries {len(q_vis)}, "
        f"gallery {len(galleries[0])} per trial"
    )

    all_paths = {x.path for x in q_ir + q_vis} | {x.path for g in galleries for x in g}
    images = {p: np.asarray(Image.open(p).convert("RGB")) for p in all_paths}
    rows = []
    rows.append(("chance", "IR -> VIS", *chance(q_ir, galleries, cross_modal_junk)))
    rows.append(("chance", "VIS -> VIS", *chance(q_vis, galleries, same_camera_junk)))
    for name, fn in (("RGB histogram, chi2", rgb_histogram), ("HSV histogram, chi2", hsv_histogram)):
        feats = {p: fn(img) for p, img in images.items()}
        rows.append((name, "IR -> VIS", *evaluate_features(feats, q_ir, galleries, chi_square, cross_modal_junk)))
        rows.append((name, "VIS -> VIS", *evaluate_features(feats, q_vis, galleries, chi_square, same_camera_junk)))
    if args.cnn_steps > 0:
        h, w = (int(v) for v in args.cnn_size.lower().split("x"))
        embed = train_cnn(root, args.cnn_steps, (h, w), seed=args.seed, gray=args.cnn_gray)
        paths = sorted(all_paths)
        feats = dict(zip(paths, embed(paths)))
        label = f"ResNet-18 CE {args.cnn_steps} steps {h}x{w}" + (f" gray{args.cnn_gray:g}" if args.cnn_gray else "")
        rows.append((label, "IR -> VIS", *evaluate_features(feats, q_ir, galleries, cosine_distance, cross_modal_junk)))
        rows.append(
            (label, "VIS -> VIS", *evaluate_features(feats, q_vis, galleries, cosine_distance, same_camera_junk))
        )

    print()
    print(f"| {'matcher':<28} | {'direction':<10} | {'rank-1 %':>8} | {'mAP %':>6} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 10}|{'-' * 8}|")
    for name, direction, r1, m in rows:
        print(f"| {name:<28} | {direction:<10} | {r1:8.2f} | {m:6.2f} |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
