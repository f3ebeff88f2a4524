"""The mining section of a training config: the pool, the curriculum, the filters, the fault hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raytt.config import doc
from raytt.errors import ConfigError
from raytt.mining.index import IndexSpec
from raytt.mining.messages import MineSpec
from raytt.mining.schedule import Stage, parse
from raytt.mining.select import FilterConfig


@dataclass
class MiningConfig:
    schedule: str = field(
        default="",
        metadata=doc(
            "curriculum, e.g. '0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96' (epochs:none or count@lo-hi); '' = never"
        ),
    )
    negatives: int = field(
        default=0, metadata=doc("mined negatives per query in every mining stage (0 = the counts the schedule gives)")
    )
    article_negatives: int = field(
        default=0,
        metadata=doc(
            "other chunks of the target's own article per query, drawn at random every step of every epoch, with no "
            "index (the window filter applies); added to any mined negatives"
        ),
    )
    actors: int = field(default=1, metadata=doc("miner actors (created by the driver, shared by all workers)"))
    actor_cpus: float = field(default=1.0, metadata=doc("CPUs per miner actor (also its torch/FAISS threads)"))
    actor_gpus: float = field(
        default=0.0, metadata=doc("GPUs per miner actor (a GPU index when > 0 and CUDA is there)")
    )
    resources: dict[str, float] = field(
        default_factory=dict,
        metadata=doc(
            "custom Ray resources each miner needs, e.g. {miner: 1} to keep miners on nodes started with "
            "--resources='{\"miner\": N}' (YAML only)"
        ),
    )
    index: Literal["flat", "ivf", "hnsw", "factory"] = field(
        default="flat",
        metadata=doc(
            "flat (exact, searches the shared bank in place), ivf or hnsw (FAISS, a private copy each), or factory "
            "(the faiss.index_factory string in mining.factory, e.g. IVF1024,SQ8 or IVF1024,PQ32 for large banks)"
        ),
    )
    factory: str = field(default="", metadata=doc("index: factory: a faiss.index_factory string, e.g. IVF1024,SQ8"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=doc("where miners search"))
    nlist: int = field(default=0, metadata=doc("ivf: clusters (0 = 4*sqrt(bank))"))
    nprobe: int = field(default=16, metadata=doc("ivf: clusters searched per query"))
    hnsw_m: int = field(default=32, metadata=doc("hnsw: links per vector"))
    ef_search: int = field(default=128, metadata=doc("hnsw: search breadth"))
    mine_by: Literal["query", "target"] = field(
        default="query",
        metadata=doc("mine around the model's current query vectors (ANCE-style) or the positives' vectors"),
    )
    sampling: Literal["top", "random"] = field(
        default="top", metadata=doc("take the hardest survivors in the band, or a uniform sample of them")
    )
    search_k: int = field(
        default=64, metadata=doc("neighbours searched per query before filtering (at least 4 x count)")
    )
    window: int = field(
        default=1,
        metadata=doc("drop same-article chunks within +-window positions of the target (context chunks stay allowed)"),
    )
    fn_threshold: float = field(
        default=0.95,
        metadata=doc(
            "drop candidates with cosine to the target >= this (near-copies of the truth), "
            "and near-copies of each other"
        ),
    )
    relative: float = field(
        default=0.0,
        metadata=doc(
            "drop candidates scoring above this fraction of the positive's score for the same query (NV-Retriever's "
            "positive-aware filter; 0 = off)"
        ),
    )
    timeout_s: float = field(
        default=0.1, metadata=doc("longest a step waits for its negatives before training on in-batch negatives only")
    )
    max_in_flight: int = field(default=2, metadata=doc("mining requests a worker may have outstanding (backpressure)"))
    sync_every: int = field(default=10, metadata=doc("steps between publishing the tower weights miners encode with"))
    refresh_every: int = field(default=200, metadata=doc("mlp doc tower: steps between index rebuilds"))
    max_restarts: int = field(default=-1, metadata=doc("times Ray restarts a dead miner (-1 = always)"))
    start_timeout_s: float = field(default=600.0, metadata=doc("how long the driver waits for miners to build"))
    fault: str = field(
        default="",
        metadata=doc(
            "testing: 'kill@STEP' (worker 0 kills miner 0) or 'raise@FIRST-LAST' (miners raise for those steps)",
            hidden=True,
        ),
    )

    def __post_init__(self) -> None:
        try:
            self.curriculum = parse(self.schedule)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.negatives < 0:
            raise ValueError(f"mining.negatives must be >= 0, got {self.negatives}")
        if self.article_negatives < 0:
            raise ValueError(f"mining.article_negatives must be >= 0, got {self.article_negatives}")
        if self.negatives:
            self.curriculum = self.curriculum.with_count(self.negatives)
        if self.actors < 1 or self.actor_cpus <= 0 or self.actor_gpus < 0:
            raise ValueError("mining.actors must be >= 1, mining.actor_cpus > 0, mining.actor_gpus >= 0")
        check_custom_resources(self.resources, "mining.resources")
        if self.search_k < 1 or self.window < 0 or not -1.0 < self.fn_threshold <= 1.0 or self.timeout_s < 0:
            raise ValueError(
                "mining.search_k must be >= 1, mining.window >= 0, mining.fn_threshold in (-1, 1], "
                "mining.timeout_s >= 0"
            )
        if self.relative < 0:
            raise ValueError(f"mining.relative must be >= 0 (0 = off), got {self.relative}")
        if self.max_in_flight < 1 or self.sync_every < 1 or self.refresh_every < 1 or self.nprobe < 1:
            raise ValueError("mining.max_in_flight, sync_every, refresh_every and nprobe must be >= 1")
        if (self.index == "factory") != bool(self.factory):
            raise ValueError(
                "mining.factory is the faiss.index_factory string of mining.index: factory; give both or "
                f"neither (index {self.index!r}, factory {self.factory!r})"
            )
        self.fault_kind, self.fault_steps = _parse_fault(self.fault)

    def index_spec(self) -> IndexSpec:
        """What each miner builds: the index kind and its FAISS parameters, one thread per miner CPU."""
        return IndexSpec(
            self.index,
            self.device,
            self.nlist,
            self.nprobe,
            self.hnsw_m,
            self.ef_search,
            max(1, int(self.actor_cpus)),
            self.factory,
        )

    def spec(self, stage: Stage) -> MineSpec:
        """What one request asks for: everything a trial may vary travels with the request, not the pool."""
        return MineSpec(
            stage,
            FilterConfig(self.window, self.fn_threshold, self.sampling, self.relative),
            max(self.search_k, 4 * stage.count),
            self.mine_by,
        )


def check_custom_resources(resources: dict[str, float], key: str) -> None:
    """Custom resources are named amounts > 0; CPUs and GPUs have their own settings."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ValueError(f"{key}: {name!r} has its own setting; list only custom resources here")
        if amount <= 0:
            raise ValueError(f"{key}: {name} must be > 0, got {amount}")


def _parse_fault(text: str) -> tuple[str, tuple[int, int]]:
    if not text:
        return "", (-1, -1)
    kind, _, steps = text.partition("@")
    first, _, last = steps.partition("-")
    try:
        span = (int(first), int(last or first))
    except ValueError:
        raise ValueError(f"mining.fault {text!r}: expected kill@STEP or raise@FIRST-LAST") from None
    if kind not in ("kill", "raise"):
        raise ValueError(f"mining.fault {text!r}: expected kill@STEP or raise@FIRST-LAST")
    return kind, span
