"""Frozen-encoder speed and fidelity by precision: the same texts encoded in fp32 and under bf16 autocast by
raytt's encoder actor class (in-process), printed as a speed ratio and the vectors' cosine to fp32's.

    python bench/encode_precision.py [--corpus BEIR_DIR/corpus.jsonl] [--n 1500] [--threads 2]

Without --corpus the texts are Debian package descriptions read from apt's index when present, else
synthetic sentences. fp32 is timed before and after bf16; its baseline is the mean of the two.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np


def texts_from(corpus: str, n: int) -> list[str]:
    if corpus:
        with open(corpus, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in itertools.islice(f, n)]
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(2000)]
    return [" ".join(rng.choice(words, int(rng.integers(8, 120)))) for _ in range(n)]


def timed(encoder, batch: dict) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = np.stack(encoder(dict(batch))["vector"])
    return time.perf_counter() - started, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from raytt.corpus.embed import Encoder, native_bf16

    batch = {"text": np.array(sorted(texts_from(args.corpus, args.n), key=len), dtype=object)}
    fp32 = Encoder("all-MiniLM-L6-v2", "cpu", 64, args.threads, 128, "fp32")
    bf16 = Encoder("all-MiniLM-L6-v2", "cpu", 64, args.threads, 128, "bf16")
    before, reference = timed(fp32, batch)
    half, vectors = timed(bf16, batch)
    after, _ = timed(fp32, batch)
    cos = (reference * vectors).sum(1)
    base = (before + after) / 2
    print(
        f"encode precision: {len(batch['text']):,} texts, {args.threads} thread(s), native bf16: {native_bf16('cpu')}\n"
        f"  fp32 {base:.1f}s (before {before:.1f}s, after {after:.1f}s), bf16 {half:.1f}s: speed ratio "
        f"{base / half:.2f}x; cosine to fp32 min {cos.min():.5f} mean {cos.mean():.6f}"
    )


if __name__ == "__main__":
    main()
