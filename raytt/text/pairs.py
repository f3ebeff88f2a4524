"""Retrieval sets that are not BEIR folders, turned into one: pairs/triples JSONL and MS MARCO via `datasets`.

A pairs file has one JSON object per line: `query`, `positive` (or a list `positives`), optional
`negatives` and `group`. It carries no splits: each query's group (its text when it has none) draws
one (`raytt.text.debian.split_of`). MS MARCO comes through Hugging Face `datasets` with its own
schema (`query`, `query_id`, `passages: {is_selected, passage_text}`): the selected passages are the
positives, the rest of its candidates given negatives.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from raytt.errors import RayttError
from raytt.text.beir import BeirSet, jsonl_rows
from raytt.text.debian import split_of

MSMARCO = "microsoft/ms_marco"


class _Builder:
    """Passages deduplicated by text, queries numbered as they come."""

    def __init__(self) -> None:
        self.data = BeirSet()
        self.passage_of: dict[str, str] = {}

    def passage(self, text: str) -> str:
        if text not in self.passage_of:
            pid = f"p{len(self.passage_of)}"
            self.passage_of[text] = pid
            self.data.passages[pid] = ("", text)
        return self.passage_of[text]

    def query(self, text: str, positives: list[str], negatives: list[str], group: str, split: str) -> None:
        qid = f"q{len(self.data.queries)}"
        self.data.queries[qid] = text
        self.data.groups[qid] = group
        self.data.qrels.setdefault(split, {})[qid] = {self.passage(p): 1 for p in positives}
        if negatives:
            self.data.negatives[qid] = [self.passage(n) for n in negatives]


def read_pairs(path: str | Path) -> BeirSet:
    """A pairs/triples JSONL file as a retrieval set, split by group; bad lines refused by file and line."""
    out = _Builder()
    for where, row in jsonl_rows(Path(path)):
        query = row.get("query")
        positives = row.get("positives", [row["positive"]] if "positive" in row else [])
        negatives = row.get("negatives", [])
        if not isinstance(query, str) or not query.strip():
            raise RayttError(f"{where}: 'query' is missing or empty")
        if not isinstance(positives, list) or not positives or not all(_text(p) for p in positives):
            raise RayttError(f"{where}: needs 'positive' (a text) or 'positives' (a list of texts)")
        if not isinstance(negatives, list) or not all(_text(n) for n in negatives):
            raise RayttError(f"{where}: 'negatives' must be a list of texts")
        group = str(row.get("group") or query)
        out.query(query, positives, negatives, group, split_of(group))
    if not out.data.queries:
        raise RayttError(f"{path}: no pairs")
    return out.data


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def from_msmarco(rows: Iterable[dict], split: str, limit: int = 0, out: _Builder | None = None) -> BeirSet:
    """MS MARCO rows (the `datasets` schema) as a retrieval set of one split; queries without a selected passage
    are left out, as MS MARCO's own evaluation does. `split` "dev+test" halves the rows between dev and test
    by query id; `out` adds them to a set being built."""
    out = out or _Builder()
    start = len(out.data.queries)
    for row in rows:
        passages = row["passages"]
        chosen = [t for t, s in zip(passages["passage_text"], passages["is_selected"]) if s]
        if not chosen:
            continue
        others = [t for t, s in zip(passages["passage_text"], passages["is_selected"]) if not s]
        group = str(row["query_id"])
        out.query(
            row["query"], chosen, others, group, split_of(group, (0.0, 0.5, 0.5)) if split == "dev+test" else split
        )
        if limit and len(out.data.queries) - start >= limit:
            break
    return out.data


def msmarco_set(source: str = MSMARCO, config: str = "v1.1", limit: int = 0) -> BeirSet:
    """MS MARCO as one retrieval set: its train split for training, its validation split halved (by query id)
    into dev and test (the official test split has no judgments)."""
    out = _Builder()
    load_msmarco(source, config, "train", limit, out)
    load_msmarco(source, config, "validation", limit, out)
    return out.data


def load_msmarco(
    source: str = MSMARCO, config: str = "v1.1", split: str = "train", limit: int = 0, out: _Builder | None = None
) -> BeirSet:
    """MS MARCO through `datasets.load_dataset`: the hub's dataset by default, or a local folder of its files;
    the validation split becomes dev and test halves."""
    import datasets

    try:
        rows = datasets.load_dataset(source, config or None, split=split, streaming=bool(limit))
    except Exception as exc:
        raise RayttError(f"msmarco: cannot load {source!r} ({config}, {split}): {exc}") from exc
    names = set(rows.features) if rows.features else set()
    if names and not {"query", "query_id", "passages"} <= names:
        raise RayttError(f"msmarco: {source!r} has columns {sorted(names)}, not MS MARCO's query/query_id/passages")
    return from_msmarco(rows, "dev+test" if split == "validation" else split, limit, out)
