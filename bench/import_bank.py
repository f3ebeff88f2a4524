"""Import scale: rows/s and peak RSS of `raytt import-bank` on a synthetic .npy of unit rows + Parquet sidecar.

The source is R x D float32 (default 1,000,000 x 768: 3 GB) with a sidecar of article ids and positions
(`--per-article` chunks each; `--shuffle` permutes the rows so the import has to reorder them). The baseline,
measured in the same run on the same file, is a bare sequential read of the .npy in the import's batch size:
what any import must read anyway. Each measurement runs in a fresh process, so its peak RSS is its own.
Target: peak RSS / source bytes <= 0.25 (memory is a few batches, not the source).

    python bench/import_bank.py [--rows 1000000] [--dim 768] [--per-article 20] [--shuffle] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

BATCH_ROWS = 65_536

# Each step is (setup, timed part); RSS is the child's own high-water mark (VmHWM: ru_maxrss would include
# the parent's RSS at fork, which Linux carries across exec).
CHILD = {
    "read": (
        "import numpy as np",
        """
        with open(SRC, "rb") as fh:
            np.lib.format.read_magic(fh)
            (rows, dim), _, dtype = np.lib.format.read_array_header_1_0(fh)
            buf = np.empty((BATCH, dim), dtype=dtype)
            view = memoryview(buf).cast("B")
            while fh.readinto(view):
                pass
        """,
    ),
    "import": (
        "from raytt.sources import ImportConfig, import_bank",
        """
        cfg = ImportConfig(embedder_id="bench", batch_rows=BATCH)
        import_bank(SRC, OUT, cfg, overwrite=True, progress=lambda s: None)
        """,
    ),
}

HWM = """
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
"""


def measure(kind: str, src: Path, out: Path) -> dict:
    """Run one step in a fresh interpreter; return its wall seconds, its RSS after setup and its peak RSS."""
    setup, timed = CHILD[kind]
    code = "\n".join(
        [
            "import json, time",
            textwrap.dedent(HWM),
            f"SRC, OUT, BATCH = {str(src)!r}, {str(out)!r}, {BATCH_ROWS}",
            setup,
            "setup_rss = hwm()",
            "t0 = time.perf_counter()",
            textwrap.dedent(timed),
            'print(json.dumps({"seconds": time.perf_counter() - t0, "setup_rss": setup_rss, "peak_rss": hwm()}))',
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_source(work: Path, rows: int, dim: int, per_article: int, shuffle: bool) -> Path:
    """vectors.npy (unit rows, written in batches, never whole in memory) and its vectors.parquet sidecar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    src = work / "vectors.npy"
    with open(src, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for start in range(0, rows, BATCH_ROWS):
            block = rng.standard_normal((min(BATCH_ROWS, rows - start), dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            fh.write(block.data)
    keys = rng.permutation(rows) if shuffle else np.arange(rows)
    articles = pa.array([f"doc{k // per_article:07d}" for k in keys.tolist()], type=pa.string())
    pq.write_table(pa.table({"article_id": articles, "position": keys % per_article}), work / "vectors.parquet")
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--per-article", type=int, default=20)
    ap.add_argument("--shuffle", action="store_true", help="permute the rows: the import must reorder them")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="raytt-bench-import-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = write_source(work, args.rows, args.dim, args.per_article, args.shuffle)
        source_bytes = src.stat().st_size
        bare = measure("read", src, work / "bank")
        imported = measure("import", src, work / "bank")
    mib = 2**20
    print(
        f"{'rows':>10} {'dim':>5} {'order':>9} {'source MiB':>11} {'import rows/s':>14} {'read rows/s':>12} "
        f"{'import/read':>12} {'peak RSS MiB':>13} {'after imports':>14} {'RSS/source':>11}"
    )
    print(
        f"{args.rows:>10,} {args.dim:>5} {'shuffled' if args.shuffle else 'in order':>9} "
        f"{source_bytes / mib:>11,.0f} {args.rows / imported['seconds']:>14,.0f} {args.rows / bare['seconds']:>12,.0f} "
        f"{bare['seconds'] / imported['seconds']:>12.3f} {imported['peak_rss'] / mib:>13,.0f} "
        f"{imported['setup_rss'] / mib:>14,.0f} {imported['peak_rss'] / source_bytes:>11.3f}"
    )
    print(
        "import/read = import rows/s / bare sequential read rows/s; after imports = the child's RSS before the "
        "import starts (interpreter, numpy, pyarrow); target RSS/source <= 0.25"
    )


if __name__ == "__main__":
    main()
