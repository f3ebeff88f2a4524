"""What travels between training workers and miners, typed: offers of weights and indexes, requests, answers.

Offers carry an ObjectRef as a field (Ray does not resolve refs nested in an object), a timestamp
and the step they come from, so a miner adopts only what is newer than what it holds and a miner
that Ray restarts catches up from the next request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytt.mining.schedule import Stage
from raytt.mining.select import FilterConfig
from raytt.towers import TowerConfig


@dataclass(frozen=True)
class MineSpec:
    """What to mine: the curriculum stage, the filters and the search depth (a trial may vary any of them)."""

    stage: Stage
    filters: FilterConfig
    search_k: int
    mine_by: str


@dataclass(frozen=True)
class WeightsOffer:
    """Tower weights (an ObjectRef of `model_state`) a miner encodes its mining queries with."""

    stamp: float
    step: int
    state: object
    tower: TowerConfig


@dataclass(frozen=True)
class IndexOffer:
    """A re-encoded bank (an ObjectRef of [N, D] doc-tower vectors) for miners to search instead of the bank."""

    stamp: float
    step: int
    vectors: object


@dataclass(frozen=True)
class MineRequest:
    """One batch's mining: its keys, what to mine, and the newest weights and index the worker knows of."""

    context_keys: np.ndarray  # [B, k]
    context_len: np.ndarray  # [B]
    target: np.ndarray  # [B]
    spec: MineSpec
    step: int
    weights: WeightsOffer | None = None
    index: IndexOffer | None = None
    query_vectors: np.ndarray | None = None  # [B, D]: mine around these (a text run's query side, now)
    exclude: np.ndarray | None = None  # [B, m] keys never returned (a text query's judged passages), -1 padded


@dataclass(frozen=True)
class MineAnswer:
    """Negative keys [B, n] (-1 = none survived), the filter counts, and what they were computed from."""

    keys: np.ndarray
    stats: dict
    index_version: int
    weights_step: int
    received: float
    done: float
    miner: int
