"""The loop every Ray Train worker runs: set up, then epochs of steps, each epoch ending in validation.

`train_loop` is the whole run as a worker sees it; `WorkerRun` holds what the worker set up (its
place in the world, the bank on its device, the trainee, the miner client, the recorder) and its
`Position`, which only the loop advances.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from raytt import checkpoints
from raytt.mining.article import ArticleNegatives
from raytt.mining.client import MiningClient
from raytt.mining.select import BankLayout
from raytt.placement import describe_workers, gather_workers
from raytt.progress import Console, duration, eta
from raytt.tensors import as_tensor
from raytt.training import faults
from raytt.training.config import TrainConfig
from raytt.training.data import StepBatch, epoch_batches, mined_batches
from raytt.training.negatives import with_article_negatives
from raytt.training.position import Position
from raytt.training.recorder import Recorder
from raytt.training.setup import build_trainee, total_steps
from raytt.training.step import StepResult, World, train_step
from raytt.training.validation import ValSet, validate


@dataclass(frozen=True)
class WorkerInputs:
    """What the driver hands every worker (Ray pickles it once per worker): configs stay dataclasses."""

    cfg: TrainConfig
    bank: object  # ObjectRef of the loaded `Bank`, put once by the driver
    val: ValSet
    pool: object | None  # the `MinerPool`, when the curriculum mines
    steps_per_epoch: int
    resume: str | None = None  # the checkpoint a re-run of this name starts from
    tune: bool = False  # under Tune: only epoch ends reach Ray Train
    local: bool = False  # workers: 0, Ray Train's local mode
    label: str = ""  # a prefix for every console line (the trial's name under Tune)


def train_loop(config: dict) -> None:
    """The function every Ray Train worker runs (`config["inputs"]` is a `WorkerInputs`)."""
    run = WorkerRun(config["inputs"])
    try:
        while run.position.epoch < run.cfg.optim.epochs and not run.done:
            train_epoch(run)
            if end_epoch(run):
                break
    finally:
        run.recorder.tracker.close()


def train_epoch(run: WorkerRun) -> None:
    """Train on this epoch's batches (from where a resume left off), logging and checkpointing as configured."""
    cfg, position, window = run.cfg, run.position, Window()
    for batch in run.batches():
        result = train_step(run.trainee, run.bank, batch, cfg, run.world)
        position.advance()
        window.add(result)
        checkpoint = position.step % cfg.checkpoint_every == 0 and not (batch.last or run.done)
        if position.step % cfg.log_every == 0 or checkpoint:
            metrics = window.row(position, cfg.data.batch_size * run.world.size, run.trainee.lr)
            metrics["eta_s"] = run.eta_s()
            run.log(step_line(metrics, position, run.total_steps, cfg.optim.epochs, run.steps_per_epoch))
            run.recorder.record(metrics, run.trainee, position, run.dim, checkpoint=checkpoint)
            window = Window()
        faults.inject(cfg, run.cfg.run_dir, run.world.rank, position.step, run.pool, run.log)
        if run.done:
            break


def end_epoch(run: WorkerRun) -> bool:
    """Close the epoch: validate on the full bank, keep the best, checkpoint; True when patience ran out."""
    cfg, position = run.cfg, run.position
    position.end_epoch()
    mining = run.mining_metrics()
    metrics = {"step": position.step, "epoch": position.epoch, **mining}
    if run.world.rank == 0:
        started = time.perf_counter()
        metrics.update(validate(run.trainee.served, run.bank_np, run.val, cfg.data.batch_size, run.world.device))
        metrics["val_seconds"] = time.perf_counter() - started
        metrics["eta_s"] = run.eta_s()
        run.log(epoch_line(metrics, cfg.optim.epochs) + mining_line(mining))
        run.recorder.keep_best(metrics, run.trainee, position, run.dim)
    run.recorder.record(metrics, run.trainee, position, run.dim, checkpoint=True, epoch_end=True)
    if run.patience_spent():
        run.log(
            f"train: early stop after epoch {position.epoch}: {cfg.best_metric} has not improved for "
            f"{cfg.optim.patience} epoch(s); best {position.best:.4f} is in best/"
        )
        return True
    return False


