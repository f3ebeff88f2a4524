"""Run tracking: TensorBoard event files in every run directory by default, MLflow as an opt-in.

Rank 0 writes every metrics row (the numbers the progress lines show) to each tracker, with the
run's config as parameters. TensorBoard goes to `RUN/tensorboard` (`tensorboard --logdir runs`);
MLflow goes through Ray's integration (`setup_mlflow`) to `mlflow_uri` (default: `sqlite:///RUN/mlflow.db`).
"""

from __future__ import annotations

import importlib.util
import re

from raytt import config
from raytt.errors import ConfigError


def check_tracking(trackers: tuple[str, ...]) -> None:
    """Refuse MLflow where its package is missing, before any work starts (`TrainConfig` refuses unknown names)."""
    if "mlflow" in trackers and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "tracking: mlflow asked for, but the mlflow package is not installed (pip install 'raytt[mlflow]')"
        )


def flat_params(cfg) -> dict[str, str]:
    """The config as `section.key` -> value strings, the form both trackers take as parameters."""
    out: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = str(value)

    walk(config.to_dict(cfg), "")
    return out


def metric_name(key: str) -> str:
    """A metric key both trackers keep as is (`val/R@10` -> `val/R_at_10`; they would mangle `@` each their way)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key.replace("@", "_at_"))


class Tracker:
    """The rank-0 writer of metrics rows to the configured trackers (a no-op on other ranks)."""

    def __init__(self, cfg, rank: int) -> None:
        self.tensorboard, self.mlflow = None, None
        if rank != 0:
            return
        params = flat_params(cfg)
        if "tensorboard" in cfg.tracking:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(logdir=str(cfg.run.path / "tensorboard"))
            self.tensorboard.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
        if "mlflow" in cfg.tracking:
            self.mlflow = _start_mlflow(cfg, params)

    def log(self, row: dict) -> None:
        """Every numeric field of a metrics row, at the row's step."""
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(row.get("step", 0))
        if self.tensorboard is not None:
            for key, value in numbers.items():
                if key != "step":
                    self.tensorboard.add_scalar(metric_name(key), value, step)
            self.tensorboard.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({metric_name(k): v for k, v in numbers.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _start_mlflow(cfg, params: dict[str, str]):
    """An MLflow run named after the raytt run, through Ray Train's MLflow integration."""
    from ray.air.integrations.mlflow import setup_mlflow

    uri = cfg.mlflow_uri or f"sqlite:///{(cfg.run.path / 'mlflow.db').resolve()}"
    mlflow = setup_mlflow(
        config=params,
        tracking_uri=uri,
        experiment_name=cfg.mlflow_experiment or cfg.name,
        create_experiment_if_not_exists=True,
        run_name=cfg.name,
        rank_zero_only=False,
    )
    return mlflow
