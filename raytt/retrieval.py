"""Exact full-bank ranking of the truth: the one number that in-batch metrics hide.

`scan` scores every query against every index vector in chunks (never a [Q, N] matrix held whole)
and returns, per query, the 1-based rank of its truth in two views: all candidates, and with the
query's own context chunks removed. Ties count against the model: any other candidate scoring
within `TIE_EPS` of the truth (or above it) ranks ahead of it. It also keeps the top-m impostors
(best-scoring candidates other than the truth) for diagnostics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

TIE_EPS = 1e-5


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a numpy array, read-only ones (from the object store) included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Scan:
    """Per-query results of one pass over the index."""

    ranks: np.ndarray          # [Q] rank of the truth among all candidates
    ranks_excl: np.ndarray     # [Q] rank with the query's context chunks removed
    truth_score: np.ndarray    # [Q] q . index[truth]
    top_scores: np.ndarray     # [Q, m] best impostor scores, descending
    top_keys: np.ndarray       # [Q, m] their keys


def scan(queries: np.ndarray, truth: np.ndarray, index: np.ndarray, context: np.ndarray | None = None,
         top_m: int = 1, bank_chunk: int = 32_768, query_block: int = 1_024, device: str | None = None) -> Scan:
    """Rank every query's truth against the whole index (exact inner product), in both views.

    `context` [Q, k] holds each query's context keys (-1 = padding); the truth is never a candidate
    against itself. The context-excluded rank is the all-candidates rank minus the context chunks that
    scored at or above the truth, so the two views differ by exactly those chunks.
    """
    device = device or default_device()
    q_all = as_tensor(np.ascontiguousarray(queries, dtype=np.float32))
    idx = as_tensor(index)
    idx_dev = idx.to(device) if device != "cpu" else idx
    truth_t = torch.as_tensor(np.asarray(truth, dtype=np.int64))
    n, nq = idx.shape[0], len(truth_t)
    m = min(top_m, n - 1)
    counts = torch.empty(nq, dtype=torch.int64)
    truth_score = torch.empty(nq)
    top_s = torch.empty(nq, m)
    top_k = torch.empty(nq, m, dtype=torch.int64)
    for qs in range(0, nq, query_block):
        q = q_all[qs:qs + query_block].to(device)
        t = truth_t[qs:qs + query_block].to(device)
        target = (q * idx_dev[t]).sum(1)
        threshold = (target - TIE_EPS)[:, None]
        count = torch.zeros(len(t), dtype=torch.int64, device=device)
        best_s = torch.full((len(t), m), -torch.inf, device=device)
        best_k = torch.full((len(t), m), -1, dtype=torch.int64, device=device)
        for bs in range(0, n, bank_chunk):
            scores = q @ idx_dev[bs:bs + bank_chunk].T
            inside = (t >= bs) & (t < bs + scores.shape[1])
            rows = torch.nonzero(inside).squeeze(1)
            scores[rows, t[rows] - bs] = -torch.inf
            count += (scores >= threshold).sum(1)
            if m:
                s, k = scores.topk(m, dim=1)
                merged_s, order = torch.cat([best_s, s], 1).topk(m, dim=1)
                best_k = torch.cat([best_k, k + bs], 1).gather(1, order)
                best_s = merged_s
        sl = slice(qs, qs + len(t))
        counts[sl], truth_score[sl] = count.cpu(), target.cpu()
        top_s[sl], top_k[sl] = best_s.cpu(), best_k.cpu()
    ranks = counts.numpy() + 1
    ranks_excl = ranks.copy()
    if context is not None:
        ranks_excl -= _context_ahead(q_all, idx, np.asarray(context, dtype=np.int64), truth_score.numpy(),
                                     np.asarray(truth, dtype=np.int64))
    return Scan(ranks, ranks_excl, truth_score.numpy(), top_s.numpy(), top_k.numpy())


def _context_ahead(queries: torch.Tensor, index: torch.Tensor, context: np.ndarray, truth_score: np.ndarray,
                   truth: np.ndarray) -> np.ndarray:
    """Per query, how many distinct context chunks (other than the truth) score at or above the truth."""
    keys = np.where(context == truth[:, None], -1, context)
    keys = np.where(_first_occurrence(keys), keys, -1)
    ctx = torch.as_tensor(keys)
    vecs = index[ctx.clamp(min=0)]
    scores = torch.einsum("qd,qkd->qk", queries, vecs).numpy()
    return ((scores >= truth_score[:, None] - TIE_EPS) & (keys >= 0)).sum(1)


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """[Q, k] True for the first time each key appears in its row (repeated context keys count once)."""
    order = np.argsort(keys, axis=1, kind="stable")
    sorted_keys = np.take_along_axis(keys, order, 1)
    first_sorted = np.ones_like(sorted_keys, dtype=bool)
    first_sorted[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    out = np.empty_like(first_sorted)
    np.put_along_axis(out, order, first_sorted, 1)
    return out


def truth_ranks(queries: np.ndarray, truth: np.ndarray, bank: np.ndarray, exclude: np.ndarray | None = None,
                **kwargs) -> np.ndarray:
    """1-based rank of `bank[truth[i]]` for query i; with `exclude` [Q, m], the context-excluded rank."""
    result = scan(queries, truth, bank, context=exclude, top_m=0, **kwargs)
    return result.ranks if exclude is None else result.ranks_excl


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose truth ranks within the top k."""
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def mrr_at(ranks: np.ndarray, k: int = 10) -> float:
    """Mean reciprocal rank, counting ranks beyond k as 0."""
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0))) if len(ranks) else float("nan")


def ndcg_at(ranks: np.ndarray, k: int = 10) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) within the top k (the ideal DCG is 1)."""
    return float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0))) if len(ranks) else float("nan")
