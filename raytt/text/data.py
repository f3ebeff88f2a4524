"""A text run's inputs, prepared by the driver: the passage table (token ids or cached vectors, by key),
the train rows (one per query and positive, with negatives) as a Ray Dataset tokenised by Ray Data,
and the dev queries that full-corpus validation ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from raytt.corpus.embed import resolve
from raytt.errors import RayttError
from raytt.text.config import TextTrainConfig
from raytt.text.encode import Encoded, cache_name, open_encoded
from raytt.text.shards import TextShards
from raytt.text.tokens import Tokenize, load_tokenizer, tokenize


@dataclass(frozen=True)
class Judged:
    """Queries to rank against the whole corpus: their inputs and their grades by passage key."""

    inputs: np.ndarray  # [Q, L] token ids or [Q, D] cached vectors
    grades: list[dict[int, int]]
    query_ids: list[str]

    def __len__(self) -> int:
        return len(self.grades)


def encoded_cache(cfg: TextTrainConfig, shards: TextShards) -> Encoded:
    """The frozen encoder's cached vectors this run reads, refused with the command that makes them when absent."""
    embedder_id = resolve(cfg.tower.encoder)[1]
    folder = shards.root / "encoded" / cache_name(embedder_id, cfg.data.encoded_length)
    if not (folder / "manifest.json").is_file():
        raise RayttError(
            f"{folder}: no cached vectors of {embedder_id} (tower adapter and data.mined_negatives read them); run "
            f"raytt text-encode {shards.root} --embedder {cfg.tower.encoder} --max-seq-length {cfg.data.encoded_length}"
        )
    return open_encoded(folder, shards)


def passage_table(cfg: TextTrainConfig, shards: TextShards, encoded: Encoded | None) -> np.ndarray:
    """Every passage as the passage side reads it, by key: cached vectors, token ids, or both (hybrid)."""
    tower = cfg.tower
    vectors = None if tower.passages_read_tokens else np.ascontiguousarray(encoded.passages(), dtype=np.float32)
    if vectors is not None and not tower.packs_tokens:
        return vectors
    tokens = tokenize(load_tokenizer(tower.encoder), shards.passage_texts(), tower.max_passage_tokens, _special(cfg))
    return tokens if vectors is None else packed(vectors, tokens)


def query_inputs(cfg: TextTrainConfig, shards: TextShards, split: str, encoded: Encoded | None) -> np.ndarray:
    """A split's queries as the query side reads them, in the split file's row order."""
    tower = cfg.tower
    vectors = None if tower.queries_read_tokens else np.ascontiguousarray(encoded.queries(split), dtype=np.float32)
    if vectors is not None and not tower.packs_tokens:
        return vectors
    tokens = tokenize(load_tokenizer(tower.encoder), shards.query_texts(split), tower.max_query_tokens, _special(cfg))
    return tokens if vectors is None else packed(vectors, tokens)


