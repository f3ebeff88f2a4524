"""Numbers with their uncertainty: per-query metric values and paired bootstrap intervals of differences.

A metric over Q queries is a mean of per-query values (R@K: a hit or not; MRR@K: 1/rank; NDCG@K:
1/log2(rank + 1)), so the difference of two methods on the same queries is the mean of per-query
differences. Resampling those queries with replacement, and taking the percentile interval of the
resampled means, says how much of a gap could be luck of the query draw.

The bootstrap is paired: both methods see the same resampled queries. Query difficulty is shared by
the methods (a query one method finds is usually easy for the other too), so the paired interval of a
difference is far narrower than two separate intervals would suggest; resampling the methods
independently would count that shared difficulty twice.
"""

from __future__ import annotations

import numpy as np

from raytt.errors import RayttError

RESAMPLES = 2000
LEVEL = 0.95
CHUNK_ELEMENTS = 1 << 22  # resampled query indices held at once (16 MiB of int32)
METRICS = ("R", "MRR", "NDCG")


def per_query(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-query values of `metric` (`R@K`, `MRR@K` or `NDCG@K`) from 1-based ranks of the truth.

    Their mean is the metric of `raytt.evaluation.metrics`: R@K is 1 if rank <= K else 0; MRR@K is
    1/rank within the top K, else 0; NDCG@K (one relevant item) is 1/log2(rank + 1) within the top K, else 0.
    """
    name, k = check_metric(metric)
    r = np.asarray(ranks, dtype=np.float64)
    if r.size and r.min() < 1:
        raise RayttError(f"per_query: ranks are 1-based, got a rank of {r.min():g}")
    hit = r <= k
    if name == "R":
        return hit.astype(np.float64)
    gain = 1.0 / r if name == "MRR" else 1.0 / np.log2(r + 1.0)
    return np.where(hit, gain, 0.0)


def check_metric(metric: str) -> tuple[str, int]:
    """(`R`, `MRR` or `NDCG`, K) of a metric name like `R@100`, or an error naming what is wrong."""
    name, _, k = metric.partition("@")
    if name not in METRICS or not k.isdigit() or int(k) < 1:
        raise RayttError(f"metric must be R@K, MRR@K or NDCG@K with K >= 1, got {metric!r}")
    return name, int(k)


def resampled_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of `values` over `resamples` draws of its rows with replacement, deterministic by `seed`.

    Draws are made in chunks of at most CHUNK_ELEMENTS indices, so memory stays bounded for any
    number of queries; the chunking depends only on the number of rows, so a seed gives one answer.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // n)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(size, n), dtype=np.int64 if n > np.iinfo(np.int32).max else np.int32)
        means[start : start + size] = values[idx].mean(1)
    return means


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """Mean of a - b over the queries, and its `level` percentile bootstrap interval: (diff, low, high).

    `a` and `b` hold per-query values of two methods on the same queries, in the same order. Every
    resample draws one set of query indices and uses it for both (the mean of a[i] - b[i] equals
    mean a[i] - mean b[i]), so the interval reflects only how the methods differ query by query.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise RayttError(f"paired_bootstrap: needs two 1-D arrays over the same queries, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise RayttError("paired_bootstrap: no queries")
    if resamples < 1 or not 0 < level < 1:
        raise RayttError(f"paired_bootstrap: needs resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    diff = a - b
    tail = (1 - level) / 2
    low, high = np.quantile(resampled_means(diff, resamples, seed), [tail, 1 - tail])
    return float(diff.mean()), float(low), float(high)


def excludes_zero(low: float, high: float) -> bool:
    """Whether an interval lies wholly on one side of 0 (the difference is unlikely to be luck of the draw)."""
    return low > 0 or high < 0


def describe(diff: float, low: float, high: float) -> str:
    """`+0.436 [+0.421, +0.451] *`: the difference, its interval, and `*` when the interval excludes 0."""
    return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]" + (" *" if excludes_zero(low, high) else "  ")
