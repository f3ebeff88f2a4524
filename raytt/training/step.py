"""One training step, read top to bottom: batch -> negatives -> loss -> backward -> optimizer -> EMA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from raytt.losses.objective import Batch, in_batch_accuracy, objective
from raytt.tensors import gather
from raytt.training.config import TrainConfig
from raytt.training.data import StepBatch
from raytt.training.setup import Trainee, ema_update


@dataclass(frozen=True)
class World:
    """This worker's place among the workers, and its device."""

    rank: int
    size: int
    device: torch.device


@dataclass(frozen=True)
class StepResult:
    loss: float
    accuracy: float  # in-batch accuracy: what training sees, never a quality figure
    candidates: int  # in-batch candidates every query was scored against (all workers' positives)
    mined_per_query: float  # extra negatives per query (mined and same-article)


def train_step(trainee: Trainee, bank: torch.Tensor, batch: StepBatch, cfg: TrainConfig, world: World) -> StepResult:
    """One optimizer step on one batch and its extra negatives; `bank` holds every vector on the device."""
    device = world.device
    keys, lengths, target = batch.keys.to(device), batch.lengths.to(device), batch.target.to(device)
    negative_keys = torch.as_tensor(batch.negatives, device=device) if batch.negatives is not None else None

    trainee.net.train(trainee.trains)
    with torch.set_grad_enabled(trainee.trains):
        negatives = gather(bank, negative_keys) if negative_keys is not None else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            queries, positives, negatives = trainee.net(gather(bank, keys), lengths, bank[target], negatives)
        queries, positives = queries.float(), positives.float()
        negatives = negatives.float() if negatives is not None else None
        candidates, candidate_keys, offset = all_positives(positives, target, world)
        scored = Batch(queries, positives, target, candidates, candidate_keys, offset, negatives, negative_keys)
        loss = objective(cfg.loss, scored)

    if trainee.trains:
        trainee.opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(trainee, cfg)

    extra = int((negative_keys >= 0).sum()) / len(target) if negative_keys is not None else 0.0
    return StepResult(float(loss.detach()), in_batch_accuracy(scored), len(candidate_keys), extra)


def optimizer_step(trainee: Trainee, cfg: TrainConfig) -> None:
    """After backward: clip the gradient norm, step the optimizer and the schedule, update the EMA copy."""
    if cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), cfg.optim.grad_clip)
    trainee.opt.step()
    trainee.sched.step()
    if trainee.ema is not None:
        ema_update(trainee.ema, trainee.model, cfg.optim.ema)


def all_positives(positives: torch.Tensor, target: torch.Tensor, world: World):
    """Every worker's positives as candidates (keys alike); this worker's rows keep their gradient.

    Returns (candidates [W*B, D], their keys [W*B], where this worker's rows start).
    """
    if world.size == 1:
        return positives, target, 0
    parts = [torch.empty_like(positives) for _ in range(world.size)]
    key_parts = [torch.empty_like(target) for _ in range(world.size)]
    dist.all_gather(parts, positives.detach().contiguous())
    dist.all_gather(key_parts, target.contiguous())
    parts[world.rank] = positives
    return torch.cat(parts), torch.cat(key_parts), world.rank * len(target)
