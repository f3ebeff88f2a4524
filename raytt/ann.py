"""The served ANN index: a FAISS `index_factory` string over the doc-side vectors, its search parameter
calibrated against exact search on real queries, and exact search beside it.

The default factory follows the bank's size: exact (`Flat`) up to `EXACT_UP_TO` vectors, where a brute-force
scan is already fast, else an inverted file of about 4·√N lists. The search parameter (`nprobe` for IVF,
`efSearch` for HNSW) is the smallest whose Recall@10 against exact search on the calibration queries
reaches the target, so the speed bought is never paid for with unmeasured recall.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raytt.errors import ConfigError
from raytt.progress import say

EXACT_UP_TO = 200_000
TRAIN_PER_LIST = 64  # FAISS warns below 39 training points per list


@dataclass(frozen=True)
class Calibration:
    """The chosen search parameter and what it measured on the calibration queries."""

    parameter: str  # "nprobe=16", "efSearch=64", or "" (exact index)
    recall_at_10: float
    queries: int

    def to_json(self) -> dict:
        return {"parameter": self.parameter, "recall_at_10": self.recall_at_10, "queries": self.queries}


def default_factory(n: int) -> str:
    """`Flat` for up to EXACT_UP_TO vectors, else `IVF<lists>,Flat` with a power of two near 4·√n lists."""
    if n <= EXACT_UP_TO:
        return "Flat"
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},Flat"


def build(vectors: np.ndarray, factory: str, seed: int = 0, progress: Callable[[str], None] = say):
    """A trained, filled inner-product index of `factory` over `vectors` [N, D] (row = key)."""
    import faiss

    dim = int(vectors.shape[1])
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"--index-factory {factory!r}: FAISS cannot build it ({_first_line(exc)})") from None
    started = time.perf_counter()
    if not index.is_trained:
        lists = _lists(index)
        sample = min(len(vectors), max(TRAIN_PER_LIST * lists, 10_000))
        if len(vectors) < 39 * lists:
            raise ConfigError(
                f"--index-factory {factory!r}: {lists:,} lists need at least {39 * lists:,} vectors to train, the bank "
                f"has {len(vectors):,}"
            )
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for start in range(0, len(vectors), 262_144):
        index.add(np.ascontiguousarray(vectors[start : start + 262_144], dtype=np.float32))
    progress(f"export: index {factory} over {len(vectors):,} vectors built in {time.perf_counter() - started:.1f}s")
    return index


def exact_top(index_vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 262_144):
    """Exact inner-product top k: (scores [Q, k], keys [Q, k]), best first, streamed over the index."""
    import warnings

    import torch

    q = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), k), -torch.inf)
    best_k = torch.full((len(q), k), -1, dtype=torch.int64)
    for start in range(0, len(index_vectors), block):
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            part = torch.as_tensor(np.ascontiguousarray(index_vectors[start : start + block], dtype=np.float32))
        s, i = torch.topk(q @ part.T, min(k, len(part)), dim=1)
        merged_s, order = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
        best_k = torch.gather(torch.cat([best_k, i + start], 1), 1, order)
        best_s = merged_s
    return best_s.numpy(), best_k.numpy()


def calibrate(index, exact_keys: np.ndarray, queries: np.ndarray, target: float) -> Calibration:
    """The smallest search parameter whose Recall@10 against `exact_keys` [Q, >=10] reaches `target` (the
    largest tried when none does); exact indexes need none."""
    candidates = _parameters(index)
    if not candidates:
        return Calibration("", 1.0, len(queries))
    recall = 0.0
    for parameter in candidates:
        set_parameter(index, parameter)
        _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), 10)
        recall = recall_at_10(found, exact_keys)
        if recall >= target:
            break
    return Calibration(parameter, recall, len(queries))


def recall_at_10(found: np.ndarray, exact_keys: np.ndarray) -> float:
    """Share of exact search's top 10 that the ANN's top 10 also holds, averaged over queries."""
    hits = [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(found.tolist(), exact_keys.tolist())]
    return float(np.mean(hits)) if hits else float("nan")


def set_parameter(index, parameter: str) -> None:
    """Apply a calibrated `name=value` search parameter (nothing for an exact index)."""
    import faiss

    if parameter:
        name, value = parameter.split("=")
        faiss.ParameterSpace().set_index_parameter(index, name, float(value))


def _parameters(index) -> list[str]:
    """Search parameters to try, cheapest first: nprobe for IVF, efSearch for HNSW, none for Flat."""
    import faiss

    if _ivf(index) is not None:
        lists = _lists(index)
        return [f"nprobe={p}" for p in (2**i for i in range(0, int(math.log2(lists)) + 1))]
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512, 1024)]
    return []


def _ivf(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _lists(index) -> int:
    ivf = _ivf(index)
    return int(ivf.nlist) if ivf is not None else 1


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:160] if lines else type(exc).__name__
