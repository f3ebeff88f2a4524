"""Joining Ray: the cluster at RAY_ADDRESS (`ray job submit` sets it), or a private one sized for the work."""

from __future__ import annotations

import math
import os


def start_ray(cpus: float) -> None:
    """Connect once per process; a private local Ray gets at least `cpus` logical CPUs (or every core)."""
    import ray

    if ray.is_initialized():
        pass
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(logging_config=ray.LoggingConfig(log_level="WARNING"))
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)),
                 logging_config=ray.LoggingConfig(log_level="WARNING"),
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
