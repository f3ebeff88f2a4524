"""Full-corpus metrics for text retrieval with graded judgments and several positives per query.

Every method hands in, per query, its top-K passage numbers over the whole corpus. Per-query values
(their means are the metrics; `raytt.intervals.paired_bootstrap` compares two methods on them):

- R@k: the share of the query's relevant passages (grade > 0) in the top k;
- MRR@k: 1 / the rank of the first relevant passage within the top k, else 0;
- NDCG@k: sum of grade / log2(rank + 1) over the top k, over the same for the ideal ordering
  (linear gain, as `pytrec_eval`'s `ndcg_cut` that BEIR reports).
"""

from __future__ import annotations

import numpy as np

from raytt.errors import RayttError

METRICS = ("R@1", "R@10", "R@100", "MRR@10", "NDCG@10")


def per_query(top: np.ndarray, judged: list[dict[int, int]], metric: str) -> np.ndarray:
    """Per-query values of `metric` from `top` [Q, K] passage numbers (best first) and each query's grades."""
    name, _, k_text = metric.partition("@")
    k = int(k_text) if k_text.isdigit() else 0
    if name not in ("R", "MRR", "NDCG") or k < 1:
        raise RayttError(f"text metrics: metric must be R@K, MRR@K or NDCG@K, got {metric!r}")
    if top.shape[0] != len(judged):
        raise RayttError(f"text metrics: {top.shape[0]} ranked lists for {len(judged)} judged queries")
    if top.shape[1] < k:
        raise RayttError(f"text metrics: {metric} needs the top {k}, only {top.shape[1]} ranked")
    return np.array([_one(row[:k], grades, name) for row, grades in zip(top, judged)], dtype=np.float64)


def _one(top: np.ndarray, grades: dict[int, int], name: str) -> float:
    relevant = {p for p, g in grades.items() if g > 0}
    if not relevant:
        raise RayttError("text metrics: a judged query has no passage with a grade above 0")
    hits = [int(p) in relevant for p in top]
    if name == "R":
        return sum(hits) / len(relevant)
    if name == "MRR":
        return next((1.0 / (i + 1) for i, hit in enumerate(hits) if hit), 0.0)
    discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
    dcg = sum(grades.get(int(p), 0) * d for p, d in zip(top, discounts))
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[: len(top)]
    return float(dcg / sum(g * d for g, d in zip(ideal, discounts)))


def table(top: np.ndarray, judged: list[dict[int, int]]) -> dict[str, float]:
    """Every metric of METRICS, averaged over the queries."""
    return {m: float(per_query(top, judged, m).mean()) for m in METRICS}