@dataclass
class Window:
    """Step results since the last progress line."""

    loss: float = 0.0
    accuracy: float = 0.0
    steps: int = 0
    last: StepResult | None = None
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        self.loss, self.accuracy, self.steps, self.last = (
            self.loss + result.loss,
            self.accuracy + result.accuracy,
            self.steps + 1,
            result,
        )

    def row(self, position: Position, samples_per_step: int, lr: float) -> dict:
        elapsed = time.perf_counter() - self.started
        return {
            "step": position.step,
            "epoch": position.epoch,
            "train/loss": self.loss / self.steps,
            "train/in_batch_acc": self.accuracy / self.steps,
            "train/candidates": self.last.candidates,
            "train/mined_per_query": self.last.mined_per_query,
            "train/samples_per_s": self.steps * samples_per_step / elapsed,
            "lr": lr,
        }


class WorkerRun:
    """One worker's set-up and position in the run."""

    def __init__(self, inputs: WorkerInputs) -> None:
        import ray
        import ray.train
        import ray.train.torch

        cfg = self.cfg = inputs.cfg
        context = ray.train.get_context()
        device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
        self.world = World(context.get_world_rank(), context.get_world_size(), device)
        torch.set_num_threads(cfg.threads_per_worker)
        bank = ray.get(inputs.bank)
        self.bank_np, self.bank, self.val, self.pool = (
            bank.vectors,
            as_tensor(bank.vectors).to(device),
            inputs.val,
            inputs.pool,
        )
        self.steps_per_epoch = inputs.steps_per_epoch
        self.total_steps = total_steps(cfg, inputs.steps_per_epoch)
        self.trainee = build_trainee(cfg, self.dim, device, self.world.size, self.total_steps)
        log_file = cfg.run.path / "train.log" if self.world.rank == 0 else None
        self.console = Console(log_file, f"[{inputs.label}] " if inputs.label else "")
        self.data = ray.train.get_dataset_shard("train")
        self.miner = MiningClient(inputs.pool, cfg.mining, self.world.rank, cfg.tower) if inputs.pool else None
        self.same_article = (
            ArticleNegatives(BankLayout(bank.article_codes, bank.positions), cfg.mining.window)
            if cfg.mining.article_negatives
            else None
        )
        self.recorder = Recorder(cfg, self.world.rank, inputs.local, inputs.tune, self.log, bank.manifest.embedder_id)
        self.position = Position()
        self._restore(ray.train.get_checkpoint(), inputs.resume)
        workers = gather_workers(self.world.rank, self.world.size, cfg.threads_per_worker, int(cfg.use_gpu))
        self.log(f"train: attempt {self.recorder.attempt}: {describe_workers(workers, cfg.placement)}")
        self.recorder.started(self.position, workers)
        self.attempt_began, self.attempt_first_step = time.perf_counter(), self.position.step

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def done(self) -> bool:
        return 0 < self.cfg.optim.max_steps <= self.position.step

    def log(self, line: str) -> None:
        """Rank 0 prints the line, timestamped, and keeps it in RUN/train.log."""
        if self.world.rank == 0:
            self.console(line)

    def eta_s(self) -> float:
        """Seconds to the run's last step at this attempt's pace so far (validation time included); -1 unknown."""
        done = self.position.step - self.attempt_first_step
        left = eta(time.perf_counter() - self.attempt_began, done, self.total_steps - self.attempt_first_step)
        return -1.0 if left is None else round(left, 1)

    def _restore(self, reported, resume: str | None) -> None:
        """Continue from the run's newest readable checkpoint (see `restore`)."""
        restored = restore(self.cfg, self.trainee, reported, resume, self.log, self.world.device)
        if restored is None and self.cfg.init_from:
            folder = checkpoints.init_folder(self.cfg.init_from)
            self.trainee.start_from(checkpoints.load_weights(folder, self.world.device))
            self.log(f"train: starting from the weights of {folder}")
        self.position = restored or self.position

    def batches(self) -> Iterator[StepBatch]:
        """This epoch's batches with their mined and same-article negatives."""
        batches = epoch_batches(self.data, self.cfg, self.position, self.world.rank)
        stage = self.cfg.mining.curriculum.at(self.position.epoch)
        if self.miner is not None and stage.count:
            batches = mined_batches(
                batches, self.miner, stage, self.position, self.trainee.model, self.cfg.mining.max_in_flight
            )
        for batch in batches:
            seed = (self.cfg.seed, self.world.rank, self.position.step)
            yield with_article_negatives(batch, self.same_article, self.cfg.mining.article_negatives, seed)

    def mining_metrics(self) -> dict:
        """The epoch's mining metrics, counts summed over all workers."""
        return mining_metrics(self.miner, self.world)

    def patience_spent(self) -> bool:
        return patience_spent(self.cfg, self.position, self.world)


