"""Parameter-free query baselines over context vectors: what any trained tower must beat.

Context arrays are [Q, k, D], left-padded; `lengths` [Q] says how many rows at the right end are real.
"""

from __future__ import annotations

import numpy as np

EXP_ALPHAS = (0.1, 0.3, 0.5, 0.7)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def last(context: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The last context vector."""
    return _unit(context[:, -1])


def mean(context: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of the real (unpadded) context vectors."""
    return exp_weighted(context, lengths, 1.0)


def exp_weighted(context: np.ndarray, lengths: np.ndarray, alpha: float) -> np.ndarray:
    """Weighted mean with weight alpha**d for the vector d steps back from the last (d = 0)."""
    k = context.shape[1]
    back = np.arange(k)[::-1]
    weights = np.where(back[None, :] < np.asarray(lengths)[:, None], float(alpha) ** back[None, :], 0.0)
    return _unit(np.einsum("qk,qkd->qd", weights.astype(np.float32), context))


def baselines(context: np.ndarray, lengths: np.ndarray, alphas: tuple[float, ...] = EXP_ALPHAS) -> dict:
    """Every baseline's queries by name: last, mean, exp0.1, exp0.3, ..."""
    out = {"last": last(context, lengths), "mean": mean(context, lengths)}
    out.update({f"exp{a:g}": exp_weighted(context, lengths, a) for a in alphas})
    return out


def gather_context(bank_vectors: np.ndarray, context_keys: np.ndarray) -> np.ndarray:
    """Context vectors [Q, k, D] for left-padded keys (-1 -> zero vector)."""
    keys = np.asarray(context_keys)
    vecs = bank_vectors[np.clip(keys, 0, None)]
    vecs[keys < 0] = 0.0
    return vecs
