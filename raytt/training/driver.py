"""The training driver: checks the data, joins Ray, builds the `TorchTrainer`, resumes, summarises.

The driver checks the data (provenance, split leaks), puts the bank in the object store once, and
hands Ray Train a Ray Dataset over the train shards and a `WorkerInputs` for the loop every worker
runs (`raytt.training.worker`). Each epoch ends with full-bank validation on the val split and a
checkpoint; the best one is copied to `best/`. `workers: 0` runs the same loop in this process (Ray
Train's local mode) for debugging. Tune builds its trials from the public functions here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raytt import checkpoints, config
from raytt.bank import Bank, load_bank, share_bank
from raytt.errors import ConfigError, Interrupted, RayttError
from raytt.evaluation import load_queries
from raytt.mining.index import check_factory
from raytt.mining.pool import MinerPool
from raytt.placement import describe_observed, observe, plan
from raytt.progress import Console, say
from raytt.resources import (
    Ask,
    Request,
    ResourceError,
    check,
    cluster_capacity,
    joins_cluster,
    private_capacity,
    wait_until_free,
)
from raytt.sequences import check_provenance, open_shards
from raytt.session import start_ray
from raytt.storage import check_uri, write_json
from raytt.towers import TwoTower, describe
from raytt.tracking import check_tracking
from raytt.training.config import TrainConfig
from raytt.training.data import train_dataset
from raytt.training.validation import ValSet
from raytt.training.worker import WorkerInputs, train_loop

Progress = Callable[[str], None]
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Ray Train's controller
SAME_RUN_FIELDS = ("tower", "loss", "data")


@dataclass
class Prepared:
    """What the driver checked and loaded before Ray starts any worker."""

    files: list[str]  # the train split's Parquet files
    bank: Bank
    train_rows: int
    val: ValSet
    dataset: object = None  # a Ray Dataset read ahead of time (a search with data.cache), else built per trainer

    def steps_per_epoch(self, cfg: TrainConfig) -> int:
        return self.train_rows // (cfg.data.batch_size * max(1, cfg.workers))


def check_same_run(cfg: TrainConfig) -> None:
    """Re-running a name resumes it: refuse if the model, loss or data differ from what it was trained with."""
    path = cfg.run.config
    if not path.is_file():
        return
    before = config.to_dict(config.load(type(cfg), path))
    now = config.to_dict(cfg)
    changed = [k for k in SAME_RUN_FIELDS if before[k] != now[k]]
    if changed:
        raise ConfigError(
            f"{path}: run {cfg.name!r} exists with different {changed}; resume it unchanged or pick another --name"
        )


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Resolve relative paths against the driver's working directory: workers run elsewhere.

    A run names its data: with `data.bank` or `data.shards` unset it is refused (never a default folder).
    """
    missing = [f"data.{k}" for k in ("bank", "shards") if not getattr(cfg.data, k)]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: give --config with a data section (e.g. "
            f"configs/demo.yaml) or --data.bank BANK --data.shards SHARDS"
        )
    data = dataclasses.replace(
        cfg.data, bank=str(Path(cfg.data.bank).resolve()), shards=str(Path(cfg.data.shards).resolve())
    )
    storage = cfg.storage if cfg.remote else str(Path(cfg.storage).resolve())
    init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from else ""
    return dataclasses.replace(cfg, storage=storage, data=data, init_from=init_from)


def prepare(cfg: TrainConfig, progress: Progress = say, check_run: bool = True) -> Prepared:
    """Driver-side checks and inputs, before Ray starts any worker."""
    shards = open_shards(cfg.data.shards)
    bank = load_bank(cfg.data.bank)
    check_provenance(shards.manifest, bank.manifest, str(Path(cfg.data.shards) / "manifest.json"))
    train_rows = shards.rows("train")
    per_step = cfg.data.batch_size * max(1, cfg.workers)
    if train_rows < per_step:
        raise RayttError(
            f"{cfg.data.shards}: {train_rows} train rows, fewer than one step of {per_step} (data.batch_size x workers)"
        )
    if shards.rows("val") == 0:
        raise RayttError(f"{cfg.data.shards}: the val split is empty; full-bank validation needs it")
    val = load_queries(shards, "val", cfg.val_queries, cfg.seed)
    if check_run:
        check_same_run(cfg)
    cfg.mining.curriculum.check_covers(cfg.optim.epochs)
    if cfg.mining.index == "factory":
        check_factory(cfg.mining.factory, bank.dim)
    if cfg.init_from:
        start = checkpoints.check_init(cfg.init_from, cfg.tower, bank.dim, bank.manifest.embedder_id)
        progress(f"train: starts from the weights in {start}")
    progress(
        f"train: {train_rows:,} train rows, {len(val):,} val queries against {bank.num_vectors:,} x {bank.dim}; "
        f"{describe(TwoTower(cfg.tower, bank.dim))}; {max(1, cfg.workers)} worker(s)"
    )
    return Prepared(
        [str(p) for p in shards.files("train")], bank, train_rows, ValSet(val.context, val.lengths, val.target)
    )


