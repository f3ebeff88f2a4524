"""What a worker trains: the model (DDP-wrapped when there are several workers), optimizer, schedule, EMA."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from raytt.towers import TwoTower
from raytt.training.config import TrainConfig


@dataclass
class Trainee:
    """The model and everything that updates it; `served` is what validation, best/ and checkpoints hold."""

    model: TwoTower
    net: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer | None
    sched: torch.optim.lr_scheduler.LambdaLR | None
    ema: TwoTower | None

    @property
    def trains(self) -> bool:
        """False for parameter-free towers (the heuristics), which run the same loop without updates."""
        return self.opt is not None

    @property
    def served(self) -> TwoTower:
        """The moving average of the weights when `optim.ema` is on, else the model."""
        return self.ema if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0] if self.sched else 0.0

    def state(self) -> dict:
        """Optimizer, schedule and (with EMA) the raw weights: what a checkpoint's train_state.pt adds."""
        state = {
            "optimizer": self.opt.state_dict() if self.opt else {},
            "scheduler": self.sched.state_dict() if self.sched else {},
        }
        if self.ema is not None:
            state["train_weights"] = self.model.state_dict()
        return state

    def load(self, weights: dict, state: dict) -> None:
        self.served.load_state_dict(weights)
        self.model.load_state_dict(state.get("train_weights", weights))
        if self.opt:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])

    def start_from(self, weights: dict) -> None:
        """Fine-tuning: these weights (and the EMA copy), with the optimizer and schedule left fresh."""
        self.model.load_state_dict(weights)
        if self.ema is not None:
            self.ema.load_state_dict(weights)


def build_trainee(cfg: TrainConfig, dim: int, device: torch.device, world_size: int, total_steps: int) -> Trainee:
    """Seeded model, AdamW with warm-up then cosine decay over `total_steps`, and the EMA copy if asked."""
    torch.manual_seed(cfg.seed)
    return trainee_for(TwoTower(cfg.tower, dim).to(device), cfg, world_size, total_steps)


def trainee_for(model: torch.nn.Module, cfg: TrainConfig, world_size: int, total_steps: int) -> Trainee:
    """What trains `model` (any two-tower with a `trainable` flag): DDP with several workers, AdamW over its
    trainable parameters, the LR schedule, the EMA copy if asked."""
    import ray.train.torch

    net = ray.train.torch.prepare_model(model) if world_size > 1 and model.trainable else model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return Trainee(model, net, None, None, None)
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.optim.warmup_steps, total_steps))
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.optim.ema else None
    return Trainee(model, net, opt, sched, ema)


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps the run takes: every epoch's, or `optim.max_steps` when that is smaller."""
    total = cfg.optim.epochs * steps_per_epoch
    return min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameters and buffers alike."""
    for avg, new in zip(average.state_dict().values(), model.state_dict().values()):
        if avg.dtype.is_floating_point:
            avg.lerp_(new, 1.0 - decay)
        else:
            avg.copy_(new)
