"""`raytt.Retriever`: an exported tower answering "which bank chunk comes next?" for a batch of contexts.

A context is the last chunks of an article, given as bank keys, as vectors, or (with the bank's embedder) as
texts. The query tower turns each context into one vector; the ANN index (or an exact scan) returns the
nearest keys with their scores, articles, positions and texts. Loading checks every file and refuses a bank
whose sha256 is not the one the tower was exported against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raytt import ann
from raytt.errors import RayttError
from raytt.export import CONFIG, FILES, FORMAT, INDEX, KEYS, VECTORS, WEIGHTS
from raytt.storage import read_json


class ExportError(RayttError):
    """An export folder, or what is asked of it, cannot be used."""


@dataclass(frozen=True)
class Hits:
    """The top k of each context: keys and scores [B, k] (best first, key -1 where nothing was found), and
    the keys' rows of the keys table."""

    keys: np.ndarray
    scores: np.ndarray
    table: pa.Table  # keys.parquet

    def rows(self, i: int) -> list[dict]:
        """Context i's hits as dicts: key, score and every keys-table column (article_id, position, text, ...)."""
        found = [(int(k), float(s)) for k, s in zip(self.keys[i], self.scores[i]) if k >= 0]
        taken = self.table.take([k for k, _ in found]).to_pylist()
        return [{"key": k, "score": s, **row} for (k, s), row in zip(found, taken)]


