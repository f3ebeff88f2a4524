"""`raytt ingest`: a folder of documents -> a bank, through Ray Data with an actor pool of encoders.

Documents are listed and checked on the driver (nothing is written if one cannot be read), grouped
into shards of `files_per_shard`, chunked by Ray Data tasks and embedded by encoder actors. Each
finished shard is written to `.BANK.partial/` as it completes; a re-run with the same input and
settings skips the shards already there. The bank itself (dense keys in document order, manifest
with the model's embedder_id, dim, `l2` and sha256) is written atomically at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytt import config
from raytt.bank import BankManifest, write_bank_blocks
from raytt.corpus.chunk import ChunkSpec, chunk
from raytt.corpus.config import IngestConfig
from raytt.corpus.embed import Encoder, load, resolve, resolved_precision
from raytt.corpus.extract import SUFFIXES, paragraphs
from raytt.devices import resolve_device
from raytt.errors import RayttError
from raytt.progress import say
from raytt.storage import atomic_write_text

Progress = Callable[[str], None]
PLAN = "plan.json"
ROWS_PER_CALL = 16  # encode batches per actor call: `encode` sorts a call's texts by length, so less padding


def list_documents(root: Path, suffixes: tuple[str, ...] = SUFFIXES) -> list[Path]:
    """Every document under `root` (recursive, sorted), each checked readable before any work starts."""
    if not root.is_dir():
        raise RayttError(f"{root}: not a folder of documents")
    found = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in suffixes
        and not p.is_dir()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not found:
        raise RayttError(f"{root}: no documents here (looked for {', '.join(suffixes)}, recursively)")
    for path in found:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise RayttError(f"{path}: cannot read this document ({exc.strerror or exc})") from None
    return found


def chunk_rows(row: dict, spec: ChunkSpec, min_chunks: int) -> list[dict]:
    """Ray Data flat_map: one document row -> its chunk rows (none if the article is too short)."""
    chunks = chunk(paragraphs(Path(row["path"])), spec)
    if len(chunks) < min_chunks:
        return []
    return [
        {"shard": row["shard"], "article_id": row["article_id"], "position": i, "text": text}
        for i, text in enumerate(chunks)
    ]


def ingest(
    input_dir: str | Path,
    out: str | Path,
    cfg: IngestConfig | None = None,
    overwrite: bool = False,
    progress: Progress = say,
) -> BankManifest:
    """Documents under `input_dir` -> the bank at `out`; returns its manifest."""
    cfg = cfg or IngestConfig()
    root, out = Path(input_dir).resolve(), Path(out).resolve()
    if out.exists() and not overwrite:
        raise RayttError(f"{out}: already exists (pass --overwrite to replace it)")
    files = list_documents(root, cfg.suffixes)
    device = resolve_device(cfg.device, "ingest device")
    model = load(cfg.embedder, "cpu")
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    embedder_id, dim = resolve(cfg.embedder)[1], int(dimension())
    del model
    shards = [files[i : i + cfg.files_per_shard] for i in range(0, len(files), cfg.files_per_shard)]
    partial = out.parent / f".{out.name}.partial"
    plan = {
        "input": str(root),
        "files": [str(p.relative_to(root)) for p in files],
        "config": config.to_dict(cfg),
        "embedder_id": embedder_id,
        "dim": dim,
    }
    done = _resume(partial, plan, len(shards), overwrite, progress)
    progress(
        f"ingest: {len(files):,} documents under {root} in {len(shards)} shard(s) ({len(done)} already done); "
        f"embedder {embedder_id} (dim {dim}) on {device} in {resolved_precision(cfg.precision, device)}, "
        f"{cfg.actors} actor(s)"
    )
    pending = [i for i in range(len(shards)) if i not in done]
    if pending:
        _run(root, shards, pending, partial, cfg, device, dim, progress)
    manifest = _assemble(partial, len(shards), out, embedder_id, dim, root, cfg, overwrite)
    shutil.rmtree(partial, ignore_errors=True)
    progress(f"ingest: wrote {manifest.num_vectors:,} x {manifest.dim} bank to {out}")
    return manifest


def _resume(partial: Path, plan: dict, num_shards: int, overwrite: bool, progress: Progress) -> set[int]:
    """Shards already written by an earlier run of the same plan; a different plan is refused."""
    if overwrite:
        shutil.rmtree(partial, ignore_errors=True)
    if (partial / PLAN).is_file():
        before = json.loads((partial / PLAN).read_text())
        if before != plan:
            changed = sorted(k for k in plan if before.get(k) != plan[k])
            raise RayttError(
                f"{partial}: an unfinished ingest with other {changed}; re-run it unchanged, or pass "
                f"--overwrite to start again"
            )
        done = {i for i in range(num_shards) if _shard_path(partial, i).is_file()}
        if done:
            progress(f"ingest: resuming; skipping {len(done)} shard(s) already written in {partial}")
        return done
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial / PLAN, json.dumps(plan, indent=1))
    return set()


def _shard_path(partial: Path, index: int) -> Path:
    return partial / f"shard-{index:05d}.parquet"


def _run(
    root: Path,
    shards: list[list[Path]],
    pending: list[int],
    partial: Path,
    cfg: IngestConfig,
    device: str,
    dim: int,
    progress: Progress,
) -> None:
    """Chunk and embed the pending shards with Ray Data; write each shard as soon as it is complete."""
    import ray

    from raytt.session import start_ray

    threads = cfg.actor_cpus or os.cpu_count() or 1
    start_ray(cfg.actors * threads + 1)
    items = [{"shard": i, "path": str(p), "article_id": str(p.relative_to(root))} for i in pending for p in shards[i]]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(chunk_rows, fn_kwargs={"spec": cfg.chunking, "min_chunks": cfg.min_chunks})
    ds = ds.map_batches(
        Encoder,
        fn_constructor_kwargs={
            "embedder": cfg.embedder,
            "device": device,
            "batch_size": cfg.batch_size,
            "threads": threads,
            "precision": resolved_precision(cfg.precision, device),
        },
        batch_size=cfg.batch_size * ROWS_PER_CALL,
        concurrency=cfg.actors,
        num_cpus=threads,
        num_gpus=1 if device == "cuda" else 0,
    )
    ds.context.execution_options.preserve_order = True
    writer = _ShardWriter(partial, pending, dim, shards, progress)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        writer.add(batch)
    writer.finish()


class _ShardWriter:
    """Collects the ordered stream of embedded chunks and writes each shard once the stream moves past it."""

    def __init__(self, partial: Path, pending: list[int], dim: int, shards: list[list[Path]], progress: Progress):
        self.partial, self.pending, self.dim, self.shards, self.progress = partial, list(pending), dim, shards, progress
        self.rows: list[dict] = []
        self.started = time.perf_counter()
        self.chunks = 0

    def add(self, batch: dict) -> None:
        for shard in np.unique(batch["shard"]):
            while self.pending and self.pending[0] < shard:
                self._write(self.pending.pop(0))
            self.rows.append({k: batch[k][batch["shard"] == shard] for k in batch})

    def finish(self) -> None:
        while self.pending:
            self._write(self.pending.pop(0))

    def _write(self, index: int) -> None:
        rows = [r for r in self.rows if r["shard"][0] == index]
        self.rows = [r for r in self.rows if r["shard"][0] != index]
        vectors = (
            np.concatenate([np.stack(r["vector"]) for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, self.dim), np.float32)
        )
        table = pa.table(
            {
                "article_id": pa.array([a for r in rows for a in r["article_id"]], pa.string()),
                "position": pa.array([p for r in rows for p in r["position"]], pa.int32()),
                "text": pa.array([t for r in rows for t in r["text"]], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
            }
        )
        path = _shard_path(self.partial, index)
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.chunks += len(table)
        articles = len(set(table.column("article_id").to_pylist()))
        rate = self.chunks / (time.perf_counter() - self.started)
        self.progress(
            f"ingest: shard {index + 1}/{len(self.shards)}: {len(table):,} chunks from {articles} of "
            f"{len(self.shards[index])} documents ({self.chunks:,} chunks so far, {rate:,.0f} chunks/s)"
        )


def _assemble(
    partial: Path,
    num_shards: int,
    out: Path,
    embedder_id: str,
    dim: int,
    root: Path,
    cfg: IngestConfig,
    overwrite: bool,
) -> BankManifest:
    """The shards, in order, as one bank with dense keys (written atomically)."""

    def blocks():
        for i in range(num_shards):
            table = pq.read_table(_shard_path(partial, i))
            if len(table) == 0:
                continue
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
            texts = table.column("text").to_pylist() if cfg.keep_text else None
            yield (table.column("article_id").to_pylist(), table.column("position").to_numpy(), vectors, texts)

    if not any(pq.read_metadata(_shard_path(partial, i)).num_rows for i in range(num_shards)):
        raise RayttError(
            f"{root}: no article has {cfg.min_chunks} chunks of about {cfg.chunk_words} words "
            f"(lower --min-chunks or --chunk-words)"
        )
    return write_bank_blocks(
        out, blocks(), embedder_id, source=f"raytt ingest {root}", overwrite=overwrite, with_text=cfg.keep_text, dim=dim
    )
