"""The loop every Ray Train worker of a text run runs: the vector loop's shape (epochs of steps, full-corpus
validation at each epoch end, checkpoints, best/, resume), with text batches and text validation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from raytt.placement import describe_workers, gather_workers
from raytt.progress import Console, duration, eta
from raytt.text.baselines import dense_top
from raytt.text.config import TextTrainConfig
from raytt.text.data import Judged, TextCollate, TextRows
from raytt.text.mining import mined_text_batches, text_client
from raytt.text.ranking import encode_side, scores
from raytt.text.reencode import corpus_vectors
from raytt.text.step import TextStepResult, on_device, text_step
from raytt.text.towers import build_text_tower
from raytt.training import faults
from raytt.training.data import flag_last
from raytt.training.position import Position
from raytt.training.recorder import Recorder
from raytt.training.setup import Trainee, total_steps, trainee_for
from raytt.training.step import World
from raytt.training.worker import mining_line, mining_metrics, patience_spent, restore, step_line

VAL_TOP = 100


@dataclass(frozen=True)
class TextWorkerInputs:
    """What the driver hands every worker: the config, the passage table's ObjectRef, the dev queries."""

    cfg: TextTrainConfig
    table: object  # ObjectRef of the passage table: token ids [N, L] or cached vectors [N, D]
    val: Judged
    width: int  # the cached vectors' width (adapter, hybrid, cached passages); 0 = none read
    steps_per_epoch: int
    resume: str | None = None
    tune: bool = False
    local: bool = False
    label: str = ""
    pool: object = None  # the MinerPool when the schedule mines


def text_train_loop(config: dict) -> None:
    """The function every Ray Train worker runs (`config["inputs"]` is a `TextWorkerInputs`)."""
    run = TextWorkerRun(config["inputs"])
    try:
        while run.position.epoch < run.cfg.optim.epochs and not run.done:
            train_epoch(run)
            if end_epoch(run):
                break
    finally:
        run.recorder.tracker.close()


def train_epoch(run: TextWorkerRun) -> None:
    cfg, position = run.cfg, run.position
    window: list[TextStepResult] = []
    started = time.perf_counter()
    for rows, last in run.batches():
        batch = on_device(run.table, rows.queries, rows.positive_keys, rows.negative_keys, run.world.device)
        window.append(text_step(run.trainee, batch, cfg, run.world))
        position.advance()
        checkpoint = position.step % cfg.checkpoint_every == 0 and not (last or run.done)
        if position.step % cfg.log_every == 0 or checkpoint:
            metrics = window_row(window, position, cfg.data.batch_size * run.world.size, run.trainee.lr, started)
            metrics["eta_s"] = run.eta_s()
            run.log(step_line(metrics, position, run.total_steps, cfg.optim.epochs, run.steps_per_epoch))
            run.recorder.record(metrics, run.trainee, position, run.dim, checkpoint=checkpoint)
            window, started = [], time.perf_counter()
        faults.inject(cfg, cfg.run_dir, run.world.rank, position.step, None, run.log)
        if run.done:
            break


def end_epoch(run: TextWorkerRun) -> bool:
    """Validate on the whole corpus (rank 0; its passage vectors become the miners' next index), keep the best,
    checkpoint; True when patience ran out."""
    cfg, position = run.cfg, run.position
    position.end_epoch()
    mining = mining_metrics(run.miner, run.world)
    metrics = {"step": position.step, "epoch": position.epoch, **mining}
    if run.world.rank == 0:
        started = time.perf_counter()
        passages = run.encode_passages(run.trainee.served)
        top = dense_top(passages, encode_side(run.trainee.served, run.val.inputs, "query", run.world.device), VAL_TOP)
        metrics.update({f"val/{k}": v for k, v in scores(top, run.val.grades).items()})
        metrics["val_seconds"] = time.perf_counter() - started
        metrics["eta_s"] = run.eta_s()
        run.log(epoch_line(metrics, cfg.optim.epochs) + mining_line(mining))
        run.offer_index(passages if run.trainee.ema is None else None)
        run.recorder.keep_best(metrics, run.trainee, position, run.dim)
    run.recorder.record(metrics, run.trainee, position, run.dim, checkpoint=True, epoch_end=True)
    spent = patience_spent(cfg, position, run.world)
    if spent:
        run.log(f"train: early stop after epoch {position.epoch}: {cfg.best_metric} has not improved")
    return spent


def window_row(window: list[TextStepResult], position: Position, per_step: int, lr: float, started: float) -> dict:
    elapsed = time.perf_counter() - started
    return {
        "step": position.step,
        "epoch": position.epoch,
        "train/loss": float(np.mean([r.loss for r in window])),
        "train/in_batch_acc": float(np.mean([r.accuracy for r in window])),
        "train/candidates": window[-1].candidates,
        "train/negatives_per_query": window[-1].negatives_per_query,
        "train/samples_per_s": len(window) * per_step / elapsed,
        "lr": lr,
    }


