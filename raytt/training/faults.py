"""Fault hooks for tests and the soak: each fires once per run (a marker file in the run directory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from raytt.training.config import TrainConfig


def inject(cfg: TrainConfig, run_dir: Path, rank: int, step: int, pool, log: Callable[[str], None]) -> None:
    """Worker 0 raises at `fail_at_step`, or kills miner 0 at `mining.fault: kill@STEP`."""
    import ray

    if rank != 0:
        return
    marker = run_dir / ".injected_failure"
    if step == cfg.fail_at_step and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure at step {step}")
    kill = run_dir / ".injected_miner_kill"
    if pool and cfg.mining.fault_kind == "kill" and step == cfg.mining.fault_steps[0] and not kill.exists():
        kill.touch()
        log(f"train: killing miner 0 at step {step} (mining.fault)")
        ray.kill(pool.actors[0], no_restart=False)
