"""Exact full-bank ranking of the truth: the one number that in-batch metrics hide.

`truth_ranks` scores every query against every bank vector in chunks (never a [Q, N] matrix held
whole) and returns the 1-based rank of each query's truth. Ties count against the model: any other
candidate scoring within `TIE_EPS` of the truth (or above it) ranks ahead of it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

TIE_EPS = 1e-5


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a numpy array, read-only ones (from the object store) included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def truth_ranks(queries: np.ndarray, truth: np.ndarray, bank: np.ndarray,
                exclude: np.ndarray | None = None, bank_chunk: int = 32_768,
                query_block: int = 1_024) -> np.ndarray:
    """1-based rank of `bank[truth[i]]` among all bank rows for query i (exact inner product).

    `exclude` ([Q, m] keys, -1 = none) removes candidates per query (the context-excluded view);
    the truth itself is never excluded.
    """
    q_all = as_tensor(np.ascontiguousarray(queries, dtype=np.float32))
    b_all = as_tensor(bank)
    truth_t = torch.as_tensor(np.asarray(truth, dtype=np.int64))
    excl_t = None if exclude is None else torch.as_tensor(np.asarray(exclude, dtype=np.int64))
    ranks = torch.empty(len(truth_t), dtype=torch.int64)
    for qs in range(0, len(truth_t), query_block):
        q = q_all[qs:qs + query_block]
        t = truth_t[qs:qs + query_block]
        target = (q * b_all[t]).sum(1)
        blocked = t[:, None] if excl_t is None else torch.cat([t[:, None], excl_t[qs:qs + query_block]], 1)
        count = torch.zeros(len(t), dtype=torch.int64)
        for bs in range(0, b_all.shape[0], bank_chunk):
            scores = q @ b_all[bs:bs + bank_chunk].T
            rows, cols = torch.nonzero((blocked >= bs) & (blocked < bs + scores.shape[1]), as_tuple=True)
            scores[rows, blocked[rows, cols] - bs] = -torch.inf
            count += (scores >= (target - TIE_EPS)[:, None]).sum(1)
        ranks[qs:qs + query_block] = count + 1
    return ranks.numpy()


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose truth ranks within the top k."""
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def mrr_at(ranks: np.ndarray, k: int = 10) -> float:
    """Mean reciprocal rank, counting ranks beyond k as 0."""
    return float(np.mean(np.where(ranks <= k, 1.0 / ranks, 0.0))) if len(ranks) else float("nan")