def mining_metrics(miner: MiningClient | None, world: World) -> dict:
    """The epoch's mining metrics, counts summed over all workers (every worker must call it)."""
    if miner is None:
        return {}

    def reduce(values: list[float]) -> list[float]:
        if world.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    return miner.epoch_metrics(reduce)


def restore(cfg: TrainConfig, trainee, reported, resume: str | None, log, device) -> Position | None:
    """Load the run's newest readable checkpoint into `trainee` after a worker failure (`reported`) or on re-run;
    its `Position`, or None when there is nothing to resume.

    The run's own checkpoints are searched, not only the one Ray hands back: a worker that dies
    right after persisting a checkpoint can die before Ray's controller has registered it, and Ray
    would resume from the one before. An unreadable checkpoint is skipped, with a warning.
    """
    if reported is None and resume is None:
        return None
    run = cfg.run
    tries = checkpoints.remote_newest_first(run.remote, run.path) if run.remote else iter(checkpoints.found(run.path))
    readable = checkpoints.first_readable(tries, log, device)
    if not readable:
        return None
    folder, (weights, state, _) = readable
    trainee.load(weights, state)
    position = Position.from_state(state)
    checkpoints.set_rng_state(state["rng"])
    log(
        f"train: resumed from {folder.name} at step {position.step} (epoch {position.epoch}, "
        f"batch {position.batch_in_epoch})"
    )
    return position


def patience_spent(cfg: TrainConfig, position: Position, world: World) -> bool:
    """Early stopping: rank 0's count of epochs without a better `best_metric`, agreed by every worker."""
    spent = torch.tensor([int(0 < cfg.optim.patience <= position.since_best)])
    if world.size > 1:
        dist.broadcast(spent, src=0)
    return bool(spent.item())


def step_line(m: dict, position: Position, total: int, epochs: int, per_epoch: int) -> str:
    """The progress line: step k/N, where in the epoch, loss, in-batch accuracy, lr, samples/s, ETA."""
    left = f"ETA {duration(m['eta_s'])}" if m["eta_s"] >= 0 else "ETA ?"
    return (
        f"step {position.step}/{total} (epoch {position.epoch + 1}/{epochs}, batch {position.batch_in_epoch}/"
        f"{per_epoch})  loss {m['train/loss']:.4f}  in-batch acc {m['train/in_batch_acc']:.3f}  lr {m['lr']:.2e}  "
        f"{m['train/samples_per_s']:,.0f} samples/s  {left}"
    )


def epoch_line(m: dict, epochs: int) -> str:
    """The epoch-end line: full-bank validation in both views, validation time, ETA."""
    left = f", ETA {duration(m['eta_s'])}" if m.get("eta_s", -1) >= 0 else ""
    return (
        f"epoch {m['epoch']}/{epochs}  step {m['step']}  val full-bank R@10 {m['val/R@10']:.4f}  "
        f"R@100 {m['val/R@100']:.4f}  MRR@10 {m['val/MRR@10']:.4f}  context-excluded R@10 "
        f"{m['val/excl/R@10']:.4f}  MRR@10 {m['val/excl/MRR@10']:.4f}  (val in-batch acc "
        f"{m['val/in_batch_acc']:.3f}); validation took {duration(m['val_seconds'])}{left}"
    )


def mining_line(m: dict) -> str:
    if not m.get("mining/requests"):
        return ""
    return (
        f"\n  mining: {m['mining/requests']:.0f} requests, fallback {m['mining/fallback_rate']:.1%}, "
        f"{m['mining/kept'] / m['mining/requests']:.1f} negatives kept per batch, latency p50 "
        f"{m.get('mining/latency_ms_p50', float('nan')):.0f} ms p95 "
        f"{m.get('mining/latency_ms_p95', float('nan')):.0f} ms, staleness "
        f"{m.get('mining/staleness_steps', 0):.1f} steps, dropped: target {m['mining/dropped_target']:.0f}, "
        f"window {m['mining/dropped_window']:.0f}, band {m['mining/dropped_band']:.0f}, relative "
        f"{m['mining/dropped_relative']:.0f}, false-negative "
        f"{m['mining/dropped_false_negative']:.0f}, duplicate {m['mining/dropped_duplicate']:.0f}"
    )
