"""Training on Ray: the per-worker loop, the `TorchTrainer` around it, checkpoints and resume.

The driver checks the data (provenance, split leaks), puts the bank in the object store once, and
hands Ray Train a Ray Dataset over the train shards. Each worker streams key batches, resolves keys
to vectors from the shared bank, and trains with candidates gathered from every worker. Each epoch
ends with full-bank validation on the val split and a checkpoint; the best one is copied to `best/`.
`workers: 0` runs the same loop in this process (Ray Train's local mode) for debugging.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from raytt import checkpoints, config, runlog
from raytt.bank import load_bank
from raytt.errors import ConfigError, Interrupted, RayttError
from raytt.evaluate import KS, in_batch_accuracy, load_queries
from raytt.losses import Batch, in_batch_accuracy as batch_accuracy, objective
from raytt.mining.article import ArticleNegatives
from raytt.mining.client import MiningClient
from raytt.mining.pool import MinerPool
from raytt.mining.select import BankLayout
from raytt.resources import (Ask, Request, ResourceError, check, cluster_capacity, joins_cluster, private_capacity,
                             wait_until_free)
from raytt.retrieval import as_tensor, mrr_at, recall_at, scan
from raytt.runconfig import TrainConfig
from raytt.sequences import check_provenance, open_shards
from raytt.session import start_ray
from raytt.storage import atomic_dir, check_uri, write_json
from raytt.towers import TwoTower, describe, gather, index_vectors, query_vectors

Progress = Callable[[str], None]
COLUMNS = ["context_keys", "context_len", "target_key"]
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"   # read by Ray Train's controller
SAME_RUN_FIELDS = ("tower", "loss", "data")


# ---- the worker -------------------------------------------------------------------------------------------

class Worker:
    """Everything one training worker holds: model, optimizer, data iterator, position in the run."""

    def __init__(self, cfg: TrainConfig, loop: dict) -> None:
        import ray
        import ray.train
        import ray.train.torch

        self.cfg = cfg
        self.local = loop["local"]
        self.tune = loop["tune"]
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        torch.set_num_threads(cfg.threads_per_worker)
        self.device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
        bank = ray.get(loop["bank"])
        self.bank_np = bank.vectors
        self.bank = as_tensor(self.bank_np).to(self.device)
        self.val = loop["val"]
        self.steps_per_epoch = loop["steps_per_epoch"]
        torch.manual_seed(cfg.seed)
        self.model = TwoTower(cfg.tower, self.bank.shape[1]).to(self.device)
        self.net = ray.train.torch.prepare_model(self.model) if self.world > 1 and self.model.trainable else self.model
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay) if params else None
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.optim.ema and self.opt else None
        total = cfg.optim.epochs * self.steps_per_epoch
        total = min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, cfg.optim.warmup_steps, total)) \
            if self.opt else None
        self.step, self.epoch, self.batch_in_epoch, self.best, self.since_best = 0, 0, 0, -math.inf, 0
        self.data = ray.train.get_dataset_shard("train")
        self.pool = loop["pool"]
        self.miner = MiningClient(self.pool, cfg.mining, self.rank, config.to_dict(cfg.tower)) if self.pool else None
        self.same_article = ArticleNegatives(BankLayout(bank.article_codes, bank.positions), cfg.mining.window) \
            if cfg.mining.article_negatives else None
        if self.rank == 0:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            checkpoints.pull(cfg.remote, cfg.run_dir)
        self.metrics_path = cfg.run_dir / "metrics.jsonl"
        self.attempt = runlog.next_attempt(self.metrics_path) if self.rank == 0 else 0
        self._restore(ray.train.get_checkpoint(), loop["resume"])
        if self.rank == 0:
            runlog.append(self.metrics_path, {"step": self.step, "epoch": self.epoch}, "start", self.attempt)

    def _restore(self, reported, resume: str | None) -> None:
        """Continue from the run's newest readable checkpoint after a worker failure (`reported`) or on re-run.

        The run's own checkpoints are searched, not only the one Ray hands back: a worker that dies
        right after persisting a checkpoint can die before Ray's controller has registered it, and Ray
        would resume from the one before. An unreadable checkpoint is skipped, with a warning.
        """
        if reported is None and resume is None:
            return
        if self.cfg.remote:
            tries = checkpoints.remote_newest_first(self.cfg.remote, self.cfg.run_dir)
        else:
            tries = iter(checkpoints.found(self.cfg.run_dir))
        readable = checkpoints.first_readable(tries, self.log, self.device)
        if readable:
            self._apply(*readable)

    @property
    def served(self) -> TwoTower:
        """The weights validation, best/ and checkpoints hold: the moving average when `optim.ema` is on."""
        return self.ema if self.ema is not None else self.model

    def _apply(self, folder: Path, contents: tuple[dict, dict, dict]) -> None:
        weights, state, _ = contents
        self.served.load_state_dict(weights)
        self.model.load_state_dict(state.get("train_weights", weights))
        if self.opt:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.since_best = state["best"], state.get("since_best", 0)
        checkpoints.set_rng_state(state["rng"])
        self.log(f"train: resumed from {folder.name} at step {self.step} (epoch {self.epoch}, "
                 f"batch {self.batch_in_epoch})")

    @property
    def done(self) -> bool:
        return 0 < self.cfg.optim.max_steps <= self.step

    def patience_spent(self) -> bool:
        """Early stopping: rank 0's count of epochs without a better `best_metric`, agreed by every worker."""
        spent = torch.tensor([int(0 < self.cfg.optim.patience <= self.since_best)])
        if self.world > 1:
            dist.broadcast(spent, src=0)
        return bool(spent.item())

    def log(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def batches(self):
        """This epoch's batches with an is-last flag, skipping those already trained on before a resume.

        The flag (known one batch ahead, which prefetching holds anyway) lets the epoch's last step leave
        its checkpoint to the epoch-end one: two checkpoints of one step would share a directory name.
        """
        it = self.data.iter_torch_batches(
            batch_size=self.cfg.data.batch_size, drop_last=True, prefetch_batches=self.cfg.data.prefetch_batches,
            local_shuffle_buffer_size=self.cfg.data.shuffle_buffer or None,
            local_shuffle_seed=self.cfg.seed + 1000 * self.epoch + self.rank if self.cfg.data.shuffle_buffer else None,
            collate_fn=KeyBatch())
        for i, (batch, last) in enumerate(_flag_last(it)):
            if i >= self.batch_in_epoch:
                yield (*batch, last)

    def mined_batches(self):
        """This epoch's batches (keys, lengths, target, is-last) with their mined negative keys (None = in-batch only).

        Batches are fetched `max_in_flight` steps ahead and their mining requested on fetch: the
        request for batch t+L goes out after batch t's answer is collected and before t trains.
        """
        stage = self.cfg.mining.curriculum.at(self.epoch)
        if self.miner is None or not stage.count:
            for batch in self.batches():
                yield (*batch, None)
            return
        ahead: deque = deque()
        for batch in self.batches():
            due = ahead.popleft() if len(ahead) == self.cfg.mining.max_in_flight else None
            mined = self.miner.collect(due[1], self.step) if due else None
            self.miner.publish(self.step, self.model)
            ahead.append((batch, self.miner.submit(stage, self.step + len(ahead) + 1, *batch[:3])))
            if due:
                yield (*due[0], mined)
        while ahead:
            batch, ticket = ahead.popleft()
            yield (*batch, self.miner.collect(ticket, self.step))

    def with_article_negatives(self, lengths: torch.Tensor, target: torch.Tensor,
                               mined_keys: np.ndarray | None) -> np.ndarray | None:
        """The mined negative keys plus `article_negatives` same-article ones, drawn from (seed, rank, step)."""
        if self.same_article is None:
            return mined_keys
        rng = np.random.default_rng((self.cfg.seed, self.rank, self.step))
        drawn = self.same_article.sample(target.numpy(), lengths.numpy(), self.cfg.mining.article_negatives, rng)
        return drawn if mined_keys is None else np.concatenate([np.asarray(mined_keys), drawn], axis=1)

    def train_step(self, keys: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
                   mined_keys: np.ndarray | None = None) -> tuple[float, float]:
        """One optimizer step on one batch (plus its mined negatives, if any); returns (loss, in-batch accuracy)."""
        keys, lengths, target = keys.to(self.device), lengths.to(self.device), target.to(self.device)
        mined_keys = torch.as_tensor(mined_keys, device=self.device) if mined_keys is not None else None
        train = self.opt is not None
        self.net.train(train)
        with torch.set_grad_enabled(train):
            mined = gather(self.bank, mined_keys) if mined_keys is not None else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                queries, positives, mined = self.net(gather(self.bank, keys), lengths, self.bank[target], mined)
            queries, positives = queries.float(), positives.float()
            mined = mined.float() if mined is not None else None
            candidates, cand_keys, offset = self._gather(positives, target)
            batch = Batch(queries, positives, target, candidates, cand_keys, offset, mined, mined_keys)
            loss = objective(self.cfg.loss, batch)
            if train:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
                self.opt.step()
                self.sched.step()
                if self.ema is not None:
                    _ema_update(self.ema, self.model, self.cfg.optim.ema)
        self.candidates = len(cand_keys)
        self.mined = int((mined_keys >= 0).sum()) / len(target) if mined_keys is not None else 0.0
        return float(loss.detach()), batch_accuracy(batch)

    def _gather(self, positives: torch.Tensor, target: torch.Tensor):
        """Every worker's positives as candidates; this worker's rows keep their gradient."""
        if self.world == 1:
            return positives, target, 0
        parts = [torch.empty_like(positives) for _ in range(self.world)]
        key_parts = [torch.empty_like(target) for _ in range(self.world)]
        dist.all_gather(parts, positives.detach().contiguous())
        dist.all_gather(key_parts, target.contiguous())
        parts[self.rank] = positives
        return torch.cat(parts), torch.cat(key_parts), self.rank * len(target)

    def validate(self) -> dict:
        """Full-bank validation on the val split (rank 0), through the same query function as evaluation."""
        if self.rank != 0:
            return {}
        ctx, lengths, target = self.val
        queries = query_vectors(self.served, self.bank_np, ctx, lengths, device=self.device)
        index = index_vectors(self.served, self.bank_np, device=self.device)
        result = scan(queries, target, index, context=ctx)
        out = {f"val/R@{k}": recall_at(result.ranks, k) for k in KS}
        out["val/MRR@10"] = mrr_at(result.ranks, 10)
        out.update({f"val/excl/R@{k}": recall_at(result.ranks_excl, k) for k in (1, 10, 100)})
        out["val/excl/MRR@10"] = mrr_at(result.ranks_excl, 10)
        out["val/in_batch_acc"] = in_batch_accuracy(queries, index[target], target, self.cfg.data.batch_size)
        return out

    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict() if self.opt else {}, "scheduler": self.sched.state_dict() if self.sched else {},
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                "since_best": self.since_best, "rng": checkpoints.rng_state(),
                **({"train_weights": self.model.state_dict()} if self.ema is not None else {})}

    def meta(self, metrics: dict) -> dict:
        """What `checkpoints.load_model` needs to rebuild the model, plus where the run stood."""
        return {"step": self.step, "epoch": self.epoch, "metrics": metrics, "tower": config.to_dict(self.cfg.tower),
                "dim": int(self.bank.shape[1])}

    def report(self, metrics: dict, checkpoint: bool, epoch_end: bool = False) -> None:
        """Log the row; at checkpoints and epoch ends also report to Ray Train, rank 0 attaching the checkpoint.

        Progress rows go to metrics.jsonl alone: `ray.train.report` waits for every worker, and a
        barrier per progress line costs time. Under Tune only the epoch-end reports (with full-bank
        validation) reach Ray Train, so the scheduler never compares trials on anything else.
        """
        import ray.train

        if self.rank == 0:
            runlog.append(self.metrics_path, metrics, "epoch" if epoch_end else "train", self.attempt)
        if not epoch_end and (self.tune or not checkpoint):
            return
        if not (checkpoint and self.rank == 0):
            ray.train.report(metrics)
            return
        name = checkpoints.name(self.step)
        dest = f"{self.cfg.remote}/{name}" if self.cfg.remote else self.cfg.run_dir / name
        meta = self.meta(metrics)
        if self.local:
            with atomic_dir(self.cfg.run_dir / name, overwrite=True) as tmp:
                checkpoints.save(tmp, self.served, self.state(), meta, dest)
            _prune(self.cfg.run_dir, self.cfg.keep_checkpoints)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(self.cfg.run_dir / name))
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints.save(Path(tmp), self.served, self.state(), meta, dest)
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
            except OSError as exc:
                raise checkpoints.CheckpointError(f"{dest}: cannot persist the checkpoint of step {self.step} "
                                                  f"({exc.strerror or exc}); the checkpoints written before it are "
                                                  f"intact") from exc
        checkpoints.push(self.cfg.run_dir, self.cfg.remote)

    def keep_best(self, metrics: dict) -> None:
        value = metrics.get(self.cfg.best_metric)
        if self.rank != 0 or value is None:
            return
        if value <= self.best:
            self.since_best += 1
            return
        self.best, self.since_best = value, 0
        with atomic_dir(self.cfg.run_dir / "best", overwrite=True) as tmp:
            checkpoints.save(tmp, self.served, {}, self.meta(metrics), self.cfg.run_dir / "best")
        self.log(f"train: new best {self.cfg.best_metric} = {value:.4f} at step {self.step}, saved to best/")

    def maybe_fail(self) -> None:
        """Testing hooks, once per run (marker files): worker 0 raises at `fail_at_step`, or kills miner 0."""
        import ray

        marker = self.cfg.run_dir / ".injected_failure"
        if self.rank == 0 and self.step == self.cfg.fail_at_step and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure at step {self.step}")
        kill = self.cfg.run_dir / ".injected_miner_kill"
        if self.rank == 0 and self.pool and self.cfg.mining.fault_kind == "kill" \
                and self.step == self.cfg.mining.fault_steps[0] and not kill.exists():
            kill.touch()
            self.log(f"train: killing miner 0 at step {self.step} (mining.fault)")
            ray.kill(self.pool.actors[0], no_restart=False)

    def mining_metrics(self) -> dict:
        """The epoch's mining metrics, counts summed over all workers."""
        if self.miner is None:
            return {}

        def reduce(values: list[float]) -> list[float]:
            if self.world == 1:
                return values
            t = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(t)
            return t.tolist()

        return self.miner.epoch_metrics(reduce)


