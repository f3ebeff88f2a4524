"""Serving: `raytt serve` over loopback against the in-process `Retriever`, and the ANN index against exact search.

Part 1, latency. A synthetic bank (--vectors, default 50,000 x 384) and its shards; an untrained GRU tower
(speed does not depend on training) exported by `raytt export`; `raytt serve` with one replica of one CPU.
--requests requests of 5-key contexts per concurrency level (1, 4, 16) over HTTP on 127.0.0.1: p50/p95/p99
latency and QPS, as ratios to the in-process `Retriever.search` on the same contexts, one call at a time.

Part 2, ANN. The synthetic corpus at --ann-vectors (default 1,000,000) x 384, and the oracle predictor's
queries for 2,500 sampled windows (what a well-trained tower asks). The default factory's index for that
size is built and calibrated as `raytt export` does (on 500 of the queries), then the other 2,000 measure
its Recall@10 against exact search and its queries/s against exact search, both batched (targets: >= 0.98
recall at >= 10x the speed).

    python bench/serve.py [--vectors 50000] [--requests 300] [--ann-vectors 1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from raytt import ann
from raytt.export import export
from raytt.retriever import Retriever
from raytt.sequences import BuildConfig, build_shards
from raytt.synthetic import SynthConfig, generate

QUIET = lambda *_: None


def exported_tower(work: Path, vectors: int) -> Path:
    """A synthetic bank, its shards, an untrained GRU run and its export."""
    import dataclasses

    import torch

    from raytt import checkpoints, config
    from raytt.bank import scan_bank
    from raytt.towers import TowerConfig, TwoTower
    from raytt.training.config import TrainConfig

    generate(SynthConfig(num_vectors=vectors, dim=384), work / "bank", progress=QUIET)
    build_shards(scan_bank(work / "bank"), work / "shards", BuildConfig(context_len=5), progress=QUIET)
    tower = TowerConfig(query="gru")
    torch.manual_seed(0)
    run = work / "run"
    (run / "best").mkdir(parents=True)
    config.dump(config.from_dict(TrainConfig, {"data": {"shards": str(work / "shards")}}), run / "config.yaml")
    meta = {"step": 0, "tower": dataclasses.asdict(tower), "dim": 384}
    checkpoints.save(run / "best", TwoTower(tower, 384), {}, meta)
    return export(run, work / "export", progress=QUIET)


def latencies(call, contexts: list, concurrency: int) -> tuple[np.ndarray, float]:
    """Per-request seconds and the requests/s of sending every context, `concurrency` at a time."""

    def timed(context):
        started = time.perf_counter()
        call(context)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        seconds = np.array(list(pool.map(timed, contexts)))
    return seconds, len(contexts) / (time.perf_counter() - started)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_part(folder: Path, requests: int) -> None:
    from ray import serve as ray_serve

    from raytt.serving import ServeConfig, serve

    retriever = Retriever.load(folder)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(retriever.vectors) - 5, requests)
    contexts = [list(range(int(s), int(s) + 5)) for s in starts]
    for context in contexts[:20]:
        retriever.search([context], 10)
    local, local_qps = latencies(lambda c: retriever.search([c], 10), contexts, 1)
    url = serve(folder, None, ServeConfig(port=free_port(), num_cpus=1), progress=QUIET, block=False)
    try:
        for context in contexts[:20]:
            post(f"{url}/search", {"context": context, "k": 10})
        print(f"in-process Retriever.search, one at a time: p50 {_ms(local, 50)}, QPS {local_qps:,.0f}")
        print("concurrency   p50 ms   p95 ms   p99 ms      QPS   p50 / in-process   QPS / in-process")
        for concurrency in (1, 4, 16):
            seconds, qps = latencies(lambda c: post(f"{url}/search", {"context": c, "k": 10}), contexts, concurrency)
            print(
                f"{concurrency:>11} {_ms(seconds, 50):>8} {_ms(seconds, 95):>8} {_ms(seconds, 99):>8} {qps:>8,.0f}"
                f"   {np.percentile(seconds, 50) / np.percentile(local, 50):>16.2f}   {qps / local_qps:>16.2f}"
            )
    finally:
        ray_serve.shutdown()


def _ms(seconds: np.ndarray, q: int) -> str:
    return f"{1000 * np.percentile(seconds, q):.2f}"


def ann_part(work: Path, n: int) -> None:
    from raytt.bank import load_bank
    from raytt.sequences import sample_windows
    from raytt.synthetic import OraclePredictor

    generate(SynthConfig(num_vectors=n, dim=384), work / "ann_bank", progress=QUIET)
    bank = load_bank(work / "ann_bank")
    _, _, target = sample_windows(bank, 5, 2500, seed=1)
    queries = OraclePredictor(work / "ann_bank").predict(target)  # what a well-trained tower asks
    calibration, measured = queries[:500], queries[500:]
    factory = ann.default_factory(n)
    started = time.perf_counter()
    index = ann.build(bank.vectors, factory, progress=QUIET)
    built = time.perf_counter() - started
    chosen = ann.calibrate(index, ann.exact_top(bank.vectors, calibration, 10)[1], calibration, 0.98)
    started = time.perf_counter()
    exact = ann.exact_top(bank.vectors, measured, 10)[1]
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    found = index.search(measured, 10)[1]
    ann_s = time.perf_counter() - started
    recall = ann.recall_at_10(found, exact)
    print(
        f"ANN {factory} ({chosen.parameter}, calibrated on 500 queries to Recall@10 {chosen.recall_at_10:.4f}) over "
        f"the {n:,} x 384 synthetic bank, built in {built:.0f}s; {len(measured):,} other queries:"
    )
    print(
        f"  Recall@10 / exact {recall:.4f} (target >= 0.98); queries/s {len(measured) / ann_s:,.0f} against exact "
        f"{len(measured) / exact_s:,.0f}: {exact_s / ann_s:.1f}x (target >= 10x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=50_000, help="the served bank's size")
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level (0 = skip)")
    parser.add_argument("--ann-vectors", type=int, default=1_000_000, help="the ANN part's bank size (0 = skip)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    if args.requests:
        serve_part(exported_tower(work, args.vectors), args.requests)
    if args.ann_vectors:
        ann_part(work, args.ann_vectors)


if __name__ == "__main__":
    main()
