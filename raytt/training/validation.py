"""Full-bank validation each epoch: the val split ranked against the whole bank, scored by evaluation's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytt.evaluation import in_batch_accuracy, metrics
from raytt.retrieval import scan
from raytt.towers import TwoTower, index_vectors, query_vectors


@dataclass(frozen=True)
class ValSet:
    """The val queries: context keys [Q, k], lengths [Q], target keys [Q]."""

    context: np.ndarray
    lengths: np.ndarray
    target: np.ndarray


def validate(model: TwoTower, bank: np.ndarray, val: ValSet, batch_size: int, device) -> dict[str, float]:
    """`val/...` metrics of both views (all candidates; context excluded) and the in-batch accuracy beside them.

    The queries go through `query_vectors`, the function evaluation uses, so validation and `raytt eval` agree.
    """
    queries = query_vectors(model, bank, val.context, val.lengths, device=device)
    index = index_vectors(model, bank, device=device)
    result = scan(queries, val.target, index, context=val.context)
    out = {f"val/{k}": v for k, v in metrics(result.ranks).items()}
    out.update({f"val/excl/{k}": v for k, v in metrics(result.ranks_excl).items()})
    out["val/in_batch_acc"] = in_batch_accuracy(queries, index[val.target], val.target, batch_size)
    return out
