"""Evaluation that cannot lie: full-bank retrieval of held-out articles, next to every baseline.

Every report ranks each query's truth against the whole bank (`retrieval.scan`), in two views (all
candidates, and context chunks removed), for the model and, on the same queries, the heuristic
baselines and (on synthetic banks) the generator's oracle predictor. Before any of it, the oracle
check ranks the truth vectors themselves: anything short of Recall@1 = 100% (up to exact duplicates)
means the eval targets are not this bank's vectors, and the evaluation stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytt.bank import Bank, load_bank
from raytt.devices import resolve_device
from raytt.errors import RayttError
from raytt.heuristics import EXP_ALPHAS, baselines
from raytt.progress import say
from raytt.retrieval import Scan, mrr_at, ndcg_at, recall_at, scan
from raytt.sequences import ShardSet, bank_of, open_shards

KS = (1, 5, 10, 50, 100, 500, 1000)
HIST_BINS = ((1, 1), (2, 5), (6, 10), (11, 50), (51, 100), (101, 500), (501, 1000), (1001, None))
VIEWS = ("all", "context_excluded")
SELF_COS_MIN = 0.999

Progress = Callable[[str], None]


class EvalError(RayttError):
    """The evaluation cannot be trusted (its targets are not the searched bank's vectors)."""


@dataclass
class Queries:
    """Eval rows of one split: left-padded context keys, their lengths, the target keys."""

    context: np.ndarray  # [Q, k] int64, -1 = padding
    lengths: np.ndarray  # [Q] int64
    target: np.ndarray  # [Q] int64

    def __len__(self) -> int:
        return len(self.target)


def load_queries(shards: ShardSet, split: str, max_queries: int = 0, seed: int = 0) -> Queries:
    """Rows of `split`, or a fixed random subset of `max_queries` of them (0 = all)."""
    table = shards.read(split)
    if table.num_rows == 0:
        raise RayttError(f"{shards.path}: split {split!r} has no rows to evaluate")
    if 0 < max_queries < table.num_rows:
        pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, max_queries, replace=False))
        table = table.take(pick)
    ctx = np.stack(table.column("context_keys").to_numpy(zero_copy_only=False)).astype(np.int64)
    return Queries(
        ctx,
        table.column("context_len").to_numpy().astype(np.int64),
        table.column("target_key").to_numpy().astype(np.int64),
    )


def metrics(ranks: np.ndarray) -> dict[str, float]:
    """Recall@K for every K, MRR@10, NDCG@10, median and mean rank of the truth."""
    out = {f"R@{k}": recall_at(ranks, k) for k in KS}
    out.update(
        {
            "MRR@10": mrr_at(ranks, 10),
            "NDCG@10": ndcg_at(ranks, 10),
            "median_rank": float(np.median(ranks)),
            "mean_rank": float(np.mean(ranks)),
        }
    )
    return out


def histogram(ranks: np.ndarray) -> dict[str, int]:
    """Queries per rank bucket (1, 2-5, 6-10, ..., >1000)."""
    out = {}
    for lo, hi in HIST_BINS:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi else f">{lo - 1}")
        out[label] = int(((ranks >= lo) & (ranks <= (hi or np.inf))).sum())
    return out


