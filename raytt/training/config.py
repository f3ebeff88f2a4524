"""The typed config of a training run (`raytt train --config configs/demo.yaml --set optim.lr=3e-4`).

Sections mirror the code they configure: `data` (bank, shards, batches), `tower`, `loss`, `optim`,
`mining` (the miner pool and its curriculum), and the run itself (name, workers, checkpoints, validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raytt.config import doc
from raytt.losses.objective import LossConfig
from raytt.mining.config import MiningConfig, check_custom_resources
from raytt.storage import Located
from raytt.towers import TowerConfig

PRECISIONS = ("fp32", "bf16")
TRACKERS = ("tensorboard", "mlflow")


@dataclass
class DataConfig:
    bank: str = field(default="", metadata=doc("bank directory (required)"))
    shards: str = field(default="", metadata=doc("sequence shard directory built from the bank (required)"))
    batch_size: int = field(default=256, metadata=doc("rows per worker per step"))
    shuffle_buffer: int = field(default=20_000, metadata=doc("rows in each worker's local shuffle buffer"))
    prefetch_batches: int = field(default=2, metadata=doc("batches Ray Data prepares ahead of the step"))
    cache: bool = field(
        default=False,
        metadata=doc(
            "materialize the train split's key rows in the object store once, so epochs do not re-read Parquet"
        ),
    )

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"data.batch_size must be >= 2, got {self.batch_size}")
        if self.shuffle_buffer < 0 or self.prefetch_batches < 0:
            raise ValueError("data.shuffle_buffer and data.prefetch_batches must be >= 0")


@dataclass
class OptimConfig:
    lr: float = field(default=2e-3, metadata=doc("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.01, metadata=doc("AdamW weight decay"))
    epochs: int = field(default=6, metadata=doc("passes over the train split"))
    max_steps: int = field(default=0, metadata=doc("stop after this many steps (0 = the epochs decide)"))
    warmup_steps: int = field(default=50, metadata=doc("linear warm-up steps, then cosine decay to 0"))
    grad_clip: float = field(default=1.0, metadata=doc("max gradient norm (0 = off)"))
    patience: int = field(
        default=0, metadata=doc("early stopping: stop after this many epochs without a better best_metric (0 = off)")
    )
    ema: float = field(
        default=0.0,
        metadata=doc(
            "decay of an exponential moving average of the weights; validation, best/ and checkpoints' model.pt use "
            "the average (0 = off)"
        ),
    )

    def __post_init__(self) -> None:
        if (
            self.lr <= 0
            or self.epochs < 1
            or self.warmup_steps < 0
            or self.grad_clip < 0
            or self.max_steps < 0
            or self.patience < 0
            or not 0.0 <= self.ema < 1.0
        ):
            raise ValueError(
                "optim: need lr > 0, epochs >= 1, warmup_steps >= 0, grad_clip >= 0, max_steps >= 0, "
                "patience >= 0, 0 <= ema < 1"
            )


@dataclass
class TrainConfig(Located):
    name: str = field(default="run", metadata=doc("run name: the same name resumes the run"))
    storage: str = field(
        default="runs",
        metadata=doc(
            "where run directories go: a path (shared by every node on a cluster) or a URI such as s3://bucket/runs"
        ),
    )
    workers: int = field(default=2, metadata=doc("Ray Train workers; 0 runs the same loop in this process"))
    use_gpu: bool = field(default=False, metadata=doc("one GPU per worker, NCCL instead of gloo"))
    precision: str = field(
        default="fp32",
        metadata=doc(
            "fp32, or bf16: the towers' forward under bf16 autocast (CUDA, or CPU where torch supports it); "
            "losses in fp32"
        ),
    )
    threads_per_worker: int = field(default=1, metadata=doc("CPUs (torch threads) per worker"))
    placement: Literal["pack", "spread"] = field(
        default="pack",
        metadata=doc(
            "how Ray places the workers: pack (fill a node first: fastest all-reduce) or spread (one per node where "
            "it can: a lost node costs fewer workers); a preference, never a reason to wait"
        ),
    )
    worker_resources: dict[str, float] = field(
        default_factory=dict,
        metadata=doc("custom Ray resources each worker needs besides its CPUs/GPU, e.g. {trainer: 1} (YAML only)"),
    )
    seed: int = field(default=0, metadata=doc("seed for weights and data order"))
    checkpoint_every: int = field(default=200, metadata=doc("steps between checkpoints (also at each epoch end)"))
    keep_checkpoints: int = field(default=3, metadata=doc("latest checkpoints kept (the best is kept apart)"))
    max_failures: int = field(default=2, metadata=doc("worker-group restarts from the latest checkpoint"))
    resource_timeout_s: float = field(
        default=600.0,
        metadata=doc(
            "longest the run waits for a busy cluster's CPUs/GPUs (at the start and after a failure); a request the "
            "cluster can never meet is refused at once"
        ),
    )
    log_every: int = field(default=50, metadata=doc("steps between progress lines"))
    val_queries: int = field(default=5000, metadata=doc("val rows ranked against the full bank each epoch (0 = all)"))
    best_metric: str = field(default="val/R@10", metadata=doc("metric that picks the best checkpoint (higher wins)"))
    tracking: tuple[str, ...] = field(
        default=("tensorboard",),
        metadata=doc("where metrics go besides metrics.jsonl: tensorboard (RUN/tensorboard), mlflow; () = none"),
    )
    mlflow_uri: str = field(default="", metadata=doc("MLflow tracking URI (default: sqlite:///RUN/mlflow.db)"))
    mlflow_experiment: str = field(default="", metadata=doc("MLflow experiment name (default: the run name)"))
    fail_at_step: int = field(default=-1, metadata=doc("testing: raise in worker 0 once at this step", hidden=True))
    hold_at_step: int = field(
        default=-1,
        metadata=doc(
            "testing: worker 0 writes RUN/.held once at this step and waits for RUN/.release (a test acts on the "
            "cluster at a known step)",
            hidden=True,
        ),
    )
    init_from: str = field(
        default="",
        metadata=doc(
            "fine-tuning: a run directory (its best/) or a checkpoint folder whose weights start this run; the "
            "optimizer, schedule and data order start fresh (a re-run of this name resumes its own checkpoints)"
        ),
    )
    data: DataConfig = field(default_factory=DataConfig)
    tower: TowerConfig = field(default_factory=TowerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty directory name, got {self.name!r}")
        if self.workers < 0 or self.threads_per_worker < 1:
            raise ValueError("workers must be >= 0 and threads_per_worker >= 1")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.max_failures < 0 or self.log_every < 1:
            raise ValueError("checkpoint_every, keep_checkpoints, log_every must be >= 1; max_failures >= 0")
        if self.resource_timeout_s <= 0:
            raise ValueError(f"resource_timeout_s must be > 0, got {self.resource_timeout_s}")
        unknown = [t for t in self.tracking if t not in TRACKERS]
        if unknown:
            raise ValueError(f"tracking: unknown tracker(s) {unknown}; choose from {list(TRACKERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_custom_resources(self.worker_resources, "worker_resources")
        if self.remote and self.workers == 0:
            raise ValueError(f"storage {self.storage!r} is a URI: local debugging runs (workers: 0) write to a path")

    @property
    def encodes_bank(self) -> bool:
        """Whether a task beside the miners re-encodes the bank for their index (a trainable doc tower)."""
        return self.tower.doc != "identity"

    @property
    def validation_encoders(self) -> tuple[int, float]:
        """(actors, CPUs each) that re-encode the corpus for validation beside the workers; none here."""
        return 0, 0.0