def train_loop(loop: dict) -> None:
    """The function every Ray Train worker runs."""
    cfg = config.from_dict(TrainConfig, loop["cfg"], "train loop config")
    w = Worker(cfg, loop)
    while w.epoch < cfg.optim.epochs and not w.done:
        window_loss, window_acc, window_n, t0 = 0.0, 0.0, 0, time.perf_counter()
        for keys, lengths, target, last, mined in w.mined_batches():
            loss, acc = w.train_step(keys, lengths, target, w.with_article_negatives(lengths, target, mined))
            w.step += 1
            w.batch_in_epoch += 1
            window_loss, window_acc, window_n = window_loss + loss, window_acc + acc, window_n + 1
            checkpoint = w.step % cfg.checkpoint_every == 0 and not (last or w.done)   # else the epoch's follows
            if w.step % cfg.log_every == 0 or checkpoint:
                elapsed = time.perf_counter() - t0
                metrics = {"step": w.step, "epoch": w.epoch, "train/loss": window_loss / window_n,
                           "train/in_batch_acc": window_acc / window_n, "train/candidates": w.candidates,
                           "train/mined_per_query": w.mined,
                           "train/samples_per_s": window_n * cfg.data.batch_size * w.world / elapsed,
                           "lr": w.sched.get_last_lr()[0] if w.sched else 0.0}
                w.log(f"step {w.step:>6}  epoch {w.epoch}  loss {metrics['train/loss']:.4f}  in-batch acc "
                      f"{metrics['train/in_batch_acc']:.3f}  {metrics['train/samples_per_s']:,.0f} samples/s")
                w.report(metrics, checkpoint=checkpoint)
                window_loss, window_acc, window_n, t0 = 0.0, 0.0, 0, time.perf_counter()
            w.maybe_fail()
            if w.done:
                break
        w.epoch += 1
        w.batch_in_epoch = 0
        mining = w.mining_metrics()
        metrics = {"step": w.step, "epoch": w.epoch, **w.validate(), **mining}
        if w.rank == 0:
            w.log(f"epoch {w.epoch}/{cfg.optim.epochs}  step {w.step}  val full-bank R@10 {metrics['val/R@10']:.4f}  "
                  f"R@100 {metrics['val/R@100']:.4f}  MRR@10 {metrics['val/MRR@10']:.4f}  context-excluded R@10 "
                  f"{metrics['val/excl/R@10']:.4f}  MRR@10 {metrics['val/excl/MRR@10']:.4f}  "
                  f"(val in-batch acc {metrics['val/in_batch_acc']:.3f}){_mining_line(mining)}")
            w.keep_best(metrics)
        w.report(metrics, checkpoint=True, epoch_end=True)
        if w.patience_spent():
            w.log(f"train: early stop after epoch {w.epoch}: {cfg.best_metric} has not improved for "
                  f"{cfg.optim.patience} epoch(s); best {w.best:.4f} is in best/")
            break


