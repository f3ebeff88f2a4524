"""Same-article negatives: other chunks of the target's own article, drawn at random each step.

Full-bank search meets these first (the article's other chunks sit near its topic, and the context
chunks nearest of all), yet random in-batch negatives almost never contain them. They need no index,
so they cost nothing to serve. The window filter of mining applies: chunks within +-window
positions of the target are dropped unless they are context chunks.
"""

from __future__ import annotations

import numpy as np

from raytt.mining.select import BankLayout

OVERSAMPLE = 4


class ArticleNegatives:
    """Samples [B, n] same-article negative keys (-1 padded) for a batch of targets."""

    def __init__(self, layout: BankLayout, window: int) -> None:
        self.layout, self.window = layout, window
        self.order = np.argsort(layout.articles, kind="stable")
        self.counts = np.bincount(layout.articles)
        self.starts = np.cumsum(self.counts) - self.counts

    def sample(self, target: np.ndarray, context_len: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to n distinct keys per row from the target's article, never the target or a window neighbour."""
        articles = self.layout.articles[target]
        draws = rng.random((len(target), OVERSAMPLE * n))
        keys = self.order[self.starts[articles][:, None] + (draws * self.counts[articles][:, None]).astype(np.int64)]
        offset = self.layout.positions[keys] - self.layout.positions[target][:, None]
        in_context = (offset < 0) & (offset >= -context_len[:, None])
        alive = (keys != target[:, None]) & ((np.abs(offset) > self.window) | in_context)
        keys = np.where(alive, keys, -1)
        by_key = np.argsort(keys, axis=1, kind="stable")
        sorted_keys = np.take_along_axis(keys, by_key, 1)
        repeat = np.zeros_like(alive)
        np.put_along_axis(repeat, by_key[:, 1:], sorted_keys[:, 1:] == sorted_keys[:, :-1], 1)
        keys = np.where(repeat, -1, keys)
        first = np.argsort(keys < 0, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(keys, first, 1)