def resource_request(cfg: TrainConfig, trials: int = 1, mines: bool | None = None) -> Request:
    """What the run asks Ray for at once: its workers (of `trials` concurrent trials), miners, a bank encoder, and
    a CPU for Ray Data's read tasks when the train split streams from Parquet."""
    mines = cfg.mining.curriculum.mines if mines is None else mines
    workers, miners = max(1, cfg.workers) * trials, cfg.mining
    asks = [
        Ask(
            "training worker(s)",
            workers,
            cfg.threads_per_worker,
            float(cfg.use_gpu),
            tuple(sorted(cfg.worker_resources.items())),
        )
    ]
    if mines:
        custom = tuple(sorted(miners.resources.items()))
        asks.append(Ask("miner(s)", miners.actors, miners.actor_cpus, miners.actor_gpus, custom))
        if cfg.encodes_bank:
            asks.append(Ask("bank encoder", 1, min(1.0, cfg.mining.actor_cpus)))
    encoders, cpus = cfg.validation_encoders
    if encoders:
        asks.append(Ask("passage encoder(s)", encoders * trials, cpus))
    if not cfg.data.cache:  # streamed: read tasks run beside the workers all along; cached: read once, before
        asks.append(Ask("Ray Data reader", 1, 1.0))
    return Request(tuple(asks))


def join_ray(request: Request, timeout_s: float, progress: Progress = say, private_cpus: float = 0) -> None:
    """Refuse a request this machine or cluster can never meet, join (or start) Ray, wait for free resources.

    A private Ray started here gets at least `private_cpus` logical CPUs (default: the request's).
    """
    cpus = max(private_cpus, request.total("CPU"))
    if not joins_cluster():
        check(request, private_capacity(cpus))
    start_ray(cpus)
    check(request, cluster_capacity())
    wait_until_free(request, timeout_s, progress)


def start_pool(cfg: TrainConfig, bank_ref, progress: Progress = say, force: bool = False) -> MinerPool | None:
    """The miner pool, created here in the top-level driver, when the schedule (or `force`) needs one."""
    if not (cfg.mining.curriculum.mines or force):
        return None
    for line in cfg.mining.curriculum.describe() if cfg.mining.curriculum.mines else ["shared by every trial"]:
        progress(f"mining: {line}")
    return MinerPool(bank_ref, cfg.mining, progress)


def find_resume(cfg: TrainConfig, progress: Progress = say) -> Path | None:
    """The checkpoint a re-run of this name resumes from (unreadable ones skipped with a warning), said aloud."""
    resume = checkpoints.latest(cfg.run_dir, warn=progress)
    if resume:
        progress(f"train: run {cfg.name!r} exists; resuming from {resume.name}")
    elif cfg.remote and (cfg.run_dir / "config.yaml").is_file():
        progress(f"train: run {cfg.name!r} may exist in {cfg.remote}; Ray Train resumes it from its latest checkpoint")
    return resume


def make_trainer(
    cfg: TrainConfig,
    inputs: Prepared,
    bank_ref,
    pool: MinerPool | None,
    resume: Path | None,
    callbacks: tuple = (),
    label: str = "",
):
    """The run's `TorchTrainer`: Ray Data over the train shards, the shared bank and miners, resume point.

    A worker group that cannot be placed within `resource_timeout_s` (at the start, or after a
    failure) ends the run instead of waiting forever: Ray Train's start timeout, no controller retries.
    """
    run = cfg.run
    run.path.mkdir(parents=True, exist_ok=True)
    config.dump(cfg, run.config)
    run.push()
    os.environ[START_TIMEOUT_ENV] = str(cfg.resource_timeout_s)
    dataset = inputs.dataset or train_dataset(cfg, inputs.files)
    worker_inputs = WorkerInputs(
        cfg,
        bank_ref,
        inputs.val,
        pool,
        inputs.steps_per_epoch(cfg),
        str(resume) if resume else None,
        tune=bool(label),
        local=cfg.workers == 0,
        label=label,
    )
    return torch_trainer(cfg, train_loop, worker_inputs, dataset, callbacks)


