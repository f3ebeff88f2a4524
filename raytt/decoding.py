"""Dual-path decoding: a next-vector generator whose every step snaps to a real bank vector, blends, or stays novel.

Each step the query tower predicts the next vector from the last k and the nearest bank chunk is retrieved.
With c the cosine between prediction and that chunk, the step SNAPs (takes the bank vector) when c >= snap,
stays NOVEL (keeps the prediction) when c <= novel, and BLENDs in between: the unit vector of
alpha * bank + (1 - alpha) * prediction. Thresholds and alpha are per lane (a bank column such as a source or
category); a failed retrieval (no key came back) falls back to NOVEL. The chosen vector joins the context.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raytt.config import doc
from raytt.errors import ConfigError

SNAP, BLEND, NOVEL = 0, 1, 2
DECISIONS = ("snap", "blend", "novel")
DEFAULT_LANE = "default"
TOP = 10

Encode = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (context [B, k, D], lengths [B]) -> unit queries [B, D]
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (scores, keys) [B, k]


@dataclass
class Lane:
    """One lane's thresholds: SNAP at cosine >= snap, NOVEL at <= novel, BLEND with weight alpha between."""

    snap: float = field(default=0.92, metadata=doc("SNAP to the nearest bank vector at cosine >= snap"))
    novel: float = field(default=0.85, metadata=doc("stay NOVEL (keep the prediction) at cosine <= novel"))
    alpha: float = field(default=0.5, metadata=doc("BLEND weight of the bank vector (1 - alpha: the prediction)"))

    def __post_init__(self) -> None:
        if not -1.0 <= self.novel <= self.snap <= 1.0:
            raise ValueError(f"decode: need -1 <= novel <= snap <= 1, got novel {self.novel}, snap {self.snap}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"decode: alpha must be in [0, 1], got {self.alpha}")


@dataclass
class DecodeConfig(Lane):
    """The default lane's thresholds, where lanes come from, and the lanes that differ (e.g. legal: snap 0.94)."""

    lane_column: str = field(
        default="", metadata=doc("bank column naming each chunk's lane (article_id, or a column of your own)")
    )
    lane_pattern: str = field(
        default="", metadata=doc("regular expression on lane_column whose first group is the lane (default: whole)")
    )
    lanes: dict[str, Lane] = field(
        default_factory=dict, metadata=doc("per-lane thresholds: NAME: {snap, novel, alpha}")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lanes and not self.lane_column:
            raise ValueError("decode: lanes need decode.lane_column (the bank column that names each chunk's lane)")
        if self.lane_pattern:
            try:
                if re.compile(self.lane_pattern).groups < 1:
                    raise ValueError(f"decode.lane_pattern {self.lane_pattern!r} needs one group: the lane")
            except re.error as exc:
                raise ValueError(f"decode.lane_pattern {self.lane_pattern!r}: {exc}") from None

    def lane(self, name: str) -> Lane:
        return self.lanes.get(name, Lane(self.snap, self.novel, self.alpha))


def lane_names(cfg: DecodeConfig, values: list[str] | None) -> list[str]:
    """Each value's lane (the pattern's first group, or the value); one default lane without a lane column.
    A lane configured in `cfg.lanes` that no value names is refused (a typo would silently use the defaults)."""
    if not cfg.lane_column or values is None:
        return [DEFAULT_LANE] * (len(values) if values is not None else 0)
    pattern = re.compile(cfg.lane_pattern) if cfg.lane_pattern else None
    names = []
    for value in values:
        match = pattern.search(str(value)) if pattern else None
        names.append(match.group(1) if match else (DEFAULT_LANE if pattern else str(value)))
    unknown = sorted(set(cfg.lanes) - set(names))
    if unknown:
        raise ConfigError(
            f"decode.lanes: unknown lane(s) {unknown}: no chunk's {cfg.lane_column!r} names them "
            f"(lanes seen: {sorted(set(names))[:10]})"
        )
    return names


@dataclass
class Step:
    """One decoding step of a batch: the chosen vectors, each row's decision, the retrieved top keys and the
    prediction's cosine to the nearest one."""

    vectors: np.ndarray  # [B, D]
    decisions: np.ndarray  # [B] SNAP, BLEND or NOVEL
    keys: np.ndarray  # [B, TOP], -1 = nothing retrieved
    cosine: np.ndarray  # [B]


def choose(prediction: np.ndarray, nearest: np.ndarray, cosine: np.ndarray, found: np.ndarray, lanes: list[Lane]):
    """(vectors [B, D], decisions [B]) by each row's lane; rows whose retrieval failed stay NOVEL."""
    snap = np.array([lane.snap for lane in lanes])
    novel = np.array([lane.novel for lane in lanes])
    alpha = np.array([lane.alpha for lane in lanes], dtype=np.float32)[:, None]
    decisions = np.where(cosine >= snap, SNAP, np.where(cosine <= novel, NOVEL, BLEND))
    decisions = np.where(found, decisions, NOVEL)
    blend = alpha * nearest + (1 - alpha) * prediction
    blend /= np.maximum(np.linalg.norm(blend, axis=1, keepdims=True), 1e-12)
    kept = np.where((decisions == BLEND)[:, None], blend, prediction)
    vectors = np.where((decisions == SNAP)[:, None], nearest, kept)
    return vectors.astype(np.float32), decisions


def decode(
    encode: Encode,
    search: Search,
    bank: np.ndarray,
    context: np.ndarray,
    lengths: np.ndarray,
    lanes: list[Lane],
    steps: int,
    history: np.ndarray | None = None,
) -> list[Step]:
    """Roll `steps` vectors forward from left-padded contexts [B, k, D]: predict, retrieve, decide, append.

    Keys already in a row's history (its context keys [B, k], -1 = unknown, then every key it snapped to) are
    never retrieved again: the next chunk is not one the text already holds (eval's context-excluded view).
    """
    context, lengths = context.astype(np.float32, copy=True), lengths.copy()
    history = np.full((len(context), 0), -1, dtype=np.int64) if history is None else np.asarray(history, np.int64)
    out = []
    for _ in range(steps):
        prediction = encode(context, lengths)
        keys = unseen(search(prediction, TOP + history.shape[1])[1], history)
        found = keys[:, 0] >= 0
        nearest = np.asarray(bank[np.where(found, keys[:, 0], 0)], dtype=np.float32)
        cosine = np.where(found, (prediction * nearest).sum(1), -1.0)
        vectors, decisions = choose(prediction, nearest, cosine, found, lanes)
        out.append(Step(vectors, decisions, keys, cosine))
        context = np.concatenate([context[:, 1:], vectors[:, None]], 1)
        lengths = np.minimum(lengths + 1, context.shape[1])
        history = np.concatenate([history, np.where(decisions == SNAP, keys[:, 0], -1)[:, None]], 1)
    return out


def unseen(keys: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The first TOP keys of each row [B, >= TOP] that its history does not hold, -1 padded, order kept."""
    seen = (keys[:, :, None] == history[:, None, :]).any(2) | (keys < 0)
    order = np.argsort(seen, axis=1, kind="stable")
    kept = np.take_along_axis(np.where(seen, -1, keys), order, 1)
    return kept[:, :TOP]
