"""Evaluation speed: vireid's `evaluate` against the plain per-query loop and a bare sort of the same matrix.

Run:  PYTHONPATH=src python benchmarks/eval_speed.py [--threads N] [--quick] [--skip-msmt] [--skip-rerank]

Cases (all timings side by side in one run, best of `--repeat`):

* SYSU multi-shot size: 3,803 queries x 3,010 gallery, 96 identities, queries from cams 3/6, gallery from
  cams 1/2/4/5, ~8 shots per (identity, camera). Two score matrices: uniform random (worst case: matches are
  spread over the whole ranking) and "model-like" (squared distances of noisy identity-centred features).
  Rules: ``sysu`` (cam3->cam2 removal, de-duplicated CMC) and ``regdb`` (plain CMC).
* MSMT size: 10,000 queries x 100,000 gallery (3,060 identities, 15 cameras, ``market`` rule). ``evaluate``
  runs on the whole matrix; the per-query loop and the sorts run on the first ``--msmt-sample`` queries and
  are extrapolated linearly (their cost is the same for every query), which the table says.
* Re-ranking at SYSU single-shot size: 3,803 queries + 301 gallery, 2,048-d features, both variants.

``evaluate`` is timed with both implementations of its metric pass: the default on the CPU (the numba-compiled
kernel when numba is installed, ``pip install "vireid[fast]"``) and ``backend="torch"`` (the PyTorch path that
also runs on GPUs). Compilation is a one-off cost per machine (numba caches the machine code on disk); it is
measured separately, in fresh processes, with an empty and then a warm cache.

Every ``evaluate`` result is asserted equal to the reference loop's (identical CMC, mAP and mINP to 1e-12).
Peak memory is measured in a fresh subprocess per measurement (peak RSS minus the RSS before the call), since
tracemalloc does not see PyTorch's allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vireid.evaluation import compiled_metrics, evaluate  # noqa: E402
from vireid.evaluation.metrics import DEFAULT_CHUNK_ELEMENTS, resolve_backend  # noqa: E402
from vireid.evaluation.reference import reference_evaluate  # noqa: E402
from vireid.evaluation.rerank import k_reciprocal_distance  # noqa: E402

DEFAULT = resolve_backend("auto", torch.device("cpu"))

# ------------------------------------------------------------------------------------------------ data


def sysu_labels(rng: np.random.Generator):
    """3,803 queries (cams 3/6) and 3,010 gallery items (cams 1/2/4/5, ~8 shots each) over 96 identities."""
    shots = np.array([(pid, cam) for pid in range(96) for cam in (1, 2, 4, 5) for _ in range(8)])  # 3,072
    gallery = shots[np.sort(rng.choice(len(shots), 3010, replace=False))]
    q_pids = np.sort(np.resize(np.arange(96), 3803))
    q_cams = np.where(np.arange(3803) % 2 == 0, 3, 6)
    return q_pids, gallery[:, 0], q_cams, gallery[:, 1]


def msmt_labels(rng: np.random.Generator, num_q: int = 10_000, num_g: int = 100_000):
    num_ids = 3060
    g_pids = rng.integers(0, num_ids, num_g)
    q_pids = rng.integers(0, num_ids, num_q)
    return q_pids, g_pids, rng.integers(1, 16, num_q), rng.integers(1, 16, num_g)


def model_like(q_pids, g_pids, rng: np.random.Generator, dim: int = 64) -> np.ndarray:
    """Squared distances of L2-normalised noisy identity-centred features (mAP in the tens of percent)."""
    centres = rng.standard_normal((int(max(q_pids.max(), g_pids.max())) + 1, dim)).astype(np.float32)
    q = torch.from_numpy(centres[q_pids] + 1.4 * rng.standard_normal((len(q_pids), dim)).astype(np.float32))
    g = torch.from_numpy(centres[g_pids] + 1.4 * rng.standard_normal((len(g_pids), dim)).astype(np.float32))
    q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    dist = torch.mm(q, g.T, out=torch.empty(len(q), len(g)))  # in place: the MSMT matrix alone is 4 GB
    return dist.mul_(-2.0).add_(2.0).numpy()


# --------------------------------------------------------------------------------------------- timing


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def extra_peak(fn) -> float:
    """Peak RSS reached while running fn, minus the RSS before it (MB)."""
    reset_peak()
    before = rss_mb()
    fn()
    return peak_mb() - before


def child_memory(args: argparse.Namespace) -> None:
    """Subprocess mode: build one case, run one operation, print its extra peak memory (MB) as JSON."""
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    if args.child == "compile":
        start = time.perf_counter()
        for dtype in (np.float32, np.float64):
            evaluate(rng.random((8, 40)).astype(dtype), np.arange(8) % 3, np.arange(40) % 3, None, None, "regdb")
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    if args.child.startswith("rerank"):
        q = torch.nn.functional.normalize(torch.randn(3803, 2048), dim=1)
        g = torch.nn.functional.normalize(torch.randn(301, 2048), dim=1)
        extra = extra_peak(lambda: k_reciprocal_distance(q, g, variant=args.child.split(":")[1]))
    else:
        q_pids, g_pids, q_cams, g_cams = sysu_labels(rng)
        dist = rng.random((3803, 3010), dtype=np.float32)
        ops = {
            "evaluate": lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, "sysu"),
            "evaluate:torch": lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, "sysu", backend="torch"),
            "torch.sort": lambda: torch.sort(torch.from_numpy(dist), dim=1),
            "np.argsort": lambda: np.argsort(dist, axis=1),
            "reference": lambda: reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, "sysu"),
        }
        # Import numba and load the cached kernel first: a one-off cost per process, not a per-call one.
        evaluate(dist[:4], q_pids[:4], g_pids, q_cams[:4], g_cams, "sysu")
        extra = extra_peak(ops[args.child])
    print(json.dumps({"extra_peak_mb": extra}))


def run_child(what: str, threads: int, env: dict[str, str] | None = None) -> dict[str, float]:
    if what == "evaluate":  # warm numba's cache first, so that compiling is not counted as evaluating
        run_child("compile", threads, env)
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_memory(what: str, threads: int) -> float:
    return run_child(what, threads)["extra_peak_mb"]


def compile_rows(threads: int) -> list[str]:
    """One-off cost of the compiled kernel: a fresh process with an empty numba cache, then with a warm one."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = run_child("compile", threads, env)["seconds"]
        warm = run_child("compile", threads, env)["seconds"]
    return [
        "\n**One-off cost of the compiled kernel** (first `evaluate` calls in a fresh process, float32 and float64"
        " distances)\n",
        "| numba cache | seconds |",
        "|---|---:|",
        f"| empty (compiles; once per machine and numba version) | {cold:.1f} |",
        f"| warm (loads the cached machine code) | {warm:.2f} |",
    ]


