"""`raytt text-eval`: full-corpus ranking of one split's queries of a BEIR folder by the baselines,
with paired-bootstrap intervals, written to OUT/report.json and printed as a table.

Every judged query is ranked against every passage of the corpus (never a candidate list). The
oracle check of vector runs becomes: every judged passage is a corpus passage (the reader refuses a
folder where one is not; the report records the count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raytt.corpus.embed import resolve
from raytt.errors import RayttError
from raytt.intervals import describe, paired_bootstrap
from raytt.progress import say
from raytt.storage import write_json
from raytt.text.baselines import bm25_top, frozen_top
from raytt.text.beir import BeirSet, read_beir
from raytt.text.metrics import METRICS, per_query

TOP_K = 100
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def judged_queries(data: BeirSet, split: str, max_queries: int, seed: int) -> tuple[list[str], list[dict[int, int]]]:
    """The split's judged query ids (a seeded sample when `max_queries`) and their grades by passage number."""
    if split not in data.qrels or not data.qrels[split]:
        raise RayttError(f"text-eval: no judged queries in split {split!r} (splits here: {sorted(data.qrels)})")
    number = {pid: i for i, pid in enumerate(data.passages)}
    qids = sorted(q for q, grades in data.qrels[split].items() if any(g > 0 for g in grades.values()))
    if max_queries and len(qids) > max_queries:
        pick = np.random.default_rng(seed).choice(len(qids), max_queries, replace=False)
        qids = [qids[i] for i in sorted(pick)]
    return qids, [{number[p]: g for p, g in data.qrels[split][q].items()} for q in qids]


def evaluate_baselines(
    folder: str | Path,
    split: str,
    out: str | Path,
    embedder: str = DEFAULT_EMBEDDER,
    max_queries: int = 0,
    seed: int = 0,
    progress: Callable[[str], None] = say,
) -> dict:
    """Rank the split's queries with BM25 and the frozen encoder; write and return the report."""
    data = read_beir(folder)
    qids, judged = judged_queries(data, split, max_queries, seed)
    passages = [f"{title}\n{text}".strip() for title, text in data.passages.values()]
    queries = [data.queries[q] for q in qids]
    progress(f"text-eval: {folder}: {len(qids):,} {split} queries against all {len(passages):,} passages")
    tops, seconds = {}, {}
    for name, rank in (
        ("bm25", lambda: bm25_top(passages, queries, TOP_K)),
        ("frozen", lambda: frozen_top(passages, queries, embedder, TOP_K)),
    ):
        started = time.perf_counter()
        tops[name] = rank()
        seconds[name] = time.perf_counter() - started
        progress(f"text-eval: {name} ranked in {seconds[name]:.1f}s")
    report = _report(tops, judged, split, len(passages), resolve(embedder)[1], seconds)
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "report.json", report)
    progress(format_report(report))
    return report


def _report(tops: dict, judged: list[dict[int, int]], split: str, passages: int, embedder: str, seconds: dict) -> dict:
    values = {name: {m: per_query(top, judged, m) for m in METRICS} for name, top in tops.items()}
    first, *others = list(tops)
    return {
        "split": split,
        "queries": len(judged),
        "passages": passages,
        "oracle": {"judged_passages": sum(len(j) for j in judged), "in_corpus": sum(len(j) for j in judged)},
        "embedder": embedder,
        "methods": {name: {m: float(v.mean()) for m, v in per.items()} for name, per in values.items()},
        "intervals": {
            f"{other} - {first}": {m: paired_bootstrap(values[other][m], values[first][m]) for m in METRICS}
            for other in others
        },
        "seconds": seconds,
    }


def format_report(report: dict) -> str:
    """The report as a table: one row per method, then each paired difference with its 95% interval."""
    head = f"{'method':<10}" + "".join(f"{m:>10}" for m in METRICS)
    rows = [f"{name:<10}" + "".join(f"{v[m]:>10.4f}" for m in METRICS) for name, v in report["methods"].items()]
    diffs = [
        f"{pair}: " + ", ".join(f"{m} {describe(*v[m])}" for m in METRICS) for pair, v in report["intervals"].items()
    ]
    return "\n".join(
        [f"{report['split']}: {report['queries']:,} queries, {report['passages']:,} passages", head, *rows, *diffs]
    )
