"""Same-article negatives added to a batch: other chunks of each target's article, seeded by (seed, rank, step)."""

from __future__ import annotations

import numpy as np

from raytt.mining.article import ArticleNegatives
from raytt.training.data import StepBatch


def with_article_negatives(
    batch: StepBatch, sampler: ArticleNegatives | None, count: int, seed: tuple[int, int, int]
) -> StepBatch:
    """The batch with `count` same-article keys per row appended to any mined ones (unchanged without a sampler)."""
    if sampler is None:
        return batch
    rng = np.random.default_rng(seed)
    drawn = sampler.sample(batch.target.numpy(), batch.lengths.numpy(), count, rng)
    mined = batch.negatives
    return batch.with_negatives(drawn if mined is None else np.concatenate([np.asarray(mined), drawn], axis=1))
