"""Full-corpus ranking by a text tower: every passage encoded by the passage side, every query by the
query side, exact top-K by inner product; what validation and `raytt text-eval --run` both use."""

from __future__ import annotations

import numpy as np
import torch

from raytt.text.metrics import METRICS, per_query
from raytt.text.step import trimmed
from raytt.text.towers import TextTwoTower

ENCODE_BATCH = 512


@torch.no_grad()
def encode_side(model: TextTwoTower, inputs: np.ndarray | torch.Tensor, side: str, device) -> np.ndarray:
    """Unit vectors [N, D] of `inputs` (token ids or cached vectors) by one side, in batches."""
    model.eval()
    encode = model.queries if side == "query" else model.passages
    out = []
    for start in range(0, len(inputs), ENCODE_BATCH):
        x = torch.as_tensor(
            np.asarray(inputs[start : start + ENCODE_BATCH])
            if not torch.is_tensor(inputs)
            else inputs[start : start + ENCODE_BATCH]
        )
        out.append(encode(trimmed(x.to(device))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def scores(top: np.ndarray, grades: list[dict[int, int]]) -> dict[str, float]:
    """The mean of every text metric over the queries."""
    return {m: float(per_query(top, grades, m).mean()) for m in METRICS}
