"""Triplet margin loss on cosine distance: the positive must be closer than each negative by `margin`."""

from __future__ import annotations

import torch


def triplet_margin(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean over (i, j) of max(0, d(q_i, p_i) - d(q_i, n_ij) + margin), d = 1 - cos; all vectors unit.

    negatives [B, n, D]; `valid` [B, n] marks the real negatives (default: all).
    """
    d_pos = 1.0 - (queries * positives).sum(-1)
    d_neg = 1.0 - torch.einsum("bd,bnd->bn", queries, negatives)
    loss = torch.relu(d_pos[:, None] - d_neg + margin)
    if valid is None:
        return loss.mean()
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def hardest_in_batch(
    queries: torch.Tensor, candidates: torch.Tensor, candidate_keys: torch.Tensor, target_keys: torch.Tensor
) -> torch.Tensor:
    """[B, 1, D]: for each query, the highest-scoring candidate whose key is not its target."""
    scores = (queries @ candidates.T).masked_fill(candidate_keys[None, :] == target_keys[:, None], -torch.inf)
    return candidates[scores.argmax(1)][:, None]
