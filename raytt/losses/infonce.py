"""InfoNCE: each query against its positive, every other positive in the (global) batch, and mined negatives.

Candidates that carry the query's own target key (the same chunk reached from two windows, or a
mined negative that is really the positive) are masked out rather than counted as negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    candidate_keys: torch.Tensor,
    target_keys: torch.Tensor,
    offset: int,
    tau: float,
    mined: torch.Tensor | None = None,
    mined_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of query i picking candidate `offset + i` among all candidates and its mined rows.

    queries [B, D]; candidates [M, D] with keys [M] (the positives of every worker, this worker's at
    rows offset..offset+B); target_keys [B]; mined [B, n, D] with keys [B, n] (-1 = empty slot).
    """
    b = queries.shape[0]
    labels = torch.arange(b, device=queries.device) + offset
    logits = queries @ candidates.T / tau
    same = candidate_keys[None, :] == target_keys[:, None]
    same[torch.arange(b), labels] = False
    logits = logits.masked_fill(same, -torch.inf)
    if mined is not None and mined.shape[1] > 0:
        mined_logits = torch.einsum("bd,bnd->bn", queries, mined) / tau
        drop = (mined_keys == target_keys[:, None]) | (mined_keys < 0)
        logits = torch.cat([logits, mined_logits.masked_fill(drop, -torch.inf)], dim=1)
    return F.cross_entropy(logits, labels)


def reverse_info_nce(queries: torch.Tensor, positives: torch.Tensor, target_keys: torch.Tensor, tau: float):
    """The other direction: each positive picks its own query among this worker's queries.

    queries and positives [B, D], row i of each a pair; queries whose target is the same chunk as row i's
    are masked out (they are not negatives of it). Local to the worker, as sentence-transformers'
    MultipleNegativesSymmetricRankingLoss is to its device.
    """
    b = queries.shape[0]
    labels = torch.arange(b, device=queries.device)
    logits = positives @ queries.T / tau
    same = target_keys[None, :] == target_keys[:, None]
    same[labels, labels] = False
    return F.cross_entropy(logits.masked_fill(same, -torch.inf), labels)
