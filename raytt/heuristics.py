"""The heuristic baselines every trained tower must beat, as parameter-free towers.

`last`, `mean` and `exp<alpha>` are `TwoTower`s with no parameters, and their queries come from
`towers.query_vectors`, the function that also encodes a trained tower's queries for training,
validation and evaluation: baselines and models are compared through one code path.
"""

from __future__ import annotations

import numpy as np

from raytt.towers import TowerConfig, TwoTower, query_vectors

EXP_ALPHAS = (0.1, 0.3, 0.5, 0.7)


def baseline_towers(alphas: tuple[float, ...] = EXP_ALPHAS) -> dict[str, TowerConfig]:
    """Every baseline's tower config by name: last, mean, exp0.1, exp0.3, ..."""
    towers = {"last": TowerConfig(query="last"), "mean": TowerConfig(query="mean")}
    towers.update({f"exp{a:g}": TowerConfig(query="exp", alpha=a) for a in alphas})
    return towers


def baselines(
    bank: np.ndarray,
    context_keys: np.ndarray,
    lengths: np.ndarray,
    alphas: tuple[float, ...] = EXP_ALPHAS,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Every baseline's unit queries [Q, D] by name, for left-padded context keys [Q, k] into `bank`."""
    dim = bank.shape[1]
    return {
        name: query_vectors(TwoTower(cfg, dim), bank, context_keys, lengths, device=device)
        for name, cfg in baseline_towers(alphas).items()
    }
