"""Fault hooks for tests and the soak: each fires once per run (a marker file in the run directory)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from raytt.training.config import TrainConfig

HOLD_POLL_S = 0.1


def inject(cfg: TrainConfig, run_dir: Path, rank: int, step: int, pool, log: Callable[[str], None]) -> None:
    """Worker 0 raises at `fail_at_step`, holds at `hold_at_step`, or kills miner 0 at `mining.fault: kill@STEP`."""
    import ray

    if rank != 0:
        return
    held = run_dir / ".held"
    if step == cfg.hold_at_step and not held.exists():
        held.touch()
        log(f"train: holding at step {step} until {run_dir / '.release'} exists (hold_at_step)")
        while not (run_dir / ".release").exists():
            time.sleep(HOLD_POLL_S)
    marker = run_dir / ".injected_failure"
    if step == cfg.fail_at_step and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected failure at step {step}")
    kill = run_dir / ".injected_miner_kill"
    if pool and cfg.mining.fault_kind == "kill" and step == cfg.mining.fault_steps[0] and not kill.exists():
        kill.touch()
        log(f"train: killing miner 0 at step {step} (mining.fault)")
        ray.kill(pool.actors[0], no_restart=False)