def assert_same(fast, ref) -> None:
    np.testing.assert_allclose(fast.cmc, ref.cmc, rtol=0, atol=1e-12)
    assert abs(fast.mAP - ref.mAP) < 1e-12 and abs(fast.mINP - ref.mINP) < 1e-12, (fast, ref)
    assert fast.num_valid_queries == ref.num_valid_queries


def row(name: str, seconds: float, base: float, note: str = "") -> str:
    return f"| {name} | {seconds * 1e3:,.1f} | {seconds / base:,.1f}x | {note} |"


# ---------------------------------------------------------------------------------------------- cases


def sysu_case(kind: str, rule: str, repeat: int) -> list[str]:
    rng = np.random.default_rng(0)
    q_pids, g_pids, q_cams, g_cams = sysu_labels(rng)
    dist = rng.random((3803, 3010), dtype=np.float32) if kind == "uniform" else model_like(q_pids, g_pids, rng)
    tensor = torch.from_numpy(dist)
    fast = evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule)
    t_eval = best_of(lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule), repeat)
    t_torch = best_of(lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule, backend="torch"), repeat)
    t_ref = best_of(lambda: reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule), 1)
    ref = reference_evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule)
    assert_same(fast, ref)
    assert_same(evaluate(dist, q_pids, g_pids, q_cams, g_cams, rule, backend="torch"), ref)
    t_sort = best_of(lambda: torch.sort(tensor, dim=1), max(1, repeat // 2))
    t_argsort = best_of(lambda: np.argsort(dist, axis=1), max(1, repeat // 2))
    title = (
        f"SYSU multi-shot size 3,803 x 3,010, {kind} scores, rule `{rule}`"
        f" (R1 {100 * fast.cmc[0]:.2f}, mAP {100 * fast.mAP:.2f})"
    )
    return [
        f"\n**{title}**\n",
        "| method | time (ms) | relative to `evaluate` | note |",
        "|---|---:|---:|---|",
        row(f"`evaluate` ({DEFAULT} backend, the default)", t_eval, t_eval, "numbers identical to the loop (asserted)"),
        row("`evaluate(..., backend='torch')`", t_torch, t_eval, "PyTorch path (GPU-capable); identical numbers"),
        row("per-query loop (`reference_evaluate`)", t_ref, t_eval, "stable argsort per query, spec in code"),
        row("bare `torch.sort(dist, dim=1)`", t_sort, t_eval, "sorting alone, no metric"),
        row("bare `np.argsort(dist, axis=1)`", t_argsort, t_eval, "sorting alone, no metric"),
    ]


def msmt_case(repeat: int, sample: int) -> list[str]:
    rng = np.random.default_rng(1)
    q_pids, g_pids, q_cams, g_cams = msmt_labels(rng)
    start = time.perf_counter()
    dist = model_like(q_pids, g_pids, rng, dim=32)
    build = time.perf_counter() - start
    fast = None

    def run() -> None:
        nonlocal fast
        fast = evaluate(dist, q_pids, g_pids, q_cams, g_cams, "market")

    extra = extra_peak(run)
    t_eval = best_of(lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, "market"), repeat)
    t_torch = best_of(lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, "market", backend="torch"), 1)
    sub = slice(0, sample)
    scale = len(q_pids) / sample
    part = dist[sub]
    ref_sub = reference_evaluate(part, q_pids[sub], g_pids, q_cams[sub], g_cams, "market")
    assert_same(evaluate(part, q_pids[sub], g_pids, q_cams[sub], g_cams, "market"), ref_sub)
    t_ref = scale * best_of(lambda: reference_evaluate(part, q_pids[sub], g_pids, q_cams[sub], g_cams, "market"), 1)
    t_sort = scale * best_of(lambda: torch.sort(torch.from_numpy(part), dim=1), 1)
    t_argsort = scale * best_of(lambda: np.argsort(part, axis=1), 1)
    note = f"measured on {sample} queries, x{scale:.0f}"
    return [
        f"\n**MSMT size 10,000 x 100,000 (1e9 scores, {dist.nbytes / 2**30:.1f} GiB float32, built in {build:.1f} s),"
        f" rule `market` (R1 {100 * fast.cmc[0]:.2f}, mAP {100 * fast.mAP:.2f})**\n",
        "| method | time (s) | relative to `evaluate` | note |",
        "|---|---:|---:|---|",
        f"| `evaluate` ({DEFAULT} backend, the default) | {t_eval:,.2f} | 1.0x | whole matrix; peak RSS growth"
        f" {extra:,.0f} MB (buffers may reuse heap freed after building the matrix: the SYSU table is the bound) |",
        f"| `evaluate(..., backend='torch')` | {t_torch:,.2f} | {t_torch / t_eval:,.1f}x | whole matrix |",
        f"| per-query loop (`reference_evaluate`) | {t_ref:,.1f} | {t_ref / t_eval:,.1f}x"
        f" | {note}; equal numbers asserted on the sample |",
        f"| bare `torch.sort(dist, dim=1)` | {t_sort:,.1f} | {t_sort / t_eval:,.1f}x | {note} |",
        f"| bare `np.argsort(dist, axis=1)` | {t_argsort:,.1f} | {t_argsort / t_eval:,.1f}x | {note} |",
    ]


def rerank_case(repeat: int) -> list[str]:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3803, 2048), dim=1)
    g = torch.nn.functional.normalize(torch.randn(301, 2048), dim=1)
    lines = [
        "\n**k-reciprocal re-ranking, SYSU single-shot size (3,803 queries + 301 gallery, 2,048-d)**\n",
        "| variant | time (s) | extra peak RSS (MB) |",
        "|---|---:|---:|",
    ]
    for variant in ("joint", "query_only"):
        t = best_of(lambda v=variant: k_reciprocal_distance(q, g, variant=v), repeat)
        lines.append(f"| `{variant}` | {t:.2f} | {measure_memory('rerank:' + variant, torch.get_num_threads()):,.0f} |")
    n = 3803 + 301
    lines.append(
        f"\nA dense implementation holds several (Q+G)^2 float matrices ({n * n * 4 / 2**20:,.0f} MB each) plus an"
        f" int64 argsort of the same size ({n * n * 8 / 2**20:,.0f} MB)."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no MSMT case")
    parser.add_argument("--skip-msmt", action="store_true")
    parser.add_argument("--skip-rerank", action="store_true")
    parser.add_argument("--msmt-sample", type=int, default=200)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(args)
        return
    torch.set_num_threads(args.threads)
    repeat = 2 if args.quick else args.repeat
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, numpy {np.__version__}, no GPU used; load average at start {' '.join(load)}.",
        f"`evaluate` chunk: {DEFAULT_CHUNK_ELEMENTS:,} matrix elements; default CPU backend: {DEFAULT}"
        + (f" (numba {compiled_metrics.numba_version()})." if DEFAULT == "numba" else " (numba is not installed)."),
    ]
    print("\n".join(lines), flush=True)
    if DEFAULT == "numba":
        block = compile_rows(args.threads)
        print("\n".join(block), flush=True)
        lines += block
    for kind in ("uniform", "model-like"):
        for rule in ("sysu", "regdb"):
            block = sysu_case(kind, rule, repeat)
            print("\n".join(block), flush=True)
            lines += block
    memory = [
        "\n**Extra peak memory, SYSU multi-shot size (uniform scores, `sysu` rule)**\n",
        "| operation | MB |",
        "|---|---:|",
    ]
    for what in ("evaluate", "evaluate:torch", "reference", "torch.sort", "np.argsort"):
        memory.append(f"| {what} | {measure_memory(what, args.threads):,.0f} |")
    print("\n".join(memory), flush=True)
    lines += memory
    if not (args.quick or args.skip_msmt):
        block = msmt_case(max(1, repeat // 2), args.msmt_sample)
        print("\n".join(block), flush=True)
        lines += block
    if not args.skip_rerank:
        block = rerank_case(max(1, repeat // 2))
        print("\n".join(block), flush=True)
        lines += block


if __name__ == "__main__":
    main()