class Retriever:
    """An exported tower with its index: `search(context, k)`, `encode(context)`, `search_vectors(q, k)`."""

    def __init__(self, folder: Path, config: dict, model, vectors: np.ndarray, index, keys: pa.Table, bank) -> None:
        self.folder, self.config, self.model = folder, config, model
        self.vectors, self.index, self.keys = vectors, index, keys
        self._bank_vectors = bank  # context vectors by key: the bank (the index itself for an identity doc tower)
        self._embedder = None
        ann.set_parameter(index, config["index"]["parameter"])

    @classmethod
    def load(cls, folder: str | Path, bank: str | Path | None = None, verify: bool = True) -> Retriever:
        """An export folder (`raytt export`); `bank` is needed for key contexts when the doc tower is trained,
        and is refused when its sha256 differs from the export's. `verify` re-hashes the index vectors."""
        folder = Path(folder)
        config = read_export_config(folder)
        model = load_tower(folder, config)
        vectors = np.load(folder / VECTORS, mmap_mode="r")
        if vectors.shape != (config["bank"]["num_vectors"], config["dim"]):
            raise ExportError(
                f"{folder / VECTORS}: shape {vectors.shape}, config.json says "
                f"({config['bank']['num_vectors']}, {config['dim']})"
            )
        if verify and hashlib.sha256(np.ascontiguousarray(vectors).data).hexdigest() != config["index_vectors_sha256"]:
            raise ExportError(f"{folder / VECTORS}: sha256 differs from config.json's: the file changed after export")
        return cls(folder, config, model, vectors, read_index(folder), pq.read_table(folder / KEYS), None).with_bank(
            bank
        )

    def with_bank(self, bank: str | Path | None) -> Retriever:
        """This retriever reading context keys from `bank`, refused unless its sha256 is the export's."""
        from raytt.bank import load_bank, read_manifest

        want = self.config["bank"]["sha256"]
        if bank is None:
            self._bank_vectors = self.vectors if self.config["tower"]["doc"] == "identity" else None
            return self
        manifest = read_manifest(bank)
        if manifest.sha256 != want:
            raise ExportError(
                f"{bank}: bank sha256 {manifest.sha256[:12]}… is not the bank this tower was exported against "
                f"({want[:12]}…, {self.config['bank']['path']})"
            )
        self._bank_vectors = load_bank(bank).vectors
        return self

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def context_len(self) -> int:
        return int(self.config["context_len"])

    def encode(self, context) -> np.ndarray:
        """Unit query vectors [B, D] of a batch of contexts (keys, vectors or texts; see `contexts`)."""
        return self.encode_vectors(*self.contexts(context))

    def search(self, context, k: int = 10, exact: bool = False) -> Hits:
        """The top `k` bank keys after each context: ANN by default, `exact` for a full scan."""
        scores, keys = self.search_vectors(self.encode(context), k, exact)
        return Hits(keys, scores, self.keys)

    def hits(self, keys: np.ndarray, scores: np.ndarray) -> Hits:
        return Hits(keys, scores, self.keys)

    def rollout(self, context, steps: int, cfg=None, lane: str = "default") -> list[list[dict]]:
        """Dual-path decoding (`raytt.decoding`) of each context for `steps` steps with `lane`'s thresholds: per
        context, per step, the decision, the nearest key, the prediction's cosine to it and the chosen vector."""
        from raytt.decoding import DECISIONS, DecodeConfig, decode

        cfg = cfg or DecodeConfig()
        if self._bank_vectors is None:
            raise ExportError(f"{self.folder}: decoding snaps to bank vectors: load with bank=PATH (--bank)")
        vectors, lengths = self.contexts(context)
        lanes = [cfg.lane(lane)] * len(lengths)
        history = self.context_keys(context)
        rolled = decode(
            self.encode_vectors, self.search_vectors, self._bank_vectors, vectors, lengths, lanes, steps, history
        )
        return [
            [
                {
                    "step": t + 1,
                    "decision": DECISIONS[int(s.decisions[i])],
                    "key": int(s.keys[i, 0]),
                    "cosine": float(s.cosine[i]),
                    "vector": s.vectors[i].tolist(),
                }
                for t, s in enumerate(rolled)
            ]
            for i in range(len(lengths))
        ]

    def context_keys(self, context) -> np.ndarray | None:
        """Left-padded keys [B, context_len] (-1 = none) when the context is given as bank keys, else None."""
        if _is_texts(context):
            return None
        if _is_ragged(context):
            rows = [np.asarray(c, dtype=np.int64) for c in context]
        else:
            array = np.asarray(context)
            if array.dtype.kind not in "iu":
                return None
            rows = [array] if array.ndim == 1 else list(array)
        out = np.full((len(rows), self.context_len), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            row = row[row >= 0][-self.context_len :]
            out[i, self.context_len - len(row) :] = row
        return out

    def encode_vectors(self, vectors: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Unit query vectors [B, D] of left-padded context vectors [B, k, D] with their lengths [B]."""
        import torch

        with torch.no_grad():
            return self.model.encode_queries(torch.as_tensor(vectors), torch.as_tensor(lengths)).numpy()

    def search_vectors(self, queries: np.ndarray, k: int = 10, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys) [Q, k] of query vectors against the index, best first."""
        if k < 1:
            raise ExportError(f"search: k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ExportError(f"search: query vectors must be [Q, {self.dim}], got {list(queries.shape)}")
        k = min(k, len(self.vectors))
        if exact or not self.config["index"]["parameter"]:
            return ann.exact_top(self.vectors, queries, k)
        return self.index.search(queries, k)

    def contexts(self, context) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded context vectors [B, context_len, D] and lengths [B] from keys (one list, or a batch of
        lists, -1 = padding), vectors ([L, D] or [B, L, D]) or texts (a list of chunk texts, or a batch of them)."""
        if _is_texts(context):
            batch = [[context]] if isinstance(context, str) else context
            batch = [batch] if all(isinstance(t, str) for t in batch) else batch
            return self._padded([self._embed(list(texts)) for texts in batch])
        if _is_ragged(context):
            return self._padded([self._by_keys(np.asarray(c, dtype=np.int64 if not len(c) else None)) for c in context])
        array = np.asarray(context)
        if array.dtype.kind in "iu":
            rows = [array] if array.ndim == 1 else list(array)
            return self._padded([self._by_keys(r) for r in rows])
        if array.dtype.kind == "f":
            if array.ndim not in (2, 3) or array.shape[-1] != self.dim:
                raise ExportError(
                    f"context vectors must be [L, {self.dim}] or [B, L, {self.dim}], got {list(array.shape)}"
                )
            return self._padded(list(array[None] if array.ndim == 2 else array))
        raise ExportError(f"context must be bank keys, vectors or texts, got {type(context).__name__} {array.dtype}")

    def _by_keys(self, keys: np.ndarray) -> np.ndarray:
        if keys.ndim != 1 or keys.dtype.kind not in "iu":
            raise ExportError(f"context keys must be one list of integers per context, got {keys.tolist()!r:.80}")
        keys = keys[keys >= 0]
        n = len(self.vectors)
        if len(keys) and keys.max() >= n:
            raise ExportError(f"context key {int(keys.max())} is not in the bank (keys 0..{n - 1})")
        if self._bank_vectors is None:
            raise ExportError(
                f"{self.folder}: the doc tower is trained, so context keys need the bank's vectors: load with "
                f"bank=PATH (--bank) of the bank with sha256 {self.config['bank']['sha256'][:12]}…"
            )
        return np.asarray(self._bank_vectors[keys], dtype=np.float32)

    def _padded(self, contexts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        k = self.context_len
        out = np.zeros((len(contexts), k, self.dim), dtype=np.float32)
        lengths = np.empty(len(contexts), dtype=np.int64)
        for i, c in enumerate(contexts):
            if not 1 <= len(c) <= k:
                raise ExportError(f"context {i} has {len(c)} chunks: the tower reads 1 to {k} (context_len)")
            out[i, k - len(c) :] = c
            lengths[i] = len(c)
        return out, lengths

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Chunk texts as bank vectors, by the embedder the bank was made with."""
        if self._embedder is None:
            from raytt.corpus.embed import load

            if self.config["bank"]["embedder_id"].startswith("raytt-synth"):
                raise ExportError(
                    f"{self.folder}: the bank is synthetic ({self.config['bank']['embedder_id']}): no text encoder "
                    "made its vectors, so give contexts as bank keys or vectors"
                )
            self._embedder = load(self.config["bank"]["embedder_id"])
        return self._embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)


def _is_ragged(context) -> bool:
    """A list of per-context key lists (lengths may differ)."""
    return isinstance(context, list | tuple) and bool(context) and isinstance(context[0], list | tuple | np.ndarray)


def _is_texts(context) -> bool:
    if isinstance(context, str):
        return True
    if not isinstance(context, list | tuple) or not context:
        return False
    first = context[0]
    return isinstance(first, str) or (isinstance(first, list | tuple) and bool(first) and isinstance(first[0], str))


def read_export_config(folder: Path) -> dict:
    """config.json of an export folder, after checking that every file of the export is there."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such export folder (write one with `raytt export RUN --out {folder}`)")
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"{folder}: not a complete export: missing {', '.join(missing)} (run `raytt export` again)")
    config = read_json(folder / CONFIG, "export config", ExportError)
    if config.get("format") != FORMAT:
        raise ExportError(f"{folder / CONFIG}: format {config.get('format')!r} is not {FORMAT!r}")
    return config


def load_tower(folder: Path, config: dict):
    """The two-tower from config.json and model.safetensors, in eval mode on the CPU."""
    from safetensors.torch import load_file

    from raytt import config as configs
    from raytt.towers import TowerConfig, TwoTower

    model = TwoTower(configs.from_dict(TowerConfig, config["tower"], str(folder / CONFIG), "tower"), config["dim"])
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except Exception as exc:
        raise ExportError(f"{folder / WEIGHTS}: cannot be loaded into the tower ({type(exc).__name__})") from None
    return model.eval()


def read_index(folder: Path):
    import faiss

    try:
        return faiss.read_index(str(folder / INDEX))
    except RuntimeError as exc:
        raise ExportError(f"{folder / INDEX}: unreadable FAISS index ({ann._first_line(exc)})") from None
