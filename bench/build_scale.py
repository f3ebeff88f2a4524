"""Shard-build scale: rows/s and peak RSS of `raytt build` on 100k and 1M synthetic vectors (dim 384).

Baselines measured in the same run, on the same files: a bare pyarrow scan of every bank column
(what the build must read anyway to verify the bank) for speed, and the bank's own vector bytes for
memory. Each measurement runs in a fresh process so its peak RSS is its own.

    python bench/build_scale.py [--sizes 100000,1000000] [--dim 384] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = {
    "scan": """
        import pyarrow.parquet as pq
        from raytt.bank import read_manifest
        m = read_manifest(BANK)
        for f in m.files:
            for _ in pq.ParquetFile(f"{BANK}/{f}").iter_batches(batch_size=65536):
                pass
    """,
    "build": """
        from raytt.commands import build
        from raytt.sequences import BuildConfig
        build(BANK, OUT, BuildConfig(context_len=5), overwrite=True, progress=lambda s: None)
    """,
}


def measure(kind: str, bank: Path, out: Path) -> dict:
    """Run one step in a fresh interpreter; return its wall seconds and peak RSS bytes."""
    code = (
        textwrap.dedent(f"""
        import json, resource, time
        BANK, OUT = {str(bank)!r}, {str(out)!r}
        t0 = time.perf_counter()
    """)
        + textwrap.dedent(CHILD[kind])
        + textwrap.dedent("""
        print(json.dumps({"seconds": time.perf_counter() - t0,
                          "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    """)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from raytt.sequences import open_shards
    from raytt.synthetic import SynthConfig, generate

    work = args.workdir or Path(tempfile.mkdtemp(prefix="raytt-bench-"))
    print(
        f"{'vectors':>9} {'rows':>9} {'build rows/s':>13} {'scan rows/s':>12} {'speed ratio':>12} "
        f"{'bank MiB':>9} {'peak RSS MiB':>13} {'RSS/bank':>9}"
    )
    for n in [int(s) for s in args.sizes.split(",")]:
        bank, out = work / f"bank-{n}", work / f"shards-{n}"
        if not (bank / "manifest.json").exists():
            generate(SynthConfig(num_vectors=n, dim=args.dim), bank, progress=lambda s: None)
        scan = measure("scan", bank, out)
        built = measure("build", bank, out)
        shards = open_shards(out)
        rows = sum(shards.rows(s) for s in ("train", "val", "test"))
        bank_bytes = n * args.dim * 4
        print(
            f"{n:>9,} {rows:>9,} {rows / built['seconds']:>13,.0f} {rows / scan['seconds']:>12,.0f} "
            f"{scan['seconds'] / built['seconds']:>12.2f} {bank_bytes / 2**20:>9,.0f} "
            f"{built['peak_rss'] / 2**20:>13,.0f} {built['peak_rss'] / bank_bytes:>9.2f}",
            flush=True,
        )
    print(
        "speed ratio = bare pyarrow scan time / build time (1.0 = build costs no more than reading the bank);"
        " target RSS/bank <= 2.0"
    )


if __name__ == "__main__":
    main()
