"""`raytt text-encode`: a frozen encoder's vectors of every passage and every query of a built text set,
computed once by Ray Data encoder actors (ingest's) and cached beside the data with their provenance.

The cache (BUILT/encoded/<name>/) holds `passages.npy` [N, D] in key order, `queries/<split>.npy` in
each split file's row order, and a manifest naming the encoder, its max sequence length and the
bank's sha256: the frozen baseline and the `adapter` tower read these and refuse a stale cache.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytt.corpus.embed import PRECISIONS, Encoder, resolve, resolved_precision
from raytt.errors import RayttError
from raytt.progress import say
from raytt.storage import atomic_dir, read_json, write_json
from raytt.text.shards import TextShards, open_text

ROWS_PER_CALL = 8  # encoder batches per Ray Data call


@dataclass(frozen=True)
class EncodeConfig:
    embedder: str = "all-MiniLM-L6-v2"
    max_seq_length: int = 128  # tokens each text is cut to (the model's own limit when larger)
    batch_size: int = 64
    actors: int = 1
    actor_cpus: int = 0  # torch threads per actor (0 = every core / actors)
    precision: str = "auto"  # auto: bf16 where this machine computes it natively, else fp32

    def __post_init__(self) -> None:
        if self.max_seq_length < 8 or self.batch_size < 1 or self.actors < 1 or self.actor_cpus < 0:
            raise RayttError(
                "text-encode: need --max-seq-length >= 8, --batch-size >= 1, --actors >= 1, --actor-cpus >= 0"
            )
        if self.precision not in PRECISIONS:
            raise RayttError(f"text-encode: --precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def threads(self) -> int:
        return self.actor_cpus or max(1, (os.cpu_count() or 1) // self.actors)


def cache_slug(embedder_id: str) -> str:
    """The encoder id made path-safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", embedder_id)


def cache_name(embedder_id: str, max_seq_length: int) -> str:
    """The cache folder's name: the encoder id made path-safe, and the sequence length."""
    return f"{cache_slug(embedder_id)}-{max_seq_length}"


@dataclass(frozen=True)
class Encoded:
    """A cache of frozen vectors: passages [N, D] by key, queries [Q, D] per split by row."""

    folder: Path
    manifest: dict

    @property
    def embedder_id(self) -> str:
        return self.manifest["embedder_id"]

    def passages(self) -> np.ndarray:
        return np.load(self.folder / "passages.npy", mmap_mode="r")

    def queries(self, split: str) -> np.ndarray:
        path = self.folder / "queries" / f"{split}.npy"
        if not path.is_file():
            raise RayttError(f"{self.folder}: no encoded {split!r} queries; run raytt text-encode again")
        return np.load(path, mmap_mode="r")


def open_encoded(folder: str | Path, shards: TextShards) -> Encoded:
    """A cache, refused when it was encoded from another bank or its row counts disagree with the shards."""
    folder = Path(folder)
    manifest = read_json(folder / "manifest.json", "encoded-vectors manifest")
    if manifest.get("bank_sha256") != shards.bank_sha256:
        raise RayttError(
            f"{folder}: encoded from a bank with sha256 {str(manifest.get('bank_sha256'))[:12]}..., not this one "
            f"({shards.bank_sha256[:12]}...); run raytt text-encode {shards.root} again"
        )
    counts = {"passages": shards.passages, **{s: shards.rows(s) for s in shards.splits}}
    if manifest.get("rows") != counts:
        raise RayttError(f"{folder}: row counts {manifest.get('rows')} differ from the data's {counts}")
    return Encoded(folder, manifest)


def encode_texts(
    texts: list[str], cfg: EncodeConfig, precision: str, what: str, progress: Callable[[str], None] = say
) -> np.ndarray:
    """Unit vectors of `texts` in order, computed by `cfg.actors` Ray Data encoder actors (fed shortest first)
    in `precision` (fp32 or bf16)."""
    import ray

    from raytt.session import start_ray

    start_ray(cfg.actors * cfg.threads)
    started = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    ds = ray.data.from_items(
        [{"row": i, "text": texts[i]} for i in order], override_num_blocks=max(1, len(texts) // 2048)
    )
    ds = ds.map_batches(
        Encoder,
        fn_constructor_kwargs={
            "embedder": cfg.embedder,
            "device": "cpu",
            "batch_size": cfg.batch_size,
            "threads": cfg.threads,
            "max_seq_length": cfg.max_seq_length,
            "precision": precision,
        },
        batch_size=cfg.batch_size * ROWS_PER_CALL,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.threads,
    )
    out: np.ndarray | None = None
    done, last_said = 0, started
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        vectors = np.stack(batch["vector"]).astype(np.float32)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), np.float32)
        out[batch["row"]] = vectors
        done += len(vectors)
        if time.perf_counter() - last_said > 30:
            last_said = time.perf_counter()
            rate = done / (last_said - started)
            progress(
                f"text-encode: {what}: {done:,}/{len(texts):,} ({rate:,.0f}/s, ETA {(len(texts) - done) / rate:,.0f}s)"
            )
    if done != len(texts) or out is None:
        raise RayttError(f"text-encode: {what}: {done} of {len(texts)} texts came back from the encoder actors")
    progress(f"text-encode: {what}: {len(texts):,} in {time.perf_counter() - started:.0f}s")
    return out


def encode_set(
    built: str | Path,
    cfg: EncodeConfig = EncodeConfig(),
    overwrite: bool = False,
    progress: Callable[[str], None] = say,
) -> Path:
    """Encode every passage and query of a built text set once; returns the cache folder (reused when present)."""
    shards = open_text(built)
    embedder_id = resolve(cfg.embedder)[1]
    dest = Path(built) / "encoded" / cache_name(embedder_id, cfg.max_seq_length)
    if (dest / "manifest.json").is_file() and not overwrite:
        open_encoded(dest, shards)
        precision = read_json(dest / "manifest.json", "encoded-vectors manifest").get("precision", "fp32")
        progress(f"text-encode: {dest} is up to date ({embedder_id}, {precision}); --overwrite to encode again")
        return dest
    parts = {"passages": shards.passage_texts(), **{s: shards.query_texts(s) for s in shards.splits}}
    precision = resolved_precision(cfg.precision, "cpu")
    progress(f"text-encode: {', '.join(f'{len(t):,} {p}' for p, t in parts.items())} with {embedder_id} ({precision})")
    vectors = encode_texts([t for texts in parts.values() for t in texts], cfg, precision, "texts", progress)
    with atomic_dir(dest, overwrite=True) as tmp:
        (tmp / "queries").mkdir()
        start = 0
        for part, texts in parts.items():
            path = tmp / "passages.npy" if part == "passages" else tmp / "queries" / f"{part}.npy"
            np.save(path, vectors[start : start + len(texts)])
            start += len(texts)
        write_json(
            tmp / "manifest.json",
            {
                "embedder": cfg.embedder,
                "embedder_id": embedder_id,
                "max_seq_length": cfg.max_seq_length,
                "precision": precision,
                "dim": int(vectors.shape[1]),
                "bank_sha256": shards.bank_sha256,
                "rows": {"passages": shards.passages, **{s: shards.rows(s) for s in shards.splits}},
            },
        )
    progress(f"text-encode: wrote {dest}")
    return dest