def packed(vectors: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """A hybrid side's input: the cached vector, then the token ids as float32 (exact below 2**24)."""
    return np.concatenate([vectors, tokens.astype(np.float32)], axis=1)


def _special(cfg: TextTrainConfig) -> bool:
    """A finetuned model reads [CLS]/[SEP] as it was pretrained; a bag of tokens does not need them."""
    return cfg.tower.kind == "finetune"


def judged(cfg: TextTrainConfig, shards: TextShards, split: str, encoded: Encoded | None, limit: int) -> Judged:
    """The split's queries with at least one positive grade (a seeded sample of `limit` when limit > 0)."""
    table = shards.table(split)
    grades = [
        {int(k): int(g) for k, g in zip(keys, gs)}
        for keys, gs in zip(table["positives"].to_pylist(), table["grades"].to_pylist())
    ]
    rows = [i for i, g in enumerate(grades) if any(v > 0 for v in g.values())]
    if limit and len(rows) > limit:
        rows = sorted(np.random.default_rng(cfg.seed).choice(rows, limit, replace=False).tolist())
    inputs = query_inputs(cfg, shards, split, encoded)
    ids = table["query_id"].to_pylist()
    return Judged(inputs[rows], [grades[i] for i in rows], [ids[i] for i in rows])


def train_rows(cfg: TextTrainConfig, shards: TextShards, mined: np.ndarray | None) -> pa.Table:
    """One row per (train query, positive): the query row, text, positive key and a fixed-width negatives list.

    Negatives are the data's own (up to `data.given_negatives`) then the mined ones, -1 padded. When the
    miner pool mines, each row also carries its query's judged passages (`judged`), which it must not return.
    """
    table = shards.table("train")
    texts, positives = table["text"].to_pylist(), table["positives"].to_pylist()
    grades, given = table["grades"].to_pylist(), table["negatives"].to_pylist()
    take = cfg.data.given_negatives if cfg.data.given_negatives >= 0 else max((len(n) for n in given), default=0)
    width = take + (mined.shape[1] if mined is not None else 0)
    rows, text, positive, negatives = [], [], [], []
    for i, (keys, gs) in enumerate(zip(positives, grades)):
        extra = list(given[i][:take]) + ([] if mined is None else [int(k) for k in mined[i] if k >= 0])
        extra = extra + [-1] * (width - len(extra))
        for key, grade in zip(keys, gs):
            if grade > 0:
                rows.append(i), text.append(texts[i]), positive.append(key), negatives.append(extra)
    if not rows:
        raise RayttError(f"{shards.split_file('train')}: no training query has a positive")
    columns = {"row": pa.array(rows, pa.int64()), "text": text, "positive": pa.array(positive, pa.int64())}
    if width:
        columns["negatives"] = pa.array(negatives, pa.list_(pa.int64(), width))
    if cfg.mining.curriculum.mines:
        most = max(len(keys) for keys in positives)
        judged = [positives[i] + [-1] * (most - len(positives[i])) for i in rows]
        columns["judged"] = pa.array(judged, pa.list_(pa.int64(), most))
    return pa.table(columns)


def train_dataset(cfg: TextTrainConfig, rows: pa.Table, query_vectors: np.ndarray | None):
    """The train rows as a Ray Dataset; Ray Data tokenises the query text (or attaches its cached vector)."""
    import ray

    dataset = ray.data.from_arrow(rows)
    if cfg.tower.queries_read_tokens:
        dataset = dataset.map_batches(
            Tokenize,
            fn_constructor_kwargs={
                "encoder": cfg.tower.encoder,
                "max_tokens": cfg.tower.max_query_tokens,
                "special": _special(cfg),
            },
            batch_size=1024,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,
        )
    else:
        ref = ray.put(np.ascontiguousarray(query_vectors, dtype=np.float32))  # vectors (adapter) or packed (hybrid)
        dataset = dataset.map_batches(_attach_vectors, fn_kwargs={"vectors": ref}, batch_size=1024)
    return dataset.select_columns(collated_columns(rows)).materialize()


def collated_columns(rows: pa.Table) -> list[str]:
    """The columns `TextCollate` reads: the query inputs and the keys (not the text or the row, which would
    only be converted on every step)."""
    return ["tokens", "positive"] + [c for c in ("negatives", "judged") if c in rows.column_names]


def _attach_vectors(batch: dict, vectors) -> dict:
    import ray

    table = ray.get(vectors) if isinstance(vectors, ray.ObjectRef) else vectors
    batch["tokens"] = table[batch["row"]]
    return batch


class TextRows(NamedTuple):
    """One batch of train rows as tensors."""

    queries: torch.Tensor  # [B, ...] token ids or vectors
    positive_keys: torch.Tensor  # [B]
    negative_keys: torch.Tensor | None  # [B, n], -1 = empty
    judged: torch.Tensor | None  # [B, m] the query's judged passages, -1 padded (when the pool mines)

    def with_mined(self, mined: np.ndarray | None) -> TextRows:
        """These rows with the pool's negative keys [B, count] after any given or frozen-mined ones."""
        if mined is None:
            return self
        mined = torch.as_tensor(mined, dtype=torch.int64)
        keys = mined if self.negative_keys is None else torch.cat([self.negative_keys, mined], 1)
        return self._replace(negative_keys=keys)


class TextCollate(NumpyBatchCollateFn):
    """Ray Data collate step: numpy columns to `TextRows`."""

    def __call__(self, batch: dict) -> TextRows:
        return TextRows(
            torch.as_tensor(_stacked(batch["tokens"])),
            torch.as_tensor(batch["positive"], dtype=torch.int64),
            *(
                torch.as_tensor(_stacked(batch[c]), dtype=torch.int64) if c in batch else None
                for c in ("negatives", "judged")
            ),
        )


def _stacked(column: np.ndarray) -> np.ndarray:
    """A fixed-width list column as one 2-D array (Ray Data may hand it over as an array of arrays)."""
    return np.stack(column) if column.dtype == object else column


def describe_data(cfg: TextTrainConfig, shards: TextShards, rows: pa.Table, val: Judged, table: np.ndarray) -> str:
    """One line: what the run trains on and validates against."""
    side = "token ids" if cfg.tower.passages_read_tokens else "cached vectors"
    negatives = rows.schema.field("negatives").type.list_size if "negatives" in rows.column_names else 0
    return (
        f"text-train: {Path(shards.root).name}: {rows.num_rows:,} (query, positive) rows from "
        f"{shards.rows('train'):,} train queries, {negatives} negatives per row; {len(val):,} dev queries against "
        f"all {shards.passages:,} passages ({side} {table.shape[1]} wide)"
    )
