"""The typed config of a text two-tower run (`raytt text-train --config configs/text_bag.yaml --set loss.tau=0.05`).

It is a `TrainConfig` (the run, workers, checkpoints, optimizer, loss and tracking mean the same)
whose `data` names a built text set and whose `tower` is a text tower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raytt.config import doc
from raytt.text.towers import TextTowerConfig
from raytt.training.config import TrainConfig


@dataclass
class TextDataConfig:
    built: str = field(default="", metadata=doc("a folder written by raytt text-build (required)"))
    batch_size: int = field(default=128, metadata=doc("queries per worker per step"))
    shuffle_buffer: int = field(default=10_000, metadata=doc("rows in each worker's local shuffle buffer"))
    prefetch_batches: int = field(default=2, metadata=doc("batches Ray Data prepares ahead of the step"))
    given_negatives: int = field(default=0, metadata=doc("negatives per query taken from the data's own (-1 = all)"))
    mined_negatives: int = field(
        default=0, metadata=doc("hard negatives per query mined from the frozen encoder's cached vectors")
    )
    mine_depth: int = field(default=50, metadata=doc("mined negatives come from this many top passages"))
    mine_relative: float = field(
        default=0.95,
        metadata=doc(
            "drop mined candidates scoring above this fraction of the positive's score (likely unjudged "
            "positives, as NV-Retriever)"
        ),
    )
    encoded_length: int = field(
        default=128, metadata=doc("which text-encode cache to read: the max sequence length it was encoded at")
    )

    @property
    def cache(self) -> bool:
        """The train rows are always held in the object store (Ray Data reads no files while training)."""
        return True

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"data.batch_size must be >= 2, got {self.batch_size}")
        if self.shuffle_buffer < 0 or self.prefetch_batches < 0 or self.mined_negatives < 0:
            raise ValueError("data.shuffle_buffer, data.prefetch_batches and data.mined_negatives must be >= 0")
        if self.given_negatives < -1:
            raise ValueError("data.given_negatives must be >= -1 (-1 = all)")
        if self.mine_depth < 1 or not 0.0 < self.mine_relative <= 1.0:
            raise ValueError("data.mine_depth must be >= 1 and data.mine_relative in (0, 1]")


@dataclass
class TextTrainConfig(TrainConfig):
    best_metric: str = field(default="val/NDCG@10", metadata=doc("metric that picks the best checkpoint"))
    val_queries: int = field(default=2000, metadata=doc("dev queries ranked against the whole corpus each epoch"))
    grad_cache: int = field(
        default=0,
        metadata=doc(
            "GradCache: encode the batch in chunks of this many rows, then back-propagate chunk by chunk "
            "(large batches in little memory; 0 = off)"
        ),
    )
    encode_actors: int = field(
        default=0,
        metadata=doc(
            "validation: Ray Data actors that re-encode the corpus by the passage side each epoch (0 = rank 0 "
            "encodes it in-process; a pool spreads a large corpus over the cluster)"
        ),
    )
    encode_cpus: int = field(
        default=1, metadata=doc("CPUs (and torch threads) per encode actor: whole CPUs (Ray Data stalls on fractions)")
    )
    data: TextDataConfig = field(default_factory=TextDataConfig)
    tower: TextTowerConfig = field(default_factory=TextTowerConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grad_cache < 0:
            raise ValueError(f"grad_cache must be >= 0, got {self.grad_cache}")
        if self.encode_actors < 0 or self.encode_cpus < 1:
            raise ValueError("encode_actors must be >= 0 and encode_cpus >= 1")
        if self.mining.article_negatives:
            raise ValueError("mining.article_negatives: text passages have no articles; use mining.schedule")

    @property
    def encodes_bank(self) -> bool:
        """No: rank 0 offers the miners the passage side's vectors from each validation pass."""
        return False

    @property
    def validation_encoders(self) -> tuple[int, float]:
        return self.encode_actors, self.encode_cpus
