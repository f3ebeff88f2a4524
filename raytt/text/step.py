"""One text training step: inputs by key -> both towers -> candidates gathered from every worker -> loss
-> backward -> optimizer; with `grad_cache`, the same gradients in chunks (GradCache, Gao et al. 2021).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from raytt.losses.objective import Batch, in_batch_accuracy, objective
from raytt.text.config import TextTrainConfig
from raytt.training.setup import Trainee
from raytt.training.step import World, optimizer_step


@dataclass(frozen=True)
class TextBatch:
    """One step's input on the device: query inputs, positive and negative passage inputs, their keys."""

    queries: torch.Tensor  # [B, Lq] token ids or [B, D] vectors
    positives: torch.Tensor  # [B, Lp] or [B, D]
    positive_keys: torch.Tensor  # [B]
    negatives: torch.Tensor | None  # [B, n, Lp] or [B, n, D]
    negative_keys: torch.Tensor | None  # [B, n], -1 = empty


@dataclass(frozen=True)
class TextStepResult:
    loss: float
    accuracy: float
    candidates: int
    negatives_per_query: float


def on_device(table: torch.Tensor, queries, positive_keys, negative_keys, device) -> TextBatch:
    """Look the passages up by key in the passage table (already on `device`); token ids lose the padding
    columns no row of the batch uses (encoders mask padding, so only the work changes)."""
    queries, positive_keys = trimmed(queries.to(device)), positive_keys.to(device)
    negatives = None
    if negative_keys is not None and negative_keys.shape[1] > 0:
        negative_keys = negative_keys.to(device)
        negatives = trimmed(table[negative_keys.clamp_min(0)])
    else:
        negative_keys = None
    return TextBatch(queries, trimmed(table[positive_keys]), positive_keys, negatives, negative_keys)


def trimmed(x: torch.Tensor) -> torch.Tensor:
    """Token ids [..., L] cut after the last column any row uses; vectors (floating point) unchanged."""
    if x.is_floating_point() or x.numel() == 0:
        return x
    used = (x > 0).flatten(0, -2).any(0).nonzero()
    return x[..., : int(used.max()) + 1] if len(used) else x[..., :1]


def gather_with_grad(x: torch.Tensor, world: World) -> torch.Tensor:
    """Every worker's rows, in rank order, differentiable: each worker's loss sends gradient to every row
    (as sentence-transformers' `gather_across_devices`); DDP then averages the workers' gradients."""
    if world.size == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    return all_gather_tensor_autograd(x.contiguous(), 0, dist.group.WORLD)


def gather_keys(keys: torch.Tensor, world: World) -> torch.Tensor:
    if world.size == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(world.size)]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def scored(q, p, n, batch: TextBatch, world: World) -> Batch:
    """The loss's view of one batch: local queries against every worker's positives and the local negatives."""
    candidates = gather_with_grad(p, world)
    keys = gather_keys(batch.positive_keys, world)
    return Batch(q, p, batch.positive_keys, candidates, keys, world.rank * len(q), n, batch.negative_keys)


def text_step(trainee: Trainee, batch: TextBatch, cfg: TextTrainConfig, world: World) -> TextStepResult:
    """One optimizer step (GradCache when `cfg.grad_cache` is set)."""
    trainee.net.train()
    if cfg.grad_cache:
        loss, view = cached_backward(trainee, batch, cfg, world)
    else:
        with _autocast(cfg, world):
            q, p, n = trainee.net(batch.queries, batch.positives, batch.negatives)
        view = scored(q.float(), p.float(), n.float() if n is not None else None, batch, world)
        loss = objective(cfg.loss, view)
        trainee.opt.zero_grad(set_to_none=True)
        loss.backward()
    optimizer_step(trainee, cfg)
    extra = float((batch.negative_keys >= 0).sum()) / len(batch.positive_keys) if batch.negative_keys is not None else 0
    return TextStepResult(float(loss.detach()), in_batch_accuracy(view), len(view.candidate_keys), extra)


def cached_backward(trainee: Trainee, batch: TextBatch, cfg: TextTrainConfig, world: World):
    """GradCache: (1) encode every chunk without a graph, (2) the loss on those vectors and its gradient with
    respect to them, (3) re-encode each chunk with a graph and back-propagate that gradient into it.

    The parameters' gradients are those of the loss the first pass computed (each chunk's second pass replays
    its dropout masks) while memory holds one chunk's graph.
    The chunks run on the unwrapped model; the workers' gradients are then averaged as DDP would.
    """
    model, chunk = trainee.model, cfg.grad_cache
    parts = [(side, torch.split(inputs, chunk)) for side, inputs in _inputs(batch)]
    states, reps = [], []
    with torch.no_grad(), _autocast(cfg, world):
        for side, pieces in parts:
            outs = []
            for x in pieces:
                states.append(_rng_state(world.device))
                outs.append(_encode(model, side, x).float())
            reps.append(torch.cat(outs).requires_grad_())
    negatives = reps[2].view(*batch.negative_keys.shape, -1) if len(reps) == 3 else None
    view = scored(reps[0], reps[1], negatives, batch, world)
    loss = objective(cfg.loss, view)
    loss.backward()
    trainee.opt.zero_grad(set_to_none=True)
    replay = iter(states)
    for (side, pieces), rep in zip(parts, reps):
        for x, grad in zip(pieces, torch.split(rep.grad, chunk)):
            with _replayed(next(replay), world.device), _autocast(cfg, world):
                out = _encode(model, side, x).float()
            out.backward(grad)
    average_gradients(model, world)
    return loss.detach(), view


def average_gradients(model: torch.nn.Module, world: World) -> None:
    """Each parameter's gradient averaged over the workers (what DDP does during backward)."""
    if world.size == 1:
        return
    for param in model.parameters():
        if param.requires_grad:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
            param.grad /= world.size


def _rng_state(device: torch.device) -> tuple:
    """The RNG state a chunk's first pass ran with (its dropout masks), to replay in the second pass."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def _replayed(state: tuple, device: torch.device):
    """Run with `state`'s RNG (the same dropout masks as the first pass), leaving the global RNG untouched."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


def _autocast(cfg: TextTrainConfig, world: World):
    return torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def _inputs(batch: TextBatch) -> list[tuple[str, torch.Tensor]]:
    parts = [("query", batch.queries), ("passage", batch.positives)]
    if batch.negatives is not None:
        parts.append(("passage", batch.negatives.flatten(0, 1)))
    return parts


def _encode(model, side: str, x: torch.Tensor) -> torch.Tensor:
    return model.queries(x) if side == "query" else model.passages(x)
