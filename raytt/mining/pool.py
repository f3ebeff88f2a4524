"""The miner actors and the pool the driver creates around them.

Each `Miner` maps the shared bank from the object store (zero-copy), builds its index, and answers
`mine(request)`: encode the mining queries with the newest tower weights it was offered, search,
filter, sample. A request carries what to mine (stage, filters, search depth: a Tune trial may vary
them while every trial shares the pool), and the tower (config and weights) and any refreshed index
as nested ObjectRefs with a timestamp, so a miner that Ray restarts catches up from the next
request; nothing is pushed to actors out of band. An index refresh builds in a background thread
while the old index keeps serving, then swaps in one assignment.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from raytt.errors import RayttError
from raytt.mining.config import MiningConfig
from raytt.mining.index import Index
from raytt.mining.messages import IndexOffer, MineAnswer, MineRequest, WeightsOffer
from raytt.mining.select import BankLayout, select
from raytt.progress import say
from raytt.towers import TowerConfig, TwoTower, index_vectors, query_vectors


def model_state(model: torch.nn.Module) -> dict:
    """The model's weights as numpy arrays: zero-copy in the object store, no torch pickling."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_model(tower: TowerConfig, dim: int, state: dict) -> TwoTower:
    """A tower rebuilt from its config and `model_state` weights, in eval mode."""
    model = TwoTower(tower, dim)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval()


def encode_bank(bank, state: dict, tower: TowerConfig) -> np.ndarray:
    """The doc tower over the whole bank: the index a trainable doc tower retrieves from."""
    return index_vectors(load_model(tower, bank.dim, state), bank.vectors)


class Miner:
    """One mining actor: an index over the shared bank and the tower weights to encode queries with."""

    def __init__(self, bank_ref: list, cfg: MiningConfig, number: int) -> None:
        import ray

        self.cfg = cfg
        threads = max(1, int(self.cfg.actor_cpus))
        torch.set_num_threads(threads)
        bank = ray.get(bank_ref[0])
        self.bank, self.number = bank.vectors, number
        self.layout = BankLayout(bank.article_codes, bank.positions)
        self.index = Index(bank.vectors, self.cfg.index_spec())
        self.index_stamp, self.building = 0.0, 0.0
        self.model, self.weights_stamp, self.weights_step = None, 0.0, -1
        self.rng = np.random.default_rng(number)

    def info(self) -> dict:
        import ray

        return {
            "miner": self.number,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "index": self.index.describe(),
            "private_bytes": self.index.private_bytes,
        }

    def mine(self, request: MineRequest) -> MineAnswer:
        """Negative keys for one batch, with the filter counts and what the answer was computed from."""
        received = time.time()
        self._inject(request.step)
        self._offer_weights(request.weights)
        self._offer_index(request.index)
        index, spec = self.index, request.spec
        if request.query_vectors is not None:
            queries = request.query_vectors
        elif spec.mine_by == "query":
            if self.model is None:
                raise RuntimeError("mine_by=query but no tower weights were offered yet")
            queries = query_vectors(self.model, self.bank, request.context_keys, request.context_len)
        else:
            queries = index.vectors[request.target]
        scores, keys = index.search(queries, spec.search_k)
        picked, stats = select(
            scores,
            keys,
            request.target,
            request.context_len,
            self.layout,
            index.vectors,
            spec.stage,
            spec.filters,
            self.rng,
            request.exclude,
            _ceiling(queries, index.vectors, request.target, spec.filters.relative),
        )
        return MineAnswer(picked, stats, index.version, self.weights_step, received, time.time(), self.number)

    def _inject(self, step: int) -> None:
        first, last = self.cfg.fault_steps
        if self.cfg.fault_kind == "raise" and first <= step <= last:
            raise RuntimeError(f"injected miner error at step {step}")

    def _offer_weights(self, offer: WeightsOffer | None) -> None:
        """Adopt tower weights newer than the ones held (all workers hold the same weights at a step)."""
        import ray

        if offer is None or offer.stamp <= self.weights_stamp:
            return
        self.model = load_model(offer.tower, self.bank.shape[1], ray.get(offer.state))
        self.weights_stamp, self.weights_step = offer.stamp, offer.step

    def _offer_index(self, offer: IndexOffer | None) -> None:
        """Start building a newer index in the background; the current one serves until it is ready."""
        if offer is None or offer.stamp <= max(self.index_stamp, self.building):
            return
        self.building = offer.stamp
        threading.Thread(target=self._build, args=(offer,), daemon=True).start()

    def _build(self, offer: IndexOffer) -> None:
        import ray

        stamp, step = offer.stamp, offer.step
        try:
            index = Index(ray.get(offer.vectors), self.cfg.index_spec(), version=step + 1)
        except Exception as exc:
            print(
                f"miner {self.number}: index refresh from step {step} failed ({exc!r}); keeping version "
                f"{self.index.version}",
                flush=True,
            )
            self.building = self.index_stamp
            return
        if stamp > self.index_stamp:
            self.index, self.index_stamp = index, stamp


def _ceiling(queries: np.ndarray, vectors: np.ndarray, target: np.ndarray, relative: float) -> np.ndarray | None:
    """`relative` x each query's score for its own target: the most a negative may score (None when off)."""
    if not relative:
        return None
    return relative * np.einsum("bd,bd->b", np.asarray(queries, np.float32), np.asarray(vectors[target], np.float32))


class MinerPool:
    """N miner actors over one shared bank, created by the top-level driver and handed to every worker."""

    def __init__(self, bank_ref, cfg: MiningConfig, progress=say) -> None:
        import ray

        self.cfg, self.bank_ref = cfg, bank_ref
        actor = ray.remote(Miner).options(
            num_cpus=cfg.actor_cpus,
            num_gpus=cfg.actor_gpus,
            resources=cfg.resources,
            max_restarts=cfg.max_restarts,
            max_task_retries=0,
        )
        self.actors = [actor.remote([bank_ref], cfg, i) for i in range(cfg.actors)]
        started = time.perf_counter()
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=cfg.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RayttError(
                f"mining: {cfg.actors} miner actor(s) did not start within {cfg.start_timeout_s:.0f}s; "
                f"each needs {cfg.actor_cpus} CPU(s) and {cfg.actor_gpus} GPU(s) free beside the "
                f"training workers (mining.actors, mining.actor_cpus)"
            ) from None
        progress(f"mining: {cfg.actors} miner(s) ready in {time.perf_counter() - started:.1f}s")
        self.nodes = [info["node"] for info in infos]
        for info in infos:
            progress(
                f"mining:   miner {info['miner']} (pid {info['pid']}, node {info['node'][:8]}, {cfg.actor_cpus:g} CPU"
                f"{f' + {cfg.actor_gpus:g} GPU' if cfg.actor_gpus else ''}): {info['index']}"
            )

    def submit(self, request: MineRequest, slot: int):
        """Send one request to the miner at `slot` (round robin); returns its ObjectRef."""
        return self.actors[slot % len(self.actors)].mine.remote(request)

    def encode(self, state_ref, tower: TowerConfig):
        """Start re-encoding the bank with the doc tower weights in `state_ref`; returns the index's ObjectRef."""
        import ray

        task = ray.remote(encode_bank).options(num_cpus=min(1.0, self.cfg.actor_cpus))
        return task.remote(self.bank_ref, state_ref, tower)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