class KeyBatch(NumpyBatchCollateFn):
    """Ray Data collate step: a numpy batch of shard rows -> (context keys [B, k], lengths [B], targets [B])."""

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = batch["context_keys"]
        if keys.dtype == object:
            keys = np.stack(keys)
        return (torch.as_tensor(keys, dtype=torch.int64), torch.as_tensor(batch["context_len"], dtype=torch.int64),
                torch.as_tensor(batch["target_key"], dtype=torch.int64))


@torch.no_grad()
def _ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameters and buffers alike."""
    for avg, new in zip(average.state_dict().values(), model.state_dict().values()):
        if avg.dtype.is_floating_point:
            avg.lerp_(new, 1.0 - decay)
        else:
            avg.copy_(new)


def _flag_last(items):
    """(item, is_last) pairs, reading one item ahead."""
    it = iter(items)
    current = next(it, _END)
    while current is not _END:
        following = next(it, _END)
        yield current, following is _END
        current = following


_END = object()


def _mining_line(m: dict) -> str:
    if not m.get("mining/requests"):
        return ""
    return (f"\n  mining: {m['mining/requests']:.0f} requests, fallback {m['mining/fallback_rate']:.1%}, "
            f"{m['mining/kept'] / m['mining/requests']:.1f} negatives kept per batch, latency p50 "
            f"{m.get('mining/latency_ms_p50', float('nan')):.0f} ms p95 {m.get('mining/latency_ms_p95', float('nan')):.0f} ms, "
            f"staleness {m.get('mining/staleness_steps', 0):.1f} steps, dropped: target {m['mining/dropped_target']:.0f}, "
            f"window {m['mining/dropped_window']:.0f}, band {m['mining/dropped_band']:.0f}, false-negative "
            f"{m['mining/dropped_false_negative']:.0f}, duplicate {m['mining/dropped_duplicate']:.0f}")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _prune(run_dir: Path, keep: int) -> None:
    found = sorted(p for p in run_dir.glob(f"{checkpoints.PREFIX}*") if (p / checkpoints.META).is_file())
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---- the driver -------------------------------------------------------------------------------------------

def check_same_run(cfg: TrainConfig) -> None:
    """Re-running a name resumes it: refuse if the model, loss or data differ from what it was trained with."""
    path = cfg.run_dir / "config.yaml"
    if not path.is_file():
        return
    before = config.to_dict(config.load(TrainConfig, path))
    now = config.to_dict(cfg)
    changed = [k for k in SAME_RUN_FIELDS if before[k] != now[k]]
    if changed:
        raise ConfigError(f"{path}: run {cfg.name!r} exists with different {changed}; resume it unchanged or "
                          f"pick another --name")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Resolve relative paths against the driver's working directory: workers run elsewhere."""
    data = dataclasses.replace(cfg.data, bank=str(Path(cfg.data.bank).resolve()),
                               shards=str(Path(cfg.data.shards).resolve()))
    storage = cfg.storage if cfg.remote else str(Path(cfg.storage).resolve())
    return dataclasses.replace(cfg, storage=storage, data=data)


