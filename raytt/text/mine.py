"""Hard negatives mined once from the frozen encoder's cached vectors, filtered relative to the positive.

For each train query: its top `mine_depth` passages by the frozen encoder, without its judged
passages and without any candidate scoring above `mine_relative` x its best positive's score (such
near-ties are often unjudged positives: NV-Retriever's positive-aware "TopK-PercPos" filter); the
first `mined_negatives` that remain, -1 padded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from raytt.text.config import TextTrainConfig
from raytt.text.encode import Encoded
from raytt.text.shards import TextShards

CHUNK = 2048


def mine_from_frozen(
    cfg: TextTrainConfig, shards: TextShards, encoded: Encoded, progress: Callable[[str], None]
) -> np.ndarray:
    """[train queries, mined_negatives] passage keys, -1 where too few candidates survived the filter."""
    started = time.perf_counter()
    table = shards.table("train")
    positives = table["positives"].to_pylist()
    queries = torch.from_numpy(np.ascontiguousarray(encoded.queries("train"), np.float32))
    passages = torch.from_numpy(np.ascontiguousarray(encoded.passages(), np.float32))
    out = np.full((len(positives), cfg.data.mined_negatives), -1, np.int64)
    dropped = 0
    for start in range(0, len(positives), CHUNK):
        q = queries[start : start + CHUNK]
        score = q @ passages.T
        top_scores, top = torch.topk(score, min(cfg.data.mine_depth, passages.shape[0]), dim=1)
        for i, (keys, values) in enumerate(zip(top.tolist(), top_scores.tolist())):
            row = start + i
            judged = set(positives[row])
            ceiling = cfg.data.mine_relative * max(float(score[i, k]) for k in judged) if judged else np.inf
            kept = [k for k, v in zip(keys, values) if k not in judged and v <= ceiling]
            dropped += sum(1 for k, v in zip(keys, values) if k not in judged and v > ceiling)
            kept = kept[: cfg.data.mined_negatives]
            out[row, : len(kept)] = kept
    filled = float((out >= 0).sum(1).mean())
    progress(
        f"text-train: mined {cfg.data.mined_negatives} negatives per train query from {encoded.embedder_id}'s top "
        f"{cfg.data.mine_depth} ({filled:.1f} filled on average; {dropped:,} candidates above "
        f"{cfg.data.mine_relative:g} x the positive's score dropped) in {time.perf_counter() - started:.0f}s"
    )
    return out
