"""`raytt text-eval`: full-corpus ranking of one split's queries by the baselines (BM25, the frozen
encoder) and by trained text towers (`--run`, each beside its untrained self), with paired-bootstrap
intervals, written to report.json and printed as a table.

Every judged query is ranked against every passage of the corpus (never a candidate list). The
oracle check of vector runs becomes: every judged passage is a corpus passage (the readers refuse a
set where one is not; the report records the count). FOLDER is a BEIR folder (baselines only) or a
set built by `raytt text-build` (baselines read `raytt text-encode`'s cache when it is there; runs
need a built set).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytt import config
from raytt.corpus.embed import resolve
from raytt.errors import RayttError
from raytt.intervals import describe, paired_bootstrap
from raytt.progress import say
from raytt.storage import write_json
from raytt.text.baselines import bm25_top, dense_top, frozen_top
from raytt.text.beir import read_beir
from raytt.text.compare import write_per_query
from raytt.text.encode import cache_slug, open_encoded
from raytt.text.metrics import METRICS, per_query
from raytt.text.shards import open_text

TOP_K = 100
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvalSet:
    """What every method ranks: passage texts by key, the split's judged queries and their grades by key."""

    passages: list[str]
    queries: list[str]
    grades: list[dict[int, int]]
    rows: list[int]  # the queries' rows in the split file (built sets)
    shards: object = None  # TextShards when FOLDER is a built set


def load_eval_set(folder: str | Path, split: str, max_queries: int, seed: int) -> EvalSet:
    """The split's judged queries (a seeded sample of `max_queries` when set) from a built set or a BEIR folder."""
    if (Path(folder) / "bank" / "manifest.json").is_file():
        shards = open_text(folder)
        table = shards.table(split)
        grades = [dict(zip(k, g)) for k, g in zip(table["positives"].to_pylist(), table["grades"].to_pylist())]
        queries, passages = table["text"].to_pylist(), shards.passage_texts()
    else:
        data, shards = read_beir(folder), None
        if split not in data.qrels or not data.qrels[split]:
            raise RayttError(f"text-eval: no judged queries in split {split!r} (splits here: {sorted(data.qrels)})")
        number = {pid: i for i, pid in enumerate(data.passages)}
        qids = list(data.qrels[split])
        grades = [{number[p]: g for p, g in data.qrels[split][q].items()} for q in qids]
        queries = [data.queries[q] for q in qids]
        passages = [f"{title}\n{text}".strip() for title, text in data.passages.values()]
    rows = [i for i, g in enumerate(grades) if any(v > 0 for v in g.values())]
    if not rows:
        raise RayttError(f"text-eval: no judged queries in split {split!r}")
    if max_queries and len(rows) > max_queries:
        rows = sorted(np.random.default_rng(seed).choice(rows, max_queries, replace=False).tolist())
    return EvalSet(passages, [queries[i] for i in rows], [grades[i] for i in rows], rows, shards)


def frozen_ranking(data: EvalSet, split: str, embedder: str, progress: Progress) -> np.ndarray:
    """The frozen encoder's top-K: from the text-encode cache of a built set when there is one, else encoded now."""
    if data.shards is not None:
        embedder_id = resolve(embedder)[1]
        for folder in sorted((data.shards.root / "encoded").glob(f"{cache_slug(embedder_id)}-*")):
            encoded = open_encoded(folder, data.shards)
            progress(f"text-eval: frozen {embedder_id} from the cache {folder}")
            return dense_top(np.asarray(encoded.passages()), np.asarray(encoded.queries(split))[data.rows], TOP_K)
    return frozen_top(data.passages, data.queries, embedder, TOP_K)


def run_rankings(data: EvalSet, split: str, run: Path, encode_actors: int, progress: Progress) -> dict[str, np.ndarray]:
    """A trained run's top-K (its best/ checkpoint) and its untrained towers' (the same seed, step 0); the corpus
    encoded in-process, or by `encode_actors` Ray Data actors (`encode_cpus` each, from the run's config)."""
    import torch

    from raytt.text.config import TextTrainConfig
    from raytt.text.data import encoded_cache as cache_of
    from raytt.text.data import passage_table, query_inputs
    from raytt.text.ranking import encode_side
    from raytt.text.reencode import corpus_vectors
    from raytt.text.towers import build_text_tower
    from raytt.text.train import load_text_model

    if data.shards is None:
        raise RayttError(
            "text-eval --run needs a set built by raytt text-build (its keys and caches), not a BEIR folder"
        )
    cfg = config.load(TextTrainConfig, run / "config.yaml")
    model, meta = load_text_model(run / "best")
    encoded = cache_of(cfg, data.shards) if cfg.tower.reads_cache else None
    table = passage_table(cfg, data.shards, encoded)
    queries = query_inputs(cfg, data.shards, split, encoded)[data.rows]
    torch.manual_seed(cfg.seed)
    untrained = build_text_tower(cfg.tower, int(meta["dim"])).eval()
    progress(f"text-eval: {run.name}: best/ from step {meta['step']} ({cfg.tower.kind} tower)")
    table_ref = _shared(table, encode_actors * cfg.encode_cpus) if encode_actors else None
    dim = int(meta["dim"])
    return {
        name: dense_top(
            corpus_vectors(tower, cfg.tower, dim, table, table_ref, encode_actors, cfg.encode_cpus),
            encode_side(tower, queries, "query", "cpu"),
            TOP_K,
        )
        for name, tower in ((run.name, model), (f"{run.name}@init", untrained))
    }


