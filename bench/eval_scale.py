"""Evaluation scale: 10k queries ranked exactly against a 1M x 384 bank, in both views, on this machine.

Prints queries/s, peak RSS against the bank's own bytes (target <= bank + 1 GiB), and the achieved
GFLOP/s of the ranking as a ratio to a matmul roofline measured in the same run (target >= 0.6):
the best of several plain float32 GEMMs of the shapes the scan uses, with nothing else around them.
The roofline is measured just before and just after each scan and the higher value is used (this
machine is shared and noisy). The bank is random unit vectors: the scan's cost does not depend on what
the vectors mean. Two query sets bracket the cost: queries whose truth ranks near the top (most blocks
skip the count) and random queries (every block is counted, the worst case).

    python bench/eval_scale.py [--bank 1000000] [--queries 10000] [--dim 384] [--context 5]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from raytt.retrieval import scan


def unit_rows(rng: np.random.Generator, n: int, d: int, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, block):
        v = rng.standard_normal((min(block, n - s), d), dtype=np.float32)
        out[s : s + block] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def roofline(d: int, seconds: float = 3.0) -> float:
    """Best GFLOP/s of bare float32 matmuls of the scan's shape (query block x bank chunk) and a square one."""
    best = 0.0
    for m, n in ((1024, 32_768), (2048, 2048), (4096, 8192)):
        a, b = torch.randn(m, d), torch.randn(n, d)
        (a @ b.T)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b.T
            reps += 1
        best = max(best, 2 * m * n * d * reps / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--context", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rng = np.random.default_rng(0)
    bank = unit_rows(rng, args.bank, args.dim)
    truth = rng.integers(0, args.bank, args.queries)
    context = rng.integers(0, args.bank, (args.queries, args.context))
    regimes = {
        "realistic (truth + heavy noise)": bank[truth] + 5.0 * unit_rows(rng, args.queries, args.dim),
        "worst case (random queries)": unit_rows(rng, args.queries, args.dim),
    }
    print(
        f"eval_scale: {args.queries:,} queries x {args.bank:,} x {args.dim} bank, both views + top impostors, "
        f"{torch.get_num_threads()} threads"
    )
    for name, queries in regimes.items():
        before = roofline(args.dim)
        start = time.perf_counter()
        result = scan(queries, truth, bank, context=context, device="cpu")
        seconds = time.perf_counter() - start
        peak_gflops = max(before, roofline(args.dim))
        achieved = 2.0 * args.queries * args.bank * args.dim / seconds / 1e9
        print(
            f"  {name}: median rank {np.median(result.ranks):,.0f}, R@10 {np.mean(result.ranks <= 10):.3f}; "
            f"matmul roofline (best of just before and just after): {peak_gflops:.1f} GFLOP/s"
        )
        print(
            f"    {seconds:.1f} s = {args.queries / seconds:,.0f} queries/s; {achieved:.1f} GFLOP/s = "
            f"{achieved / peak_gflops:.2f} x roofline (target >= 0.6)"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"  peak RSS {rss / 2**30:.2f} GiB vs bank {bank.nbytes / 2**30:.2f} GiB: overhead "
        f"{(rss - bank.nbytes) / 2**30:.2f} GiB (target <= 1 GiB)"
    )


if __name__ == "__main__":
    main()
