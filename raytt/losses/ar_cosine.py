"""Autoregressive cosine loss: pull the query onto the next chunk itself, 1 - cos(q, target)."""

from __future__ import annotations

import torch


def ar_cosine(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(q_i, t_i)) for unit vectors."""
    return (1.0 - (queries * targets).sum(-1)).mean()


def mix(contrastive: torch.Tensor, cosine: torch.Tensor, lambda_con: float) -> torch.Tensor:
    """lambda_con * contrastive + (1 - lambda_con) * cosine."""
    return lambda_con * contrastive + (1.0 - lambda_con) * cosine