def _percentiles(x: np.ndarray) -> dict[str, float]:
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {"mean": float(x.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}


def diagnostics(result: Scan, queries: Queries, article_codes: np.ndarray) -> dict:
    """cos(query, truth) vs cos(query, top impostor), the margin, and where the top impostors come from."""
    impostor = result.impostor_key
    margin = result.truth_score - result.impostor_score
    in_context = (queries.context == impostor[:, None]).any(1)
    same_article = ~in_context & (article_codes[impostor] == article_codes[queries.target])
    return {
        "cos_truth": _percentiles(result.truth_score),
        "cos_top_impostor": _percentiles(result.impostor_score),
        "margin_mean": float(margin.mean()),
        "positive_margin_share": float((margin > 0).mean()),
        "top_impostor_from": {
            "context_chunk": float(in_context.mean()),
            "same_article": float(same_article.mean()),
            "other_article": float((~in_context & ~same_article).mean()),
        },
    }


def in_batch_accuracy(
    queries: np.ndarray, positives: np.ndarray, target: np.ndarray, batch: int, seed: int = 0
) -> float:
    """Share of queries whose positive beats every other positive of a random batch: what training sees.

    Scored by the training loop's own `losses.in_batch_accuracy`, on equal-sized random batches.
    """
    import torch

    from raytt.losses.objective import Batch
    from raytt.losses.objective import in_batch_accuracy as batch_accuracy

    order = np.random.default_rng(seed).permutation(len(target))
    accuracies = []
    for s in range(0, len(order) - batch + 1, batch):
        i = order[s : s + batch]
        q, p, t = torch.as_tensor(queries[i]), torch.as_tensor(positives[i]), torch.as_tensor(target[i])
        accuracies.append(batch_accuracy(Batch(q, p, t, p, t, 0)))
    return float(np.mean(accuracies)) if accuracies else float("nan")


def oracle_check(shards: ShardSet, queries: Queries, index_bank: Bank, progress: Progress = say) -> dict:
    """Rank the truth vectors themselves against the searched bank; anything but a hit is an error.

    The truth vectors come from the bank the shards were built from; the index is the bank being
    searched. A truth may lose rank 1 only to an exact duplicate of itself (reported).
    """
    source = bank_of(shards)
    truth_bank = index_bank if source.resolve() == Path(index_bank.path).resolve() else load_bank(source)
    if truth_bank.dim != index_bank.dim or int(queries.target.max()) >= index_bank.num_vectors:
        raise EvalError(
            f"eval targets are not this bank's vectors: shards built from {source} "
            f"({truth_bank.num_vectors:,} x {truth_bank.dim}) cannot be looked up in {index_bank.path} "
            f"({index_bank.num_vectors:,} x {index_bank.dim})"
        )
    truth_vecs = truth_bank.vectors[queries.target]
    result = scan(truth_vecs, queries.target, index_bank.vectors)
    self_cos = result.truth_score
    mismatched = self_cos < SELF_COS_MIN
    duplicates = (result.ranks > 1) & ~mismatched
    hits = (result.ranks == 1) | duplicates
    report = {
        "queries": len(queries),
        "recall@1": float(hits.mean()),
        "exact_duplicates": int(duplicates.sum()),
        "mean_cos_truth_to_bank_row": float(self_cos.mean()),
    }
    if mismatched.any():
        raise EvalError(
            f"eval targets are not this bank's vectors: {mismatched.mean():.1%} of the {len(queries):,} truth "
            f"vectors from {source} differ from the rows at their keys in {index_bank.path} (mean cosine "
            f"{self_cos.mean():.3f}, bar {SELF_COS_MIN}); sha256 {truth_bank.manifest.sha256[:12]} vs "
            f"{index_bank.manifest.sha256[:12]}. Rebuild the shards from this bank."
        )
    progress(
        f"eval: oracle check passed: truth vectors as queries give Recall@1 = {report['recall@1']:.1%} "
        f"({report['exact_duplicates']} lost only to exact duplicates)"
    )
    return report


def rank_methods(
    methods: dict[str, np.ndarray],
    queries: Queries,
    index: np.ndarray,
    article_codes: np.ndarray,
    device: str | None = None,
    progress: Progress = say,
    indexes: dict[str, np.ndarray] | None = None,
) -> dict:
    """Both views, histogram, diagnostics and per-query ranks (both views) for every method's query vectors.

    Each method searches `index` (the bank) unless `indexes` gives it its own: a trained doc tower's
    index is the model's alone, the heuristics always search the bank itself."""
    out = {"views": {v: {} for v in VIEWS}, "histogram": {}, "diagnostics": {}, "ranks": {}, "ranks_excl": {}}
    for name, vectors in methods.items():
        searched = (indexes or {}).get(name, index)
        result = scan(vectors, queries.target, searched, context=queries.context, device=device)
        out["views"]["all"][name] = metrics(result.ranks)
        out["views"]["context_excluded"][name] = metrics(result.ranks_excl)
        out["histogram"][name] = histogram(result.ranks)
        out["diagnostics"][name] = diagnostics(result, queries, article_codes)
        out["ranks"][name] = result.ranks
        out["ranks_excl"][name] = result.ranks_excl
        progress(
            f"eval: {name:<8} R@10 {out['views']['all'][name]['R@10']:.3f}  "
            f"MRR@10 {out['views']['all'][name]['MRR@10']:.3f}  "
            f"(context excluded R@10 {out['views']['context_excluded'][name]['R@10']:.3f})"
        )
    return out


def baseline_queries(bank: Bank, queries: Queries, oracle: bool = True) -> dict[str, np.ndarray]:
    """Query vectors of every heuristic baseline and, on a synthetic bank, the oracle predictor."""
    methods = baselines(bank.vectors, queries.context, queries.lengths, EXP_ALPHAS)
    if oracle and (Path(bank.path) / "synth" / "oracle_latent.npy").is_file():
        from raytt.synthetic import OraclePredictor

        methods["oracle"] = OraclePredictor(bank.path).predict(queries.target)
    return methods


@dataclass
class Model:
    """A trained model and where it came from, for the report."""

    run: Path
    checkpoint: Path
    batch_size: int


def evaluate(
    shards_path: str | Path,
    split: str = "test",
    model: Model | None = None,
    bank_path: str | Path | None = None,
    max_queries: int = 0,
    device: str | None = None,
    progress: Progress = say,
) -> dict:
    """The full evaluation of one split: oracle check, model and baselines in both views, diagnostics."""
    from raytt.towers import index_vectors, query_vectors

    device = resolve_device(device)
    shards = open_shards(shards_path)
    bank = load_bank(bank_path or bank_of(shards))
    net = _load_net(model, bank, device) if model is not None else None
    queries = load_queries(shards, split, max_queries)
    progress(
        f"eval: {len(queries):,} {split} queries against the full bank of {bank.num_vectors:,} x {bank.dim} on {device}"
    )
    check = oracle_check(shards, queries, bank, progress)
    methods, indexes = {}, {}
    if net is not None:
        indexes["model"] = index = index_vectors(net, bank.vectors, device=device)
        methods["model"] = query_vectors(net, bank.vectors, queries.context, queries.lengths, device=device)
    methods.update(baseline_queries(bank, queries))
    ranked = rank_methods(methods, queries, bank.vectors, bank.article_codes, device, progress, indexes)
    batch = model.batch_size if model else 256
    report = {
        "split": split,
        "queries": len(queries),
        "context_len": int(queries.context.shape[1]),
        "bank": _bank_summary(bank),
        "shards": str(shards.path),
        "oracle_check": check,
        "run": str(model.run) if model else None,
        "checkpoint": str(model.checkpoint) if model else None,
        "views": ranked["views"],
        "histogram": ranked["histogram"],
        "diagnostics": ranked["diagnostics"],
        "in_batch": {
            name: {
                "batch": batch,
                "in_batch_accuracy": in_batch_accuracy(
                    q, indexes.get(name, bank.vectors)[queries.target], queries.target, batch
                ),
                "full_bank_R@1": ranked["views"]["all"][name]["R@1"],
            }
            for name, q in methods.items()
        },
    }
    if model is not None and split != "val" and shards.rows("val"):
        report["val_test_gap"] = _val_gap(shards, bank, net, index, report, max_queries, device)
    # per-query arrays for ranks.parquet (popped by `report.write`, never in report.json)
    report.update(ranks=ranked["ranks"], ranks_excl=ranked["ranks_excl"], target_key=queries.target)
    return report


def _load_net(model: Model, bank: Bank, device: str):
    """The model's tower, once its checkpoint is known to read this bank's embedder."""
    from raytt.checkpoints import check_embedder, load_model

    net, meta = load_model(model.checkpoint, device)
    check_embedder(meta, bank.manifest.embedder_id, f"eval {model.checkpoint}")
    return net


def _bank_summary(bank: Bank) -> dict:
    """Which bank a report searched: path, size, content hash, encoder."""
    m = bank.manifest
    return {
        "path": str(bank.path),
        "num_vectors": bank.num_vectors,
        "dim": bank.dim,
        "sha256": m.sha256,
        "embedder_id": m.embedder_id,
    }


def _val_gap(
    shards: ShardSet, bank: Bank, net, index: np.ndarray, report: dict, max_queries: int, device: str | None
) -> dict:
    """Model R@10 on val vs the evaluated split: a large gap means the split (or the checkpoint pick) differs."""
    from raytt.towers import query_vectors

    val = load_queries(shards, "val", max_queries)
    ranks = scan(
        query_vectors(net, bank.vectors, val.context, val.lengths, device=device), val.target, index, device=device
    ).ranks
    here = report["views"]["all"]["model"]["R@10"]
    return {"val_R@10": recall_at(ranks, 10), f"{report['split']}_R@10": here, "gap": recall_at(ranks, 10) - here}


def sampled_report(
    bank_dir: str | Path, num_queries: int = 2000, context_len: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Full-bank metrics of the baselines and the oracle on windows sampled from a synthetic bank (no shards)."""
    from raytt.retrieval import truth_ranks
    from raytt.sequences import sample_windows
    from raytt.synthetic import OraclePredictor

    bank = load_bank(bank_dir)
    ctx, lengths, target = sample_windows(bank, context_len, num_queries, seed)
    queries = baselines(bank.vectors, ctx, lengths, alphas=(0.5,))
    queries["oracle"] = OraclePredictor(bank_dir).predict(target)
    table = {}
    for name, q in queries.items():
        ranks = truth_ranks(q, target, bank.vectors)
        excl = truth_ranks(q, target, bank.vectors, exclude=ctx)
        table[name] = {
            "R@1": recall_at(ranks, 1),
            "R@10": recall_at(ranks, 10),
            "R@100": recall_at(ranks, 100),
            "MRR@10": mrr_at(ranks, 10),
            "R@10 ctx-excl": recall_at(excl, 10),
        }
    return table