def prepare(cfg: TrainConfig, progress: Progress = print, check_run: bool = True) -> dict:
    """Driver-side checks and inputs, before Ray starts any worker."""
    shards = open_shards(cfg.data.shards)
    bank = load_bank(cfg.data.bank)
    check_provenance(shards.manifest, bank.manifest, str(Path(cfg.data.shards) / "manifest.json"))
    train_rows = shards.rows("train")
    per_step = cfg.data.batch_size * max(1, cfg.workers)
    if train_rows < per_step:
        raise RayttError(f"{cfg.data.shards}: {train_rows} train rows, fewer than one step of "
                         f"{per_step} (data.batch_size x workers)")
    if shards.rows("val") == 0:
        raise RayttError(f"{cfg.data.shards}: the val split is empty; full-bank validation needs it")
    val = load_queries(shards, "val", cfg.val_queries, cfg.seed)
    if check_run:
        check_same_run(cfg)
    cfg.mining.curriculum.check_covers(cfg.optim.epochs)
    progress(f"train: {train_rows:,} train rows, {len(val):,} val queries against {bank.num_vectors:,} x {bank.dim}; "
             f"{describe(TwoTower(cfg.tower, bank.dim))}; {max(1, cfg.workers)} worker(s)")
    return {"files": [str(p) for p in shards.files("train")], "bank": bank, "train_rows": train_rows,
            "val": (val.context, val.lengths, val.target)}


