"""The training worker's side of mining: ask ahead, never wait long, never fail because of a miner.

For each batch the worker submits a request when the batch is fetched (one or more steps before it
trains on it), and collects the answer when its step comes, waiting at most `timeout_s`. A miner
that is slow, dead, restarting or raising costs that batch its mined negatives (it trains on
in-batch negatives) and a count in `mining/fallback_rate`; the run goes on. At most
`max_in_flight` requests per worker are outstanding, abandoned ones included (backpressure).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from raytt.mining.config import MiningConfig
from raytt.mining.messages import IndexOffer, MineAnswer, MineRequest, WeightsOffer
from raytt.mining.pool import MinerPool, model_state
from raytt.mining.schedule import Stage
from raytt.mining.select import FILTERS
from raytt.towers import TowerConfig

COUNTS = (
    "requests",
    "fallbacks",
    "timeout",
    "error",
    "actor_died",
    "busy",
    "candidates",
    "kept",
    "short_rows",
    "refreshes",
    *FILTERS,
)


@dataclass
class Ticket:
    """A batch's pending mining: the request's ref (None when it could not be sent) and when it was sent."""

    ref: object
    submitted: float


class MiningClient:
    """One worker's requests to the shared pool. A vector run's miners encode the context keys with offered
    weights; a text run (`tower` None) sends its query vectors and offers each refreshed index itself."""

    def __init__(self, pool: MinerPool, cfg: MiningConfig, rank: int, tower: TowerConfig | None) -> None:
        self.pool, self.cfg, self.rank, self.tower = pool, cfg, rank, tower
        self.refresh = tower is not None and tower.doc != "identity" and rank == 0
        self.slot = rank
        self.in_flight: list = []
        self.weights: WeightsOffer | None = None
        self.index_offer: IndexOffer | None = None
        self.counts: Counter = Counter()
        self.latency_ms: list[float] = []
        self.staleness: list[int] = []
        self.versions: list[int] = []

    def publish(self, step: int, model: torch.nn.Module) -> None:
        """Offer miners this step's weights every `sync_every` steps; rank 0 also starts index refreshes."""
        import ray

        if self.tower is None:
            return
        needs_weights = self.cfg.mine_by == "query" or self.refresh
        if needs_weights and (self.weights is None or step - self.weights.step >= self.cfg.sync_every):
            self.weights = WeightsOffer(time.time(), step, ray.put(model_state(model)), self.tower)
        if self.refresh and (self.index_offer is None or step - self.index_offer.step >= self.cfg.refresh_every):
            self.index_offer = IndexOffer(time.time(), step, self.pool.encode(self.weights.state, self.tower))
            self.counts["refreshes"] += 1

    def submit(
        self, stage: Stage, step: int, keys: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor
    ) -> Ticket | None:
        """Ask for this batch's negatives now; None when the stage does not mine."""
        if not stage.count:
            return None
        return self._send(
            MineRequest(
                keys.numpy(),
                lengths.numpy(),
                target.numpy(),
                self.cfg.spec(stage),
                step,
                self.weights if self.cfg.mine_by == "query" else None,
                self.index_offer,
            )
        )

    def submit_vectors(
        self, stage: Stage, step: int, queries: np.ndarray, target: torch.Tensor, exclude: torch.Tensor | None
    ) -> Ticket | None:
        """A text batch's request: mine around `queries` [B, D] (with mine_by: query; the targets' own vectors
        with target), never returning the target or an `exclude`d key; None when the stage does not mine."""
        if not stage.count:
            return None
        empty = np.zeros((len(target), 0), np.int64)
        return self._send(
            MineRequest(
                empty,
                np.zeros(len(target), np.int64),
                target.numpy(),
                self.cfg.spec(stage),
                step,
                index=self.index_offer,
                query_vectors=queries if self.cfg.mine_by == "query" else None,
                exclude=exclude.numpy() if exclude is not None else None,
            )
        )

    def offer_index(self, step: int, vectors: np.ndarray) -> None:
        """Rank 0 of a text run: the passage side's vectors now, for miners to rebuild their index from."""
        import ray

        self.index_offer = IndexOffer(time.time(), step, ray.put(np.ascontiguousarray(vectors, np.float32)))
        self.counts["refreshes"] += 1

    def _send(self, request: MineRequest) -> Ticket:
        """Send `request` unless `max_in_flight` are outstanding (then a ticket that falls back)."""
        import ray

        if self.in_flight:
            _, self.in_flight = ray.wait(self.in_flight, num_returns=len(self.in_flight), timeout=0)
        if len(self.in_flight) >= self.cfg.max_in_flight:
            return Ticket(None, time.time())
        ref = self.pool.submit(request, self.slot)
        self.slot += 1
        self.in_flight.append(ref)
        return Ticket(ref, time.time())

    def collect(self, ticket: Ticket | None, step: int) -> np.ndarray | None:
        """The batch's negative keys [B, n], or None: no mining this stage, or a fallback (counted)."""
        import ray

        if ticket is None:
            return None
        self.counts["requests"] += 1
        if ticket.ref is None:
            return self._fallback("busy")
        ready, _ = ray.wait([ticket.ref], timeout=self.cfg.timeout_s)
        if not ready:
            with contextlib.suppress(Exception):
                ray.cancel(ticket.ref)
            return self._fallback("timeout")
        try:
            answer: MineAnswer = ray.get(ticket.ref)
        except ray.exceptions.RayActorError:
            return self._fallback("actor_died")
        except Exception:
            return self._fallback("error")
        self.counts.update(answer.stats)
        self.latency_ms.append(1000 * (answer.done - ticket.submitted))
        if answer.weights_step >= 0:
            self.staleness.append(step - answer.weights_step)
        self.versions.append(answer.index_version)
        return answer.keys

    def _fallback(self, reason: str) -> None:
        self.counts["fallbacks"] += 1
        self.counts[reason] += 1
        return None

    def epoch_metrics(self, reduce) -> dict:
        """This epoch's mining metrics (counts summed over workers by `reduce`), then reset."""
        totals = dict(zip(COUNTS, reduce([float(self.counts[c]) for c in COUNTS])))
        out = {
            "mining/requests": totals["requests"],
            "mining/fallback_rate": totals["fallbacks"] / totals["requests"] if totals["requests"] else 0.0,
        }
        for reason in ("timeout", "error", "actor_died", "busy"):
            out[f"mining/fallback_{reason}"] = totals[reason]
        for name in ("candidates", "kept", "short_rows", "refreshes", *FILTERS):
            out[f"mining/{'dropped_' + name if name in FILTERS else name}"] = totals[name]
        if self.latency_ms:
            out["mining/latency_ms_p50"] = float(np.percentile(self.latency_ms, 50))
            out["mining/latency_ms_p95"] = float(np.percentile(self.latency_ms, 95))
        if self.staleness:
            out["mining/staleness_steps"] = float(np.mean(self.staleness))
        if self.versions:
            out["mining/index_version"] = float(max(self.versions))
        self.counts, self.latency_ms, self.staleness, self.versions = Counter(), [], [], []
        return out
