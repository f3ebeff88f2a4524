"""BEIR folders, the field's standard layout for retrieval sets: read with every line checked, written atomically.

A folder holds `corpus.jsonl` ({_id, title, text}), `queries.jsonl` ({_id, text}, here with an optional
`group`: queries of one group never straddle splits) and `qrels/{train,dev,test}.tsv` (a
`query-id corpus-id score` header, then graded scores; several positives per query allowed), and
here optionally `negatives.jsonl` ({query-id, corpus-ids}: negatives the data gives, as MS MARCO's
unselected passages or a triples file's). A bad line is refused by file and line number before
anything is built from the folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raytt.errors import RayttError
from raytt.storage import atomic_dir

SPLITS = ("train", "dev", "test")
QRELS_HEADER = "query-id\tcorpus-id\tscore"


@dataclass
class BeirSet:
    """A retrieval set in memory: passages and queries by id, graded judgments per split."""

    passages: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (title, text)
    queries: dict[str, str] = field(default_factory=dict)  # id -> text
    groups: dict[str, str] = field(default_factory=dict)  # query id -> group (absent: its own)
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # split -> query -> passage -> score
    negatives: dict[str, list[str]] = field(default_factory=dict)  # query id -> given negative passage ids

    def describe(self) -> str:
        judged = ", ".join(
            f"{split} {len(q):,} queries / {sum(map(len, q.values())):,} qrels" for split, q in self.qrels.items()
        )
        return f"{len(self.passages):,} passages, {len(self.queries):,} queries; {judged}"


def read_beir(folder: str | Path) -> BeirSet:
    """Read and check a BEIR folder: ids unique, texts non-empty, every judgment naming a known query and passage."""
    root = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise RayttError(f"{root / name}: missing; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/")
    out = BeirSet()
    for where, row in jsonl_rows(root / "corpus.jsonl"):
        pid, text = _field(row, "_id", where), _field(row, "text", where)
        if pid in out.passages:
            raise RayttError(f"{where}: passage id {pid!r} appears twice")
        out.passages[pid] = (str(row.get("title") or ""), text)
    for where, row in jsonl_rows(root / "queries.jsonl"):
        qid = _field(row, "_id", where)
        if qid in out.queries:
            raise RayttError(f"{where}: query id {qid!r} appears twice")
        out.queries[qid] = _field(row, "text", where)
        if row.get("group") is not None:
            out.groups[qid] = str(row["group"])
    for split in SPLITS:
        path = root / "qrels" / f"{split}.tsv"
        if path.is_file():
            out.qrels[split] = _qrels(path, out)
    if not out.qrels:
        raise RayttError(f"{root / 'qrels'}: no train.tsv, dev.tsv or test.tsv")
    if (root / "negatives.jsonl").is_file():
        out.negatives = _negatives(root / "negatives.jsonl", out)
    return out


def _negatives(path: Path, known: BeirSet) -> dict[str, list[str]]:
    given: dict[str, list[str]] = {}
    for where, row in jsonl_rows(path):
        qid, pids = _field(row, "query-id", where), row.get("corpus-ids")
        if qid not in known.queries:
            raise RayttError(f"{where}: query {qid!r} is not in queries.jsonl")
        if not isinstance(pids, list) or not all(str(p) in known.passages for p in pids):
            raise RayttError(f"{where}: 'corpus-ids' must list passages of corpus.jsonl")
        given[qid] = [str(p) for p in pids]
    return given


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RayttError(f"{where}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise RayttError(f"{where}: not a JSON object")
            yield where, row


def _field(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if value is None or not str(value).strip():
        raise RayttError(f"{where}: {key!r} is missing or empty")
    return str(value)


def _qrels(path: Path, known: BeirSet) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            where, cells = f"{path}:{number}", line.rstrip("\n").split("\t")
            if number == 1 and line.lower().startswith("query-id"):
                continue
            if not line.strip():
                continue
            if len(cells) != 3:
                raise RayttError(f"{where}: expected query-id, corpus-id and score separated by tabs")
            qid, pid, score = cells
            if qid not in known.queries:
                raise RayttError(f"{where}: query {qid!r} is not in queries.jsonl")
            if pid not in known.passages:
                raise RayttError(f"{where}: passage {pid!r} is not in corpus.jsonl")
            try:
                judged.setdefault(qid, {})[pid] = int(score)
            except ValueError:
                raise RayttError(f"{where}: score {score!r} is not an integer") from None
    return judged


def write_beir(out: str | Path, data: BeirSet, overwrite: bool = False) -> Path:
    """Write `data` as a BEIR folder: into a temporary sibling, renamed into place when complete."""
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "qrels").mkdir()
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for pid, (title, text) in data.passages.items():
                f.write(json.dumps({"_id": pid, "title": title, "text": text}, ensure_ascii=False) + "\n")
        with (tmp / "queries.jsonl").open("w", encoding="utf-8") as f:
            for qid, text in data.queries.items():
                row = {"_id": qid, "text": text, **({"group": data.groups[qid]} if qid in data.groups else {})}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if data.negatives:
            with (tmp / "negatives.jsonl").open("w", encoding="utf-8") as f:
                for qid, pids in data.negatives.items():
                    f.write(json.dumps({"query-id": qid, "corpus-ids": pids}) + "\n")
        for split, judged in data.qrels.items():
            rows = [f"{q}\t{p}\t{s}" for q, ps in judged.items() for p, s in ps.items()]
            (tmp / "qrels" / f"{split}.tsv").write_text("\n".join([QRELS_HEADER, *rows]) + "\n", encoding="utf-8")
    return Path(out)