def torch_trainer(cfg: TrainConfig, loop: Callable[[dict], None], worker_inputs, dataset, callbacks: tuple = ()):
    """A `TorchTrainer` running `loop` on `cfg.workers` workers over `dataset`, with the run's name, storage,
    failure and checkpoint policy (shared by vector and text runs)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config={"inputs": worker_inputs},
        datasets={"train": dataset},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.threads_per_worker, **cfg.worker_resources},
            placement_strategy=cfg.placement.upper(),
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage if cfg.remote else str(cfg.run_dir.parent),
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )


def train(cfg: TrainConfig, progress: Progress = say) -> dict:
    """Run (or resume) training; returns the summary written to RUN/summary.json.

    Every line `progress` gets is also kept, timestamped, in RUN/train.log (with the rank-0 worker's).
    """
    cfg = absolute_paths(cfg)
    check_tracking(cfg.tracking)
    run = cfg.run
    log = Console(run.path / "train.log", hold=True)  # nothing is written until the run starts
    progress = _kept(progress, log)
    if run.remote:
        check_uri(run.remote)
        run.pull()
        progress(f"train: run directory {run.remote} (checkpoints written there by Ray Train; local mirror {run.path})")
    inputs = prepare(cfg, progress)
    resume = find_resume(cfg, progress)
    join_ray(resource_request(cfg), cfg.resource_timeout_s, progress)
    bank_ref = share_bank(inputs.bank)
    pool = start_pool(cfg, bank_ref, progress)
    started = time.perf_counter()
    try:
        with _restored_sigint():
            trainer = make_trainer(cfg, inputs, bank_ref, pool, resume)
            log.release()
            result = trainer.fit()
            seen = _observe(bank_ref, pool, progress)
    except (KeyboardInterrupt, SystemExit) as exc:  # Ray Train's Ctrl-C handler aborts the run, then exits
        raise Interrupted(
            f"train: run {cfg.name!r} interrupted; run the same command again to resume it from its latest checkpoint"
        ) from exc
    except Exception as exc:
        raise failure(cfg, exc) from exc
    finally:
        if pool:
            pool.shutdown()
    if result.error:  # local mode (workers: 0) returns its error instead of raising it
        raise failure(cfg, result.error) from result.error
    run.pull()
    summary = {**_summary(cfg, time.perf_counter() - started), "placement": seen}
    write_json(run.summary, summary)
    run.push()
    best = summary["best"]
    progress(
        f"train: done in {summary['seconds']:.0f}s, {summary['steps']} steps; best {cfg.best_metric} = "
        f"{best['value']:.4f} at step {best['step']} ({run.location}/best)"
    )
    return summary


def _observe(bank_ref, pool: MinerPool | None, progress: Progress) -> dict:
    """Where the bank and the miners ended up (RUN/summary.json's `placement`); {} where Ray cannot say."""
    try:
        seen = observe(bank_ref, pool.nodes if pool else [])
    except Exception as exc:  # Ray's per-node stats are a private API: a run never fails for want of them
        progress(f"placement: could not read where the bank is held ({type(exc).__name__}: {_first_line(exc)})")
        return {}
    progress(describe_observed(seen))
    return seen


def dry_run(cfg: TrainConfig, progress: Progress = say) -> list[str]:
    """Check the config and data, then say what the run would ask Ray for and where; start nothing.

    On a cluster (RAY_ADDRESS) the plan is checked against its nodes; otherwise against the private
    Ray a run here would start. A plan that can never be met raises `ResourceError`.
    """
    cfg = absolute_paths(cfg)
    check_tracking(cfg.tracking)
    prepare(cfg, progress)
    request = resource_request(cfg)
    if joins_cluster():
        start_ray(request.total("CPU"))
        capacity = cluster_capacity()
    else:
        capacity = private_capacity(request.total("CPU"))
    lines = plan(request, capacity, cfg.placement)
    for line in lines:
        progress(line)
    check(request, capacity)
    progress(f"plan: run {cfg.name!r} fits; nothing was started (--dry-run)")
    return lines


def _kept(progress: Progress, log: Console) -> Progress:
    """`progress`, plus each line kept with its timestamp in `log`'s file."""

    def both(line: str) -> None:
        progress(line)
        log.keep(line)

    return both


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
        return ResourceError(
            f"train: run {cfg.name!r}: its {max(1, cfg.workers)} worker(s) could not be placed within "
            f"resource_timeout_s={cfg.resource_timeout_s:g}s (each needs {cfg.threads_per_worker} "
            f"CPU{' and 1 GPU' if cfg.use_gpu else ''}); free resources or raise resource_timeout_s"
        )
    return RayttError(f"train: run {cfg.name!r} failed: {_first_line(cause)}")


def _first_line(exc: BaseException) -> str:
    """The error's own message: a RayttError's text, or the last line of a remote traceback."""
    if isinstance(exc, RayttError) and exc.args:
        return str(exc.args[0])
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _summary(cfg: TrainConfig, seconds: float) -> dict:
    rows = cfg.run.rows()
    best_meta = checkpoints.read_meta(cfg.run.best)
    return {
        "name": cfg.name,
        "seconds": seconds,
        "steps": max(r["step"] for r in rows),
        "epochs": max(r["epoch"] for r in rows),
        "best": {
            "metric": cfg.best_metric,
            "value": best_meta["metrics"][cfg.best_metric],
            "step": best_meta["step"],
            "epoch": best_meta["epoch"],
        },
        "last_val": next((r for r in reversed(rows) if "val/R@10" in r), {}),
    }
