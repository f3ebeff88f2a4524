"""The configured objective: `LossConfig`, the `Batch` every loss sees, and `objective` choosing among them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from raytt.config import doc
from raytt.losses.ar_cosine import ar_cosine, mix
from raytt.losses.infonce import info_nce, reverse_info_nce
from raytt.losses.triplet import hardest_in_batch, triplet_margin


@dataclass
class LossConfig:
    kind: Literal["infonce", "triplet", "ar_mix"] = field(
        default="infonce", metadata=doc("infonce, triplet (cosine margin) or ar_mix (InfoNCE + AR cosine)")
    )
    tau: float = field(default=0.05, metadata=doc("InfoNCE temperature"))
    margin: float = field(default=0.1, metadata=doc("triplet margin on cosine distance"))
    lambda_con: float = field(default=0.5, metadata=doc("ar_mix: weight of InfoNCE vs the AR cosine term"))
    symmetric: bool = field(
        default=False,
        metadata=doc("infonce/ar_mix: average in the reverse direction, each positive picking its query in the batch"),
    )

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"loss.tau must be > 0, got {self.tau}")
        if not 0.0 <= self.lambda_con <= 1.0:
            raise ValueError(f"loss.lambda_con must be in [0, 1], got {self.lambda_con}")
        if self.margin < 0:
            raise ValueError(f"loss.margin must be >= 0, got {self.margin}")


@dataclass
class Batch:
    """What a loss sees on one worker: local queries and positives, the global candidates, mined negatives."""

    queries: torch.Tensor  # [B, D] unit
    positives: torch.Tensor  # [B, D] unit, doc-tower output of the targets
    target_keys: torch.Tensor  # [B]
    candidates: torch.Tensor  # [W*B, D]: positives gathered from every worker (local rows keep grad)
    candidate_keys: torch.Tensor  # [W*B]
    offset: int  # where this worker's positives start among the candidates
    mined: torch.Tensor | None = None  # [B, n, D]
    mined_keys: torch.Tensor | None = None  # [B, n], -1 = empty


def objective(cfg: LossConfig, batch: Batch) -> torch.Tensor:
    """The configured loss on one batch."""
    if cfg.kind == "triplet":
        if batch.mined is not None and batch.mined.shape[1] > 0:
            valid = ((batch.mined_keys >= 0) & (batch.mined_keys != batch.target_keys[:, None])).float()
            return triplet_margin(batch.queries, batch.positives, batch.mined, cfg.margin, valid)
        hard = hardest_in_batch(batch.queries, batch.candidates, batch.candidate_keys, batch.target_keys)
        return triplet_margin(batch.queries, batch.positives, hard, cfg.margin)
    contrastive = info_nce(
        batch.queries,
        batch.candidates,
        batch.candidate_keys,
        batch.target_keys,
        batch.offset,
        cfg.tau,
        batch.mined,
        batch.mined_keys,
    )
    if cfg.symmetric:
        reverse = reverse_info_nce(batch.queries, batch.positives, batch.target_keys, cfg.tau)
        contrastive = (contrastive + reverse) / 2
    if cfg.kind == "infonce":
        return contrastive
    return mix(contrastive, ar_cosine(batch.queries, batch.positives), cfg.lambda_con)


@torch.no_grad()
def in_batch_accuracy(batch: Batch) -> float:
    """Share of queries whose own positive outscores every other in-batch candidate (the number that lies)."""
    scores = batch.queries @ batch.candidates.T
    b = len(batch.queries)
    own = scores[torch.arange(b), torch.arange(b) + batch.offset]
    others = scores.masked_fill(batch.candidate_keys[None, :] == batch.target_keys[:, None], -torch.inf)
    return float((own > others.max(1).values).float().mean())
