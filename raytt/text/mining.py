"""Hard negatives for text runs from the shared miner pool, asynchronously, as vector runs get theirs.

The miners index the passage side's vectors (each passage its own "article", so only the target and the
query's other judged passages are excluded by key). A worker asks one or more steps ahead with the query
side's current vectors of the batch it will train on (ANCE-style; `mining.mine_by: target` mines around the
positives instead); the relative filter (`mining.relative`) drops near-ties with the positive. Rank 0 offers
the passage vectors of every validation pass (and of a resumed run's start), so the index follows a passage
side that trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from raytt.mining.client import MiningClient
from raytt.mining.pool import MinerPool
from raytt.mining.schedule import Stage
from raytt.text.config import TextTrainConfig
from raytt.text.data import TextRows
from raytt.text.ranking import encode_side
from raytt.text.towers import TextTwoTower, build_text_tower
from raytt.training.data import asked_ahead
from raytt.training.driver import start_pool
from raytt.training.position import Position


@dataclass(frozen=True)
class PassageIndex:
    """What a miner indexes for a text run: the passage side's unit vectors by key, each its own article."""

    vectors: np.ndarray  # [N, D]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def article_codes(self) -> np.ndarray:
        return np.arange(len(self.vectors), dtype=np.int64)

    @property
    def positions(self) -> np.ndarray:
        return np.zeros(len(self.vectors), dtype=np.int64)


def start_text_pool(cfg: TextTrainConfig, table: np.ndarray, width: int, progress: Callable[[str], None]):
    """The miner pool over the untrained passage side's vectors (the towers every worker starts from: same seed);
    None when the schedule never mines."""
    import ray

    if not cfg.mining.curriculum.mines:
        return None
    torch.manual_seed(cfg.seed)
    vectors = encode_side(build_text_tower(cfg.tower, width), table, "passage", "cpu")
    return start_pool(cfg, ray.put(PassageIndex(vectors)), progress)


def text_client(pool: MinerPool | None, cfg: TextTrainConfig, rank: int) -> MiningClient | None:
    return MiningClient(pool, cfg.mining, rank, None) if pool is not None else None


def mined_text_batches(
    batches: Iterator[tuple[TextRows, bool]],
    client: MiningClient,
    stage: Stage,
    position: Position,
    model: TextTwoTower,
    cfg: TextTrainConfig,
    device,
) -> Iterator[tuple[TextRows, bool]]:
    """(rows, is_last) with the pool's negatives attached, each batch asked for `max_in_flight` steps ahead."""

    def submit(item: tuple[TextRows, bool], step: int):
        rows = item[0]
        vectors = encode_side(model, rows.queries, "query", device) if cfg.mining.mine_by == "query" else None
        return client.submit_vectors(stage, step, vectors, rows.positive_keys, rows.judged)

    def attach(item: tuple[TextRows, bool], mined: np.ndarray | None) -> tuple[TextRows, bool]:
        return item[0].with_mined(mined), item[1]

    return asked_ahead(batches, client, position, model, cfg.mining.max_in_flight, submit, attach)
