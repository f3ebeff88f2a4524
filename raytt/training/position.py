"""Where a worker stands in its run: what a checkpoint restores and the loop advances."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class Position:
    """Step, epoch and batch within it, plus the best `best_metric` so far and epochs since it improved."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float = -math.inf
    since_best: int = 0

    def advance(self) -> None:
        """One batch trained."""
        self.step += 1
        self.batch_in_epoch += 1

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def improves(self, value: float) -> bool:
        """Whether `value` beats the best so far; counts an epoch without improvement otherwise."""
        if value <= self.best:
            self.since_best += 1
            return False
        self.best, self.since_best = value, 0
        return True

    def state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Position:
        return cls(state["step"], state["epoch"], state["batch_in_epoch"], state["best"], state.get("since_best", 0))
