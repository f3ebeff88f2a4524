"""The run's record, kept by rank 0: metrics rows, Ray Train reports with checkpoints, best/, pruning.

Progress rows go to metrics.jsonl alone: `ray.train.report` waits for every worker, and a barrier
per progress line costs time. Checkpoints and epoch ends are reported to Ray Train; under Tune only
epoch ends (with full-bank validation) are, so the scheduler never compares trials on anything else.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from raytt import checkpoints, config
from raytt.curves import training_curves
from raytt.storage import atomic_dir
from raytt.tracking import Tracker
from raytt.training.config import TrainConfig
from raytt.training.position import Position
from raytt.training.setup import Trainee


class Recorder:
    """What one worker writes about the run; only rank 0 writes files, every rank joins Ray Train's reports."""

    def __init__(
        self, cfg: TrainConfig, rank: int, local: bool, tune: bool, log: Callable[[str], None], embedder_id: str = ""
    ) -> None:
        self.cfg, self.rank, self.local, self.tune, self.log = cfg, rank, local, tune, log
        self.embedder_id = embedder_id  # the bank's: what a checkpoint's reader must feed the tower
        self.run = cfg.run
        if rank == 0:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.pull()
        self.attempt = self.run.next_attempt() if rank == 0 else 0
        first = self.run.starts()[:1] if rank == 0 else []
        self.began = first[0]["time"] if first else time.time()  # the run's first start: elapsed_s counts from it
        self.tracker = Tracker(cfg, rank)

    def started(self, position: Position, workers: list[dict]) -> None:
        """A `start` row: this attempt began at this step on these workers (readers drop rows it replays)."""
        if self.rank == 0:
            self.run.append({"step": position.step, "epoch": position.epoch, "workers": workers}, "start", self.attempt)

    def elapsed_s(self) -> float:
        """Wall seconds since the run first started (attempts and pauses between them included)."""
        return time.time() - self.began

    def record(
        self, metrics: dict, trainee: Trainee, position: Position, dim: int, checkpoint: bool, epoch_end: bool = False
    ) -> None:
        """Append the row; at checkpoints and epoch ends report to Ray Train, rank 0 attaching the checkpoint."""
        import ray.train

        if self.rank == 0:
            row = self.run.append(
                {**metrics, "elapsed_s": round(self.elapsed_s(), 3)}, "epoch" if epoch_end else "train", self.attempt
            )
            self.tracker.log(row)
            if epoch_end:
                training_curves(self.run.metrics, self.run.path / "training_curves.png")
        if not epoch_end and (self.tune or not checkpoint):
            return
        if not (checkpoint and self.rank == 0):
            ray.train.report(metrics)
            return
        self._checkpoint(metrics, trainee, position, dim)

    def _checkpoint(self, metrics: dict, trainee: Trainee, position: Position, dim: int) -> None:
        import ray.train

        name = checkpoints.name(position.step)
        dest = f"{self.run.remote}/{name}" if self.run.remote else self.run.path / name
        meta = self.meta(metrics, position, dim)
        state = {**trainee.state(), **position.state(), "rng": checkpoints.rng_state()}
        if self.local:
            with atomic_dir(self.run.path / name, overwrite=True) as tmp:
                checkpoints.save(tmp, trainee.served, state, meta, dest)
            prune(self.run.path, self.cfg.keep_checkpoints)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(self.run.path / name))
            return
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints.save(Path(tmp), trainee.served, state, meta, dest)
            try:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
            except OSError as exc:
                raise checkpoints.CheckpointError(
                    f"{dest}: cannot persist the checkpoint of step {position.step} "
                    f"({exc.strerror or exc}); the checkpoints written before it are "
                    f"intact"
                ) from exc
        self.run.push()

    def keep_best(self, metrics: dict, trainee: Trainee, position: Position, dim: int) -> None:
        """Copy the served weights to best/ when `best_metric` improved (rank 0)."""
        value = metrics.get(self.cfg.best_metric)
        if self.rank != 0 or value is None or not position.improves(value):
            return
        with atomic_dir(self.run.best, overwrite=True) as tmp:
            checkpoints.save(tmp, trainee.served, {}, self.meta(metrics, position, dim), self.run.best)
        self.log(f"train: new best {self.cfg.best_metric} = {value:.4f} at step {position.step}, saved to best/")

    def meta(self, metrics: dict, position: Position, dim: int) -> dict:
        """What `checkpoints.load_model` needs to rebuild the model and check its input, plus where the run stood."""
        return {
            "step": position.step,
            "epoch": position.epoch,
            "metrics": metrics,
            "tower": config.to_dict(self.cfg.tower),
            "dim": dim,
        } | ({"embedder_id": self.embedder_id} if self.embedder_id else {})


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints of a local-mode run (Ray Train prunes its own)."""
    found = sorted(p for p in run_dir.glob(f"{checkpoints.PREFIX}*") if (p / checkpoints.META).is_file())
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
