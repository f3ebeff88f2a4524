"""From a nearest-neighbour search to hard negatives: the false-negative filters, the band, sampling.

Candidates are dropped, in this order, and each drop is counted by the filter that made it (the
last two, which need vectors, look at the first 4 x count survivors in sampling order):
  target          the target key itself (and any key the request excludes: a text query's other positives)
  window          a chunk of the target's article within +-window positions of it, except the
                  context chunks, which stay allowed (they are the commonest impostors)
  band            cosine to the mining query outside the stage's [lo, hi]
  relative        scoring above `relative` x the target's own score for that query (NV-Retriever's
                  positive-aware filter; off at 0)
  false_negative  cosine to the *target* >= fn_threshold (a near-copy of the truth)
  duplicate       a near-copy (cosine >= fn_threshold) of a candidate ranked before it, or a repeated key
Of the survivors, `top` keeps the highest-scoring `count`, `random` a uniform sample; rows with too
few survivors are padded with -1, which the loss ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytt.mining.schedule import Stage

FILTERS = ("target", "window", "band", "relative", "false_negative", "duplicate")


@dataclass(frozen=True)
class FilterConfig:
    window: int = 1
    fn_threshold: float = 0.95
    sampling: str = "top"
    relative: float = 0.0


@dataclass(frozen=True)
class BankLayout:
    """Where each key sits: its article code and position, for the same-article window filter."""

    articles: np.ndarray
    positions: np.ndarray


def select(
    scores: np.ndarray,
    keys: np.ndarray,
    target: np.ndarray,
    context_len: np.ndarray,
    layout: BankLayout,
    vectors: np.ndarray,
    stage: Stage,
    cfg: FilterConfig,
    rng: np.random.Generator,
    exclude: np.ndarray | None = None,
    ceiling: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Negative keys [B, stage.count] (-1 padded) and the per-filter counts, from search results [B, K].

    The cheap filters (target, window, band) see every candidate; the two that need vectors see the
    first 4 x count survivors in sampling order, which is where the negatives come from. `exclude` [B, m]
    (-1 padded) adds keys the target filter drops; `ceiling` [B] is the highest score the relative filter keeps.
    """
    b, k = keys.shape
    alive = keys >= 0
    stats = {"candidates": int(alive.sum())}
    safe = np.where(alive, keys, 0)

    def drop(name: str, mask: np.ndarray, where: np.ndarray) -> np.ndarray:
        hit = where & mask
        stats[name] = int(hit.sum())
        return where & ~hit

    excluded = safe == target[:, None]
    if exclude is not None and exclude.size:
        excluded |= (safe[:, :, None] == exclude[:, None, :]).any(2)
    alive = drop("target", excluded, alive)
    offset = layout.positions[safe] - layout.positions[target][:, None]
    same = layout.articles[safe] == layout.articles[target][:, None]
    in_context = (offset < 0) & (offset >= -context_len[:, None])
    alive = drop("window", same & (np.abs(offset) <= cfg.window) & ~in_context, alive)
    alive = drop("band", (scores < stage.lo) | (scores > stage.hi), alive)
    alive = drop("relative", scores > ceiling[:, None] if ceiling is not None else np.zeros_like(alive), alive)

    order = _order(scores, alive, cfg.sampling, rng)[:, : min(k, 4 * stage.count)]
    head_keys, head_alive = np.take_along_axis(safe, order, 1), np.take_along_axis(alive, order, 1)
    head = vectors[head_keys]
    to_target = np.matmul(head, vectors[target][:, :, None])[:, :, 0]
    head_alive = drop("false_negative", to_target >= cfg.fn_threshold, head_alive)
    head_alive = drop("duplicate", _near_copies(head, head_keys, head_alive, cfg.fn_threshold), head_alive)

    picked = np.full((b, stage.count), -1, dtype=np.int64)
    slot = np.cumsum(head_alive, axis=1) - 1
    take = head_alive & (slot < stage.count)
    picked[np.nonzero(take)[0], slot[take]] = head_keys[take]
    stats["kept"] = int(take.sum())
    stats["short_rows"] = int((take.sum(1) < stage.count).sum())
    return picked, stats


def _order(scores: np.ndarray, alive: np.ndarray, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Column order per row: live candidates first, by score (`top`) or at random (`random`)."""
    if sampling == "random":
        priority = rng.random(scores.shape)
    else:
        priority = -scores.astype(np.float64)
    priority = np.where(alive, priority, np.inf)
    return np.argsort(priority, axis=1, kind="stable")


def _near_copies(head: np.ndarray, keys: np.ndarray, alive: np.ndarray, threshold: float) -> np.ndarray:
    """[B, m] True where a live candidate repeats, or nearly copies, a live candidate ranked before it."""
    gram = np.matmul(head, head.transpose(0, 2, 1))
    earlier = np.tril(np.ones(gram.shape[1:], dtype=bool), -1)
    both = alive[:, :, None] & alive[:, None, :] & earlier[None]
    repeat = (keys[:, :, None] == keys[:, None, :]) | (gram >= threshold)
    return (repeat & both).any(axis=2)