def resource_request(cfg: TrainConfig, trials: int = 1, mines: bool | None = None) -> Request:
    """What the run asks Ray for at once: its workers (of `trials` concurrent trials), miners, a bank encoder, and
    a CPU for Ray Data's read tasks when the train split streams from Parquet."""
    mines = cfg.mining.curriculum.mines if mines is None else mines
    asks = [Ask("training worker(s)", max(1, cfg.workers) * trials, cfg.threads_per_worker, float(cfg.use_gpu))]
    if mines:
        asks.append(Ask("miner(s)", cfg.mining.actors, cfg.mining.actor_cpus, cfg.mining.actor_gpus))
        if cfg.tower.doc != "identity":
            asks.append(Ask("bank encoder", 1, min(1.0, cfg.mining.actor_cpus)))
    if not cfg.data.cache:   # streamed: read tasks run beside the workers all along; cached: read once, before
        asks.append(Ask("Ray Data reader", 1, 1.0))
    return Request(tuple(asks))


def join_ray(request: Request, timeout_s: float, progress: Progress = print, private_cpus: float = 0) -> None:
    """Refuse a request this machine or cluster can never meet, join (or start) Ray, wait for free resources.

    A private Ray started here gets at least `private_cpus` logical CPUs (default: the request's).
    """
    cpus = max(private_cpus, request.total("CPU"))
    if not joins_cluster():
        check(request, private_capacity(cpus))
    start_ray(cpus)
    check(request, cluster_capacity())
    wait_until_free(request, timeout_s, progress)


