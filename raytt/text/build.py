"""`raytt text-build`: a BEIR folder becomes a passage bank and query shards, behind the same gates as vectors.

The passage bank gives every passage a dense key (0..N-1, corpus order) and records a sha256 over
its texts; the query shards hold each split's queries with their group, positive keys and grades,
and any given negatives as keys, and record the bank's sha256 (training on another bank is refused).
Gates, each refused before anything is written: a group or query id in two splits (near-duplicates
straddling splits leak), and too little training data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytt.errors import RayttError
from raytt.progress import say
from raytt.storage import atomic_dir, write_json
from raytt.text.beir import SPLITS, BeirSet, read_beir

MIN_TRAIN_QUERIES = 1000


@dataclass(frozen=True)
class TextBuildConfig:
    min_train_queries: int = MIN_TRAIN_QUERIES  # refuse to build with fewer judged training queries

    def __post_init__(self) -> None:
        if self.min_train_queries < 0:
            raise RayttError(f"text-build: --min-train-queries must be >= 0, got {self.min_train_queries}")


def text_sha256(data: BeirSet) -> str:
    """sha256 over the passages' titles and texts in key order (what a trained passage side was fitted to)."""
    digest = hashlib.sha256()
    for title, text in data.passages.values():
        digest.update(f"{title}\t{text}\n".encode())
    return digest.hexdigest()


def check_splits(data: BeirSet, where: str) -> None:
    """Refuse a query id or a group that is judged in more than one split."""
    seen: dict[str, str] = {}
    for split, judged in data.qrels.items():
        for qid in judged:
            for key in (f"query {qid!r}", f"group {data.groups.get(qid, qid)!r}"):
                if seen.setdefault(key, split) != split:
                    raise RayttError(
                        f"{where}: {key} is judged in both {seen[key]} and {split}: near-duplicates would leak "
                        "across splits; keep a group's queries in one split"
                    )


def build_text(
    folder: str | Path,
    out: str | Path,
    cfg: TextBuildConfig = TextBuildConfig(),
    overwrite: bool = False,
    progress: Callable[[str], None] = say,
) -> dict:
    """Check the folder, then write OUT/bank (passages) and OUT/queries (one Parquet file per split); returns
    the queries' manifest."""
    data = read_beir(folder)
    check_splits(data, str(folder))
    train = len(data.qrels.get("train", {}))
    if train < cfg.min_train_queries:
        raise RayttError(
            f"{folder}: too little data: {train} judged training queries (fewer than min_train_queries="
            f"{cfg.min_train_queries}); lower --min-train-queries only for a smoke test"
        )
    key = {pid: i for i, pid in enumerate(data.passages)}
    sha = text_sha256(data)
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "bank").mkdir()
        pq.write_table(_passages(data), tmp / "bank" / "passages.parquet")
        write_json(tmp / "bank" / "manifest.json", {"kind": "text", "passages": len(key), "sha256": sha})
        (tmp / "queries").mkdir()
        splits = {}
        for split in SPLITS:
            if split in data.qrels:
                table = _queries(data, split, key)
                pq.write_table(table, tmp / "queries" / f"{split}.parquet")
                splits[split] = {"queries": table.num_rows, "file": f"{split}.parquet"}
        manifest = {"kind": "text", "bank_sha256": sha, "source": str(Path(folder).resolve()), "splits": splits}
        write_json(tmp / "queries" / "manifest.json", manifest)
    progress(
        f"text-build: {out}: {len(key):,} passages; "
        + ", ".join(f"{s} {v['queries']:,} queries" for s, v in splits.items())
    )
    return manifest


def _passages(data: BeirSet) -> pa.Table:
    titles, texts = zip(*data.passages.values()) if data.passages else ((), ())
    return pa.table(
        {
            "key": pa.array(range(len(data.passages)), pa.int64()),
            "passage_id": list(data.passages),
            "title": list(titles),
            "text": list(texts),
        }
    )


def _queries(data: BeirSet, split: str, key: dict[str, int]) -> pa.Table:
    judged = data.qrels[split]
    qids = list(judged)
    return pa.table(
        {
            "query_id": qids,
            "text": [data.queries[q] for q in qids],
            "group": [data.groups.get(q, q) for q in qids],
            "positives": pa.array([[key[p] for p in judged[q]] for q in qids], pa.list_(pa.int64())),
            "grades": pa.array([list(judged[q].values()) for q in qids], pa.list_(pa.int32())),
            "negatives": pa.array([[key[p] for p in data.negatives.get(q, [])] for q in qids], pa.list_(pa.int64())),
        }
    )
