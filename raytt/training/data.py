"""A worker's batches: Ray Data key rows, skipped up to a resume point, with mining requested ahead."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raytt.training.config import TrainConfig
from raytt.training.position import Position

COLUMNS = ["context_keys", "context_len", "target_key"]


@dataclass(frozen=True)
class StepBatch:
    """One step's input: context keys [B, k] (-1 = padding), lengths [B], target keys [B], and extra negatives."""

    keys: torch.Tensor
    lengths: torch.Tensor
    target: torch.Tensor
    last: bool = False  # the epoch's last batch: its checkpoint is the epoch-end one
    negatives: np.ndarray | None = None  # [B, n] bank keys, -1 = empty; None = in-batch negatives only

    def with_negatives(self, keys: np.ndarray | None) -> StepBatch:
        return replace(self, negatives=keys)


class KeyBatch(NumpyBatchCollateFn):
    """Ray Data collate step: a numpy batch of shard rows -> (context keys [B, k], lengths [B], targets [B])."""

    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = batch["context_keys"]
        if keys.dtype == object:
            keys = np.stack(keys)
        return (
            torch.as_tensor(keys, dtype=torch.int64),
            torch.as_tensor(batch["context_len"], dtype=torch.int64),
            torch.as_tensor(batch["target_key"], dtype=torch.int64),
        )


def train_dataset(cfg: TrainConfig, files: list[str]):
    """The train split's key rows as a Ray Dataset: streamed from Parquet, or read once and held (`data.cache`)."""
    import ray

    dataset = ray.data.read_parquet(files).select_columns(COLUMNS)
    return dataset.materialize() if cfg.data.cache else dataset


def epoch_batches(shard, cfg: TrainConfig, position: Position, rank: int) -> Iterator[StepBatch]:
    """This epoch's batches of the worker's dataset shard, skipping those trained on before a resume.

    The is-last flag (known one batch ahead, which prefetching holds anyway) lets the epoch's last
    step leave its checkpoint to the epoch-end one: two checkpoints of one step would share a name.
    """
    shuffle = cfg.data.shuffle_buffer
    it = shard.iter_torch_batches(
        batch_size=cfg.data.batch_size,
        drop_last=True,
        prefetch_batches=cfg.data.prefetch_batches,
        local_shuffle_buffer_size=shuffle or None,
        local_shuffle_seed=cfg.seed + 1000 * position.epoch + rank if shuffle else None,
        collate_fn=KeyBatch(),
    )
    skip = position.batch_in_epoch
    for i, ((keys, lengths, target), last) in enumerate(flag_last(it)):
        if i >= skip:
            yield StepBatch(keys, lengths, target, last)


def mined_batches(
    batches: Iterable[StepBatch], miner, stage, position: Position, model: torch.nn.Module, max_in_flight: int
) -> Iterator[StepBatch]:
    """The batches with their mined negatives, requested `max_in_flight` steps ahead of training on them."""

    def submit(batch: StepBatch, step: int):
        return miner.submit(stage, step, batch.keys, batch.lengths, batch.target)

    return asked_ahead(batches, miner, position, model, max_in_flight, submit, StepBatch.with_negatives)


def asked_ahead(
    batches: Iterable, miner, position: Position, model: torch.nn.Module, max_in_flight: int, submit, attach
) -> Iterator:
    """Each batch with its mined negatives: `submit(batch, step)` asks `max_in_flight` steps ahead, and
    `attach(batch, keys or None)` adds the answer when the batch's step comes.

    The request for batch t+L goes out after batch t's answer is collected and before t trains;
    `position.step` is read as the consumer advances it.
    """
    ahead: deque = deque()
    for batch in batches:
        due = ahead.popleft() if len(ahead) == max_in_flight else None
        mined = miner.collect(due[1], position.step) if due else None
        miner.publish(position.step, model)
        ahead.append((batch, submit(batch, position.step + len(ahead) + 1)))
        if due:
            yield attach(due[0], mined)
    while ahead:
        batch, ticket = ahead.popleft()
        yield attach(batch, miner.collect(ticket, position.step))


def flag_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, is_last) pairs, reading one item ahead."""
    it = iter(items)
    current = next(it, _END)
    while current is not _END:
        following = next(it, _END)
        yield current, following is _END
        current = following


_END = object()