def start_pool(cfg: TrainConfig, bank_ref, progress: Progress = print, force: bool = False) -> MinerPool | None:
    """The miner pool, created here in the top-level driver, when the schedule (or `force`) needs one."""
    if not (cfg.mining.curriculum.mines or force):
        return None
    for line in cfg.mining.curriculum.describe() if cfg.mining.curriculum.mines else ["shared by every trial"]:
        progress(f"mining: {line}")
    return MinerPool(bank_ref, cfg.mining, progress)


def train_dataset(cfg: TrainConfig, inputs: dict):
    """The train split's key rows as a Ray Dataset: streamed from Parquet, or read once and held (`data.cache`)."""
    import ray

    dataset = ray.data.read_parquet(inputs["files"]).select_columns(COLUMNS)
    return dataset.materialize() if cfg.data.cache else dataset


def find_resume(cfg: TrainConfig, progress: Progress = print) -> Path | None:
    """The checkpoint a re-run of this name resumes from (unreadable ones skipped with a warning), said aloud."""
    resume = checkpoints.latest(cfg.run_dir, warn=progress)
    if resume:
        progress(f"train: run {cfg.name!r} exists; resuming from {resume.name}")
    elif cfg.remote and (cfg.run_dir / "config.yaml").is_file():
        progress(f"train: run {cfg.name!r} may exist in {cfg.remote}; Ray Train resumes it from its latest checkpoint")
    return resume


