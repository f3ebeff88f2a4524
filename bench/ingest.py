"""Ingest throughput: `raytt ingest` (Ray Data tasks chunking, an encoder actor embedding) against a bare
`SentenceTransformer.encode` loop over the same chunks, in the same run on the same machine.

raytt is timed end to end from the call to the written bank (listing, chunking, the actor's model load,
embedding, shard and bank writes; Ray itself is started before). The bare loop is timed around
`encode` alone, with the model already loaded and torch using every core. Each side runs twice (raytt
first, into a fresh bank each time; the driver has sentence-transformers imported on its second run)
and its faster run counts: the same encode call varies by 20% between runs on a shared machine.
Printed as a ratio (target >= 0.8).

The default is the first 400 pages of the Python docs (about 12k chunks, 16 minutes here): at that
size the fixed start-up (about 20 s) no longer hides the rate. `--docs 120` takes 3 minutes.

    python bench/ingest.py [--input /usr/share/doc/python3.11/html --suffixes .html --docs 400]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq

from raytt.corpus.config import IngestConfig
from raytt.corpus.embed import load
from raytt.corpus.ingest import ingest, list_documents


def bare_encode(texts: list[str], embedder: str, batch_size: int) -> float:
    """Seconds for one `encode` call over every chunk (model loaded before the clock starts)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = load(embedder, "cpu")
    model.encode(texts[:batch_size], batch_size=batch_size, normalize_embeddings=True)  # warm-up
    started = time.perf_counter()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    ap.add_argument("--suffixes", default=".html")
    ap.add_argument("--docs", type=int, default=400, help="documents taken from the input, in sorted order")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    cfg = IngestConfig(suffixes=tuple(args.suffixes.split(",")), batch_size=args.batch_size, files_per_shard=10)
    work = Path(tempfile.mkdtemp(prefix="raytt-bench-ingest-"))
    docs = work / "docs"
    for path in list_documents(args.input, cfg.suffixes)[: args.docs]:
        link = docs / path.relative_to(args.input)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)

    import ray

    ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False)
    raytt_runs = []
    for run in range(2):
        started = time.perf_counter()
        manifest = ingest(docs, work / f"bank{run}", cfg, progress=lambda *_: None)
        raytt_runs.append(time.perf_counter() - started)
    ray.shutdown()
    raytt_s = min(raytt_runs)
    texts = pq.read_table(work / "bank0" / "vectors").sort_by("key").column("text").to_pylist()
    bare_s = min(bare_encode(texts, cfg.embedder, cfg.batch_size) for _ in range(2))
    n = manifest.num_vectors
    print(f"ingest: {args.docs} documents -> {n:,} chunks, {manifest.embedder_id}, {os.cpu_count()} cores")
    print(f"  bare SentenceTransformer.encode: {n / bare_s:,.1f} chunks/s ({bare_s:.1f} s)")
    print(
        f"  raytt ingest end to end:         {n / raytt_s:,.1f} chunks/s ({raytt_s:.1f} s)  "
        f"ratio {bare_s / raytt_s:.2f} (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
