"""Search latency against gallery size: exact torch (in memory and memory-mapped), exact faiss, faiss IVF.

Run: PYTHONPATH=src python benchmarks/search_speed.py [--sizes 10000 100000 1000000] [--dim 512]
     [--queries 1 64] [--repeats 5] [--nprobe 16] [--threads 2]

Features are synthetic 512-d float32 rows with identity structure (20 noisy views around each of N/20 random
identity centres, L2-normalised), the shape of a re-identification gallery; 512-d is the DIKDNet/CLIP width
and 2048-d AGW features cost 4x per query for every exact backend. For each gallery size the backends answer
the same query batches (queries are fresh views of gallery identities), round-robin after a warm-up, and the
table gives the median wall time per batch, the time per query, and recall@10 against exact search (IVF
only; the exact backends return the same top-10, which is checked).

* ``torch``: :func:`vireid.search.exact_topk` on an in-memory tensor (``search_index(in_memory=True)``).
* ``torch mmap``: the same on the memory-mapped feature file of a real ``.vidx`` index, the default path of
  ``vireid search`` (file in the page cache; block-wise, memory bounded by one block).
* ``faiss flat``: ``IndexFlatIP``, exact.
* ``faiss ivf``: ``IndexIVFFlat`` with nlist = min(1024, 4 sqrt(N), N / 39), trained on 64 x nlist rows,
  ``nprobe`` lists visited; build time is reported separately.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vireid.index import FeatureFileWriter, open_feature_file
from vireid.search import build_ivf, exact_topk, faiss_flat_index, faiss_topk

K = 10


def clustered_features(num: int, dim: int, seed: int, views: int = 20, noise: float = 0.6) -> np.ndarray:
    """(num, dim) unit rows: ``num / views`` random identity centres, each with ``views`` noisy copies."""
    rng = np.random.default_rng(seed)
    ids = max(1, num // views)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((num, dim), dtype=np.float32)
    block = 1 << 16
    for start in range(0, num, block):
        rows = np.arange(start, min(num, start + block))
        x = centres[rows % ids] + noise / math.sqrt(dim) * rng.standard_normal((len(rows), dim), dtype=np.float32)
        out[start : start + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def row(num: int, q: int, name: str, seconds: float, recall: str) -> str:
    return f"| {num:>9,} | {q:>7} | {name:<15} | {1000 * seconds:>10.2f} | {1000 * seconds / q:>10.3f} | {recall:>9} |"


HEADER = "|   gallery | queries | backend         | ms / batch | ms / query | recall@10 |"


def bench_size(num: int, args: argparse.Namespace, tmp: Path) -> tuple[list[str], str]:
    """Rows of the latency table and the row of the build table for one gallery size."""
    gallery = clustered_features(num, args.dim, seed=num)
    path = tmp / f"g{num}.safetensors"
    with FeatureFileWriter(path, num, args.dim) as writer:
        for start in range(0, num, 1 << 16):
            writer.write(gallery[start : start + (1 << 16)])
    mapped = open_feature_file(path)
    tensor = torch.from_numpy(gallery)
    start = time.perf_counter()
    flat = faiss_flat_index(gallery)
    flat_build = time.perf_counter() - start
    nlist = min(1024, round(4 * math.sqrt(num)), num // 39)  # faiss wants >= 39 training rows per list
    start = time.perf_counter()
    ivf = build_ivf(gallery, nlist)
    ivf_build = time.perf_counter() - start
    build = f"| {num:>9,} | {flat_build:>12.2f} | {nlist:>5} | {ivf_build:>11.1f} |"
    rows = []
    for q in args.queries:
        rng = np.random.default_rng(q)
        picks = rng.choice(num, size=q, replace=False)
        noise = 0.6 / math.sqrt(args.dim) * rng.standard_normal((q, args.dim), dtype=np.float32)
        queries = torch.nn.functional.normalize(torch.from_numpy(gallery[picks] + noise), dim=1)
        exact = exact_topk(queries, tensor, K)[1]
        assert torch.equal(exact_topk(queries, mapped, K)[1], exact)
        assert (faiss_topk(queries, flat, K)[1] == exact).float().mean() > 0.999  # equal up to exact ties
        ivf_name = f"faiss ivf p{args.nprobe}"
        fns = {
            "torch": lambda queries=queries: exact_topk(queries, tensor, K),
            "torch mmap": lambda queries=queries: exact_topk(queries, mapped, K),
            "faiss flat": lambda queries=queries: faiss_topk(queries, flat, K),
            ivf_name: lambda queries=queries: faiss_topk(queries, ivf, K, nprobe=args.nprobe),
        }
        times = median_times(fns, args.repeats)
        ivf_idx = faiss_topk(queries, ivf, K, nprobe=args.nprobe)[1]
        recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ivf_idx, exact)])
        for name, seconds in times.items():
            rows.append(row(num, q, name, seconds, f"{recall:.3f}" if name == ivf_name else "1 (exact)"))
            print(rows[-1], flush=True)
    return rows, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(
        f"search speed: {args.dim}-d float32 features, top-{K}, {args.threads} threads, torch {torch.__version__}, "
        f"faiss {faiss.__version__}, median of {args.repeats} round-robin repeats"
    )
    rows: list[str] = []
    builds: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for num in args.sizes:
            size_rows, build = bench_size(num, args, Path(tmp))
            rows += size_rows
            builds.append(build)
    print()
    print(HEADER)
    print("".join("|" if c == "|" else "-" for c in HEADER))
    print("\n".join(rows))
    print()
    print(f"| {'gallery':>9} | {'flat build s':>12} | {'nlist':>5} | {'IVF build s':>11} |")
    print("|-----------|--------------|-------|-------------|")
    print("\n".join(builds))


if __name__ == "__main__":
    main()