def make_trainer(cfg: TrainConfig, inputs: dict, bank_ref, pool: MinerPool | None, resume: Path | None,
                 callbacks: tuple = (), tune: bool = False):
    """The run's `TorchTrainer`: Ray Data over the train shards, the shared bank and miners, resume point.

    A worker group that cannot be placed within `resource_timeout_s` (at the start, or after a
    failure) ends the run instead of waiting forever: Ray Train's start timeout, no controller retries.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    config.dump(cfg, cfg.run_dir / "config.yaml")
    checkpoints.push(cfg.run_dir, cfg.remote)
    os.environ[START_TIMEOUT_ENV] = str(cfg.resource_timeout_s)
    dataset = inputs.get("dataset") or train_dataset(cfg, inputs)
    loop = {"cfg": config.to_dict(cfg), "bank": bank_ref, "val": inputs["val"], "pool": pool, "tune": tune,
            "steps_per_epoch": inputs["train_rows"] // (cfg.data.batch_size * max(1, cfg.workers)),
            "resume": str(resume) if resume else None, "local": cfg.workers == 0}
    return TorchTrainer(
        train_loop, train_loop_config=loop, datasets={"train": dataset},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.threads_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=cfg.storage if cfg.remote else str(cfg.run_dir.parent),
                             callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=cfg.max_failures,
                                                          controller_failure_limit=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)))


def train(cfg: TrainConfig, progress: Progress = print) -> dict:
    """Run (or resume) training; returns the summary written to RUN/summary.json."""
    import ray

    cfg = absolute_paths(cfg)
    if cfg.remote:
        check_uri(cfg.remote)
        checkpoints.pull(cfg.remote, cfg.run_dir)
        progress(f"train: run directory {cfg.remote} (checkpoints written there by Ray Train; local mirror {cfg.run_dir})")
    inputs = prepare(cfg, progress)
    resume = find_resume(cfg, progress)
    join_ray(resource_request(cfg), cfg.resource_timeout_s, progress)
    bank_ref = ray.put(inputs["bank"])
    pool = start_pool(cfg, bank_ref, progress)
    started = time.perf_counter()
    try:
        with _restored_sigint():
            result = make_trainer(cfg, inputs, bank_ref, pool, resume).fit()
    except (KeyboardInterrupt, SystemExit) as exc:   # Ray Train's Ctrl-C handler aborts the run, then exits
        raise Interrupted(f"train: run {cfg.name!r} interrupted; run the same command again to resume it from its "
                          f"latest checkpoint") from exc
    except Exception as exc:  # noqa: BLE001 - Ray Train raises its own error types; one clear line for the user
        raise failure(cfg, exc) from exc
    finally:
        if pool:
            pool.shutdown()
    if result.error:   # local mode (workers: 0) returns its error instead of raising it
        raise failure(cfg, result.error) from result.error
    checkpoints.pull(cfg.remote, cfg.run_dir)
    summary = _summary(cfg, time.perf_counter() - started)
    write_json(cfg.run_dir / "summary.json", summary)
    checkpoints.push(cfg.run_dir, cfg.remote)
    best = summary["best"]
    progress(f"train: done in {summary['seconds']:.0f}s, {summary['steps']} steps; best {cfg.best_metric} = "
             f"{best['value']:.4f} at step {best['step']} ({cfg.remote or cfg.run_dir}/best)")
    return summary


@contextlib.contextmanager
def _restored_sigint():
    """Put back this process's SIGINT handler after `fit()`.

    Ray Train installs one (Ctrl-C aborts the run) whose closure holds the run's controller actor:
    left in place, it keeps that actor and its dataset actors alive until the next run replaces it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def failure(cfg: TrainConfig, exc: Exception) -> RayttError:
    """A failed run as one clear error: the worker's own error, or the resources that never came."""
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(exc, RayttError):
        return exc
    cause = exc
    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        cause = next(iter(exc.worker_failures.values()))
    elif isinstance(exc, ControllerError):
        cause = exc.controller_failure
    if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
        return ResourceError(f"train: run {cfg.name!r}: its {max(1, cfg.workers)} worker(s) could not be placed within "
                             f"resource_timeout_s={cfg.resource_timeout_s:g}s (each needs {cfg.threads_per_worker} "
                             f"CPU{' and 1 GPU' if cfg.use_gpu else ''}); free resources or raise resource_timeout_s")
    return RayttError(f"train: run {cfg.name!r} failed: {_first_line(cause)}")


def _first_line(exc: BaseException) -> str:
    """The error's own message: a RayttError's text, or the last line of a remote traceback."""
    if isinstance(exc, RayttError) and exc.args:
        return str(exc.args[0])
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _summary(cfg: TrainConfig, seconds: float) -> dict:
    rows = runlog.read(cfg.run_dir / "metrics.jsonl")
    best_meta = checkpoints.read_meta(cfg.run_dir / "best")
    return {"name": cfg.name, "seconds": seconds, "steps": max(r["step"] for r in rows),
            "epochs": max(r["epoch"] for r in rows),
            "best": {"metric": cfg.best_metric, "value": best_meta["metrics"][cfg.best_metric],
                     "step": best_meta["step"], "epoch": best_meta["epoch"]},
            "last_val": next((r for r in reversed(rows) if "val/R@10" in r), {})}
