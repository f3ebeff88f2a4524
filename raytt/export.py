"""`raytt export`: a trained vector tower as a folder that serves without raytt's training code.

The folder holds `model.safetensors` (the two-tower's weights), `config.json` (tower, dims, context length,
the bank's embedder id and sha256, the index and its calibration), `query_tower.pt2` (the query tower as a
`torch.export` program: plain PyTorch runs it), `index_vectors.npy` (the doc side's vectors, row = key),
`index.faiss` (the ANN index) and `keys.parquet` (every bank column but the vectors: article, position,
text, lanes). It is written into a temporary folder and renamed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raytt import ann
from raytt.errors import RayttError
from raytt.progress import say

FORMAT = "raytt.export/1"
CONFIG, WEIGHTS, PROGRAM = "config.json", "model.safetensors", "query_tower.pt2"
VECTORS, INDEX, KEYS = "index_vectors.npy", "index.faiss", "keys.parquet"
FILES = (CONFIG, WEIGHTS, PROGRAM, VECTORS, INDEX, KEYS)
CALIBRATION_QUERIES = 1000


def export(
    run: str | Path,
    out: str | Path,
    checkpoint: str = "best",
    factory: str = "",
    target_recall: float = 0.98,
    overwrite: bool = False,
    progress: Callable[[str], None] = say,
) -> Path:
    """Export `run`'s checkpoint (best, latest or a folder) to `out`; returns `out`."""
    from raytt.bank import load_bank
    from raytt.checkpoints import load_model, resolve
    from raytt.config import load
    from raytt.evaluation import load_queries
    from raytt.sequences import bank_of, open_shards
    from raytt.storage import atomic_dir, write_json
    from raytt.towers import index_vectors, query_vectors
    from raytt.training.config import TrainConfig

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise RayttError(f"{run}: not a run directory (no config.yaml); train one with `raytt train`")
    if not 0 < target_recall <= 1:
        raise RayttError(f"export: --target-recall must be in (0, 1], got {target_recall}")
    folder = resolve(run, checkpoint)
    model, meta = load_model(folder)
    shards = open_shards(load(TrainConfig, run / "config.yaml").data.shards)
    bank = load_bank(bank_of(shards))
    progress(f"export: {folder} over the bank {bank.path} ({bank.num_vectors:,} x {bank.dim})")
    vectors = np.ascontiguousarray(index_vectors(model, bank.vectors), dtype=np.float32)
    factory = factory or ann.default_factory(len(vectors))
    index = ann.build(vectors, factory, progress=progress)
    val = load_queries(shards, "val" if shards.rows("val") else "test", CALIBRATION_QUERIES)
    queries = query_vectors(model, bank.vectors, val.context, val.lengths)
    calibration = ann.calibrate(index, ann.exact_top(vectors, queries, 10)[1], queries, target_recall)
    progress(
        f"export: search parameter {calibration.parameter or '(exact)'}: Recall@10 against exact "
        f"{calibration.recall_at_10:.4f} on {calibration.queries:,} held-out queries (target {target_recall})"
    )
    with atomic_dir(out, overwrite) as tmp:
        write_weights(model, tmp / WEIGHTS)
        write_program(model, shards.context_len, tmp / PROGRAM)
        np.save(tmp / VECTORS, vectors)
        write_index(index, tmp / INDEX)
        write_keys(bank.path, bank.manifest.files, tmp / KEYS)
        write_json(
            tmp / CONFIG, export_config(model, meta, folder, bank, vectors, shards.context_len, factory, calibration)
        )
    progress(f"export: wrote {out} ({', '.join(FILES)})")
    return Path(out)


def export_config(
    model, meta: dict, folder: Path, bank, vectors: np.ndarray, context_len: int, factory: str, calibration
) -> dict:
    """What config.json records: enough to rebuild the tower and to refuse a bank it was not trained on."""
    return {
        "format": FORMAT,
        "tower": dataclasses.asdict(model.cfg),
        "dim": model.dim,
        "context_len": context_len,
        "bank": {
            "embedder_id": bank.manifest.embedder_id,
            "sha256": bank.manifest.sha256,
            "num_vectors": bank.num_vectors,
            "path": str(bank.path),
        },
        "index": {"factory": factory, **calibration.to_json()},
        "index_vectors_sha256": hashlib.sha256(vectors.data).hexdigest(),
        "checkpoint": {"path": str(folder), "step": meta.get("step"), "metrics": meta.get("metrics", {})},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_program(model, context_len: int, path: Path) -> None:
    """The query tower as a `torch.export` program over (context [B, k, D], lengths [B]), any batch size."""
    import torch

    example = (torch.zeros(2, context_len, model.dim), torch.full((2,), context_len, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():  # recurrent layers re-assign their flat weights while traced: harmless
            warnings.filterwarnings("ignore", message=".*were assigned during export.*")
            program = torch.export.export(
                model.query.eval(), example, dynamic_shapes=({0: batch}, {0: batch}), strict=False
            )
    except Exception as exc:
        raise RayttError(
            f"export: torch.export cannot trace the {model.cfg.query} query tower ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]})"
        ) from None
    torch.export.save(program, str(path))


def write_index(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def write_keys(bank_path: Path, files: tuple[str, ...], path: Path) -> None:
    """Every bank column except the vectors, row = key, streamed file by file."""
    writer = None
    for name in files:
        source = pq.ParquetFile(Path(bank_path) / name)
        columns = [c for c in source.schema_arrow.names if c != "vector"]
        for batch in source.iter_batches(columns=columns):
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema)
            writer.write_batch(batch)
    if writer is not None:
        writer.close()
