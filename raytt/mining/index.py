"""Nearest-neighbour indexes a miner searches by inner product (unit vectors: cosine).

  flat  exact. On CPU a blocked matmul + top-k in torch over the shared bank itself: no copy, so the
        bank's bytes are held once per node however many miners run (faiss.knn over the same array
        measured 3.5x slower on this CPU's OpenBLAS build). On CUDA: faiss-gpu's GpuIndexFlatIP when
        faiss-gpu is installed, else torch on the GPU.
  ivf   FAISS `IVF{nlist},Flat` (nlist clusters, nprobe searched): a private copy of the vectors.
  hnsw  FAISS `HNSW{M},Flat` (M links, efSearch): a private copy plus the graph (~8*M bytes/vector).
  factory  any `faiss.index_factory` string (`mining.factory`), e.g. `IVF1024,SQ8` or `IVF1024,PQ32` for
        banks whose private copy would not fit: scalar/product quantisation shrinks it 4-16x.
Every FAISS kind is built through `faiss.index_factory`; nprobe and efSearch apply wherever the index
has them. `device: auto` picks CUDA when torch sees a GPU; every miner logs what it built.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from raytt.devices import resolve_device
from raytt.tensors import as_tensor

TRAIN_SAMPLE = 65_536  # vectors an IVF/PQ/SQ index trains on


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "flat"
    device: str = "auto"
    nlist: int = 0
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    threads: int = 1
    factory: str = ""

    def description(self, n: int) -> str:
        """The `faiss.index_factory` string this spec builds over `n` vectors (not for `flat`)."""
        if self.kind == "ivf":
            return f"IVF{self.nlist or default_nlist(n)},Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        return self.factory


class Index:
    """A searchable snapshot of the index vectors; `vectors` stays available for the filters."""

    def __init__(self, vectors: np.ndarray, spec: IndexSpec, version: int = 0) -> None:
        started = time.perf_counter()
        self.vectors, self.spec, self.version = vectors, spec, version
        self.device = resolve_device(spec.device, "mining.device")
        self.faiss_index = None
        self.engine = "torch"
        if spec.kind == "flat":
            self._flat()
        else:
            self._faiss()
        self.build_seconds = time.perf_counter() - started

    def _flat(self) -> None:
        if self.device == "cuda" and _faiss_gpu():
            import faiss

            self.faiss_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, _flat_cpu(self.vectors))
            self.engine = "faiss-gpu GpuIndexFlatIP"
            return
        self.table = as_tensor(self.vectors).to(self.device)
        self.engine = f"torch exact ({self.device})"

    def _faiss(self) -> None:
        import faiss

        faiss.omp_set_num_threads(self.spec.threads)
        n, d = self.vectors.shape
        description = self.spec.description(n)
        index = faiss.index_factory(d, description, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            sample = np.random.default_rng(0).choice(n, size=min(n, TRAIN_SAMPLE), replace=False)
            index.train(np.ascontiguousarray(self.vectors[np.sort(sample)]))
        _set(index, "efConstruction", max(40, 2 * self.spec.hnsw_m))
        index.add(np.ascontiguousarray(self.vectors, dtype=np.float32))
        self.private = len(faiss.serialize_index(index))
        self.engine = f"faiss {description}"
        if _set(index, "nprobe", self.spec.nprobe):
            self.engine += f" nprobe={self.spec.nprobe}"
        if self.device == "cuda" and _faiss_gpu() and "HNSW" not in description:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            self.engine = "faiss-gpu " + self.engine[6:]
        elif self.device == "cuda":
            why = "FAISS has no GPU HNSW" if "HNSW" in description else "faiss-gpu is not installed"
            self.device, self.engine = "cpu", f"{self.engine} (CPU: {why})"
        self.faiss_index = index

    @property
    def private_bytes(self) -> int:
        """Bytes this index holds beyond the shared bank (0 for the CPU flat index: it searches the bank in place)."""
        if self.faiss_index is None:
            return 0 if self.device == "cpu" else self.vectors.nbytes
        return self.private

    def search(self, queries: np.ndarray, k: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, keys) by inner product, best first; keys -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.faiss_index is not None:
            _set(self.faiss_index, "efSearch", max(self.spec.ef_search, k))
            scores, keys = self.faiss_index.search(queries, k)
            return scores, keys.astype(np.int64)
        return _exact(as_tensor(queries).to(self.device), self.table, k, block)

    def describe(self) -> str:
        return (
            f"{self.engine}, {len(self.vectors):,} x {self.vectors.shape[1]}, built in {self.build_seconds:.1f}s, "
            f"{self.private_bytes / 2**20:,.0f} MiB private"
        )


def _exact(queries: torch.Tensor, table: torch.Tensor, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked exact top-k: never a [Q, N] score matrix, one [Q, block] block at a time."""
    k_eff = min(k, len(table))
    best_s = torch.full((len(queries), 0), -torch.inf, device=queries.device)
    best_i = torch.empty((len(queries), 0), dtype=torch.int64, device=queries.device)
    for start in range(0, len(table), block):
        scores = queries @ table[start : start + block].T
        s, i = scores.topk(min(k_eff, scores.shape[1]), dim=1)
        best_s, pick = torch.cat([best_s, s], 1).topk(min(k_eff, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    scores, keys = best_s.cpu().numpy(), best_i.cpu().numpy()
    if k_eff < k:
        pad = k - k_eff
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        keys = np.pad(keys, ((0, 0), (0, pad)), constant_values=-1)
    return scores, keys


def _flat_cpu(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def default_nlist(n: int) -> int:
    """IVF clusters for n vectors: 4*sqrt(n), at least 39 training points each."""
    return max(1, min(n // 39, int(4 * math.sqrt(n))))


def check_factory(description: str, dim: int) -> None:
    """Refuse a `mining.factory` string FAISS cannot build for this dimension, before any miner starts."""
    import faiss

    from raytt.errors import ConfigError

    try:
        faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"mining.factory {description!r}: FAISS cannot build it for dim {dim}: {first}") from None


def _set(index, name: str, value: int) -> bool:
    """Set a FAISS search/build parameter where the index has it (nprobe, efSearch, efConstruction)."""
    import faiss

    try:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
    except RuntimeError:
        return False
    return True


def _faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