class TextWorkerRun:
    """One worker's set-up and position in a text run."""

    def __init__(self, inputs: TextWorkerInputs) -> None:
        import ray
        import ray.train
        import ray.train.torch

        cfg = self.cfg = inputs.cfg
        context = ray.train.get_context()
        device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
        self.world = World(context.get_world_rank(), context.get_world_size(), device)
        torch.set_num_threads(cfg.threads_per_worker)
        self.table_ref = inputs.table
        self.table = torch.as_tensor(ray.get(inputs.table)).to(device)
        if not cfg.tower.passages_read_tokens:
            self.table = self.table.float()
        self.val, self.steps_per_epoch = inputs.val, inputs.steps_per_epoch
        self.total_steps = total_steps(cfg, inputs.steps_per_epoch)
        self.width = inputs.width
        self.trainee = build_text_trainee(cfg, self.width, device, self.world.size, self.total_steps)
        self.console = Console(cfg.run.path / "train.log" if self.world.rank == 0 else None, _prefix(inputs.label))
        self.data = ray.train.get_dataset_shard("train")
        self.recorder = Recorder(cfg, self.world.rank, inputs.local, inputs.tune, self.log)
        self.miner = text_client(inputs.pool, cfg, self.world.rank)
        self.position = Position()
        self._restore(ray.train.get_checkpoint(), inputs.resume)
        if self.position.step and self.world.rank == 0:
            self.offer_index()
        workers = gather_workers(self.world.rank, self.world.size, cfg.threads_per_worker, int(cfg.use_gpu))
        self.log(f"train: attempt {self.recorder.attempt}: {describe_workers(workers, cfg.placement)}")
        self.recorder.started(self.position, workers)
        self.began, self.first_step = time.perf_counter(), self.position.step

    @property
    def dim(self) -> int:
        """What a checkpoint's meta records as `dim`: the width the towers were built for."""
        return self.width

    @property
    def done(self) -> bool:
        return 0 < self.cfg.optim.max_steps <= self.position.step

    def log(self, line: str) -> None:
        if self.world.rank == 0:
            self.console(line)

    def eta_s(self) -> float:
        left = eta(
            time.perf_counter() - self.began, self.position.step - self.first_step, self.total_steps - self.first_step
        )
        return -1.0 if left is None else round(left, 1)

    def encode_passages(self, model) -> np.ndarray:
        """Every passage by `model`'s passage side: by `encode_actors` Ray Data actors, or here."""
        cfg, started = self.cfg, time.perf_counter()
        vectors = corpus_vectors(
            model,
            cfg.tower,
            self.width,
            self.table,
            self.table_ref,
            cfg.encode_actors,
            cfg.encode_cpus,
            self.world.device,
        )
        if cfg.encode_actors:
            self.log(
                f"validation: {len(vectors):,} passages encoded by {cfg.encode_actors} Ray Data actor(s) in "
                f"{duration(time.perf_counter() - started)}"
            )
        return vectors

    def offer_index(self, passages: np.ndarray | None = None) -> None:
        """Rank 0: the trained passage side's vectors now (`passages`, or encoded here) for the miners' next index,
        when there are miners."""
        if self.miner is None:
            return
        if passages is None:
            passages = self.encode_passages(self.trainee.model)
        self.miner.offer_index(self.position.step, passages)

    def batches(self) -> Iterator[tuple[TextRows, bool]]:
        """This epoch's batches (with the pool's negatives when the stage mines), skipping those trained on before
        a resume, each with its is-last flag."""
        stage = self.cfg.mining.curriculum.at(self.position.epoch)
        rows = self._rows()
        if self.miner is None or not stage.count:
            return rows
        return mined_text_batches(
            rows, self.miner, stage, self.position, self.trainee.model, self.cfg, self.world.device
        )

    def _rows(self) -> Iterator[tuple[TextRows, bool]]:
        shuffle = self.cfg.data.shuffle_buffer
        it = self.data.iter_torch_batches(
            batch_size=self.cfg.data.batch_size,
            drop_last=True,
            prefetch_batches=self.cfg.data.prefetch_batches,
            local_shuffle_buffer_size=shuffle or None,
            local_shuffle_seed=self.cfg.seed + 1000 * self.position.epoch + self.world.rank if shuffle else None,
            collate_fn=TextCollate(),
        )
        for i, (batch, last) in enumerate(flag_last(it)):
            if i >= self.position.batch_in_epoch:
                yield batch, last

    def _restore(self, reported, resume: str | None) -> None:
        """Continue from the run's newest readable checkpoint (the vector loop's `restore`)."""
        self.position = restore(self.cfg, self.trainee, reported, resume, self.log, self.world.device) or self.position


def build_text_trainee(cfg: TextTrainConfig, width: int, device, world_size: int, steps: int) -> Trainee:
    """Seeded text towers, trained as the vector towers are (`trainee_for`)."""
    torch.manual_seed(cfg.seed)
    return trainee_for(build_text_tower(cfg.tower, width).to(device), cfg, world_size, steps)


def _prefix(label: str) -> str:
    return f"[{label}] " if label else ""


def epoch_line(m: dict, epochs: int) -> str:
    left = f", ETA {duration(m['eta_s'])}" if m.get("eta_s", -1) >= 0 else ""
    return (
        f"epoch {m['epoch']}/{epochs}  step {m['step']}  val full-corpus R@10 {m['val/R@10']:.4f}  R@100 "
        f"{m['val/R@100']:.4f}  MRR@10 {m['val/MRR@10']:.4f}  NDCG@10 {m['val/NDCG@10']:.4f}; validation took "
        f"{duration(m['val_seconds'])}{left}"
    )