def _shared(table: np.ndarray, cpus: int):
    """The passage table in the object store (Ray started when needed), for the encode actors to read."""
    import ray

    from raytt.session import start_ray

    start_ray(cpus)
    return ray.put(np.ascontiguousarray(table))


def evaluate(
    folder: str | Path,
    split: str,
    out: str | Path,
    embedder: str = DEFAULT_EMBEDDER,
    max_queries: int = 0,
    seed: int = 0,
    runs: list[Path] = (),
    encode_actors: int = 0,
    progress: Progress = say,
) -> dict:
    """Rank the split's queries with BM25, the frozen encoder and each run; write OUT/report.json (and each run's
    RUN/eval/SPLIT/report.json); return the report."""
    if encode_actors < 0:
        raise RayttError(f"text-eval: --encode-actors must be >= 0, got {encode_actors}")
    data = load_eval_set(folder, split, max_queries, seed)
    if runs and data.shards is None:
        raise RayttError(
            "text-eval --run needs a set built by raytt text-build (its keys and caches), not a BEIR folder"
        )
    progress(f"text-eval: {folder}: {len(data.queries):,} {split} queries against all {len(data.passages):,} passages")
    tops, seconds = {}, {}
    rankers = {
        "bm25": lambda: {"bm25": bm25_top(data.passages, data.queries, TOP_K)},
        "frozen": lambda: {"frozen": frozen_ranking(data, split, embedder, progress)},
        **{Path(r).name: (lambda r=r: run_rankings(data, split, Path(r), encode_actors, progress)) for r in runs},
    }
    for name, rank in rankers.items():
        started = time.perf_counter()
        tops.update(rank())
        seconds[name] = time.perf_counter() - started
        progress(f"text-eval: {name} ranked in {seconds[name]:.1f}s")
    values = {name: {m: per_query(top, data.grades, m) for m in METRICS} for name, top in tops.items()}
    report = _report(values, data, split, resolve(embedder)[1], seconds, [Path(r).name for r in runs])
    for where in [Path(out), *[Path(r) / "eval" / split for r in runs]]:
        where.mkdir(parents=True, exist_ok=True)
        write_per_query(where, data.rows, values)
        write_json(where / "report.json", report)
    progress(format_report(report))
    return report


def _report(values: dict, data: EvalSet, split: str, embedder: str, seconds: dict, runs: list[str]) -> dict:
    pairs = [(name, "bm25") for name in values if name != "bm25"] + [(run, "frozen") for run in runs]
    judged = sum(len(g) for g in data.grades)
    return {
        "split": split,
        "queries": len(data.grades),
        "passages": len(data.passages),
        "bank_sha256": data.shards.bank_sha256 if data.shards is not None else None,
        "oracle": {"judged_passages": judged, "in_corpus": judged},
        "embedder": embedder,
        "methods": {name: {m: float(v.mean()) for m, v in per.items()} for name, per in values.items()},
        "intervals": {
            f"{a} - {b}": {m: paired_bootstrap(values[a][m], values[b][m]) for m in METRICS} for a, b in pairs
        },
        "seconds": seconds,
    }


def format_report(report: dict) -> str:
    """The report as a table: one row per method, then each paired difference with its 95% interval."""
    width = max(10, *(len(n) + 2 for n in report["methods"]))
    head = f"{'method':<{width}}" + "".join(f"{m:>10}" for m in METRICS)
    rows = [f"{name:<{width}}" + "".join(f"{v[m]:>10.4f}" for m in METRICS) for name, v in report["methods"].items()]
    diffs = [
        f"{pair}: " + ", ".join(f"{m} {describe(*v[m])}" for m in METRICS) for pair, v in report["intervals"].items()
    ]
    return "\n".join(
        [f"{report['split']}: {report['queries']:,} queries, {report['passages']:,} passages", head, *rows, *diffs]
    )
