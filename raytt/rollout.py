"""`raytt rollout`: dual-path decoding of held-out articles, with telemetry per step and per lane.

Every article of the split with more than k chunks starts from its first k; each method (the trained tower,
and the heuristic rollouts `exp` and `last` decoded the same way) rolls `steps` vectors forward. Per step:
%SNAP/%BLEND/%NOVEL, Hit@1/@10 of the true chunk at that position among the retrieved keys, the cosine of
the generated vector to it (`cos_truth`), the cosine a one-step prediction from the true context reaches
(`cos_teacher`), and their gap (`drift`: what feeding generated vectors back costs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytt import ann
from raytt.bank import Bank
from raytt.decoding import DECISIONS, TOP, DecodeConfig, Lane, Step, decode, lane_names
from raytt.errors import RayttError
from raytt.progress import say
from raytt.towers import TowerConfig, TwoTower

BASELINES = {"exp": TowerConfig(query="exp", alpha=0.5), "last": TowerConfig(query="last")}
MEASURES = ("snap", "blend", "novel", "hit1", "hit10", "cos_truth", "cos_teacher", "drift")


@dataclass(frozen=True)
class Starts:
    """Where each rolled article starts and what truly follows: keys [A, k] and [A, steps] (-1: ended)."""

    context: np.ndarray
    truth: np.ndarray
    lanes: list[str]
    skipped: int  # articles of the split with k chunks or fewer

    def __len__(self) -> int:
        return len(self.context)


def article_keys(bank: Bank, names: list[str]) -> list[np.ndarray]:
    """Each named article's keys in position order."""
    code_of = {name: code for code, name in enumerate(bank.article_names)}
    order = np.lexsort((bank.positions, bank.article_codes))
    codes = bank.article_codes[order]
    bounds = np.searchsorted(codes, np.arange(len(bank.article_names) + 1))
    return [order[bounds[code_of[n]] : bounds[code_of[n] + 1]] for n in names if n in code_of]


def starts(bank: Bank, names: list[str], k: int, steps: int, lanes: list[str] | None, max_articles: int = 0) -> Starts:
    """Start windows of the named articles (a seeded sample of `max_articles` when > 0); `lanes` by key."""
    keys = [a for a in article_keys(bank, names) if len(a) > k]
    skipped = len(names) - len(keys)
    if max_articles and len(keys) > max_articles:
        keys = [keys[i] for i in sorted(np.random.default_rng(0).choice(len(keys), max_articles, replace=False))]
    if not keys:
        raise RayttError(f"rollout: no article of the split has more than {k} chunks (context_len) to roll forward")
    truth = np.full((len(keys), steps), -1, dtype=np.int64)
    for i, a in enumerate(keys):
        ahead = a[k : k + steps]
        truth[i, : len(ahead)] = ahead
    context = np.stack([a[:k] for a in keys]).astype(np.int64)
    lane = [lanes[int(a[0])] for a in keys] if lanes is not None else ["default"] * len(keys)
    return Starts(context, truth, lane, skipped)


def encoder_of(model: TwoTower) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(context vectors [B, k, D], lengths [B]) -> unit queries [B, D] through the tower's `encode_queries`."""
    import torch

    def encode(context: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.encode_queries(torch.as_tensor(context), torch.as_tensor(lengths)).float().numpy()

    return encode


def roll(model: TwoTower, index: np.ndarray, bank: np.ndarray, start: Starts, cfg: DecodeConfig, steps: int) -> dict:
    """One method's telemetry: per step, overall and per lane."""
    encode = encoder_of(model.eval())
    k = start.context.shape[1]
    lengths = np.full(len(start), k, dtype=np.int64)
    lanes: list[Lane] = [cfg.lane(name) for name in start.lanes]

    def search(queries: np.ndarray, n: int):
        return ann.exact_top(index, queries, n)

    rolled = decode(encode, search, bank, bank[start.context], lengths, lanes, steps, start.context)
    teacher = teacher_cosines(encode, bank, start, steps)
    per_row = [row_measures(step, start.truth[:, t], teacher[:, t], bank) for t, step in enumerate(rolled)]
    return {
        "steps": [{"step": t + 1, **summary(m, np.ones(len(start), bool))} for t, m in enumerate(per_row)],
        "overall": summary(stacked(per_row), np.ones(len(start) * steps, bool)),
        "lanes": {
            lane: summary(stacked(per_row), np.tile(np.asarray(start.lanes) == lane, steps))
            for lane in sorted(set(start.lanes))
        },
    }


def teacher_cosines(encode, bank: np.ndarray, start: Starts, steps: int) -> np.ndarray:
    """[A, steps] cosine of the one-step prediction from the true k chunks before each true chunk (NaN: ended)."""
    k = start.context.shape[1]
    out = np.full(start.truth.shape, np.nan, dtype=np.float32)
    window = start.context.copy()
    for t in range(steps):
        alive = start.truth[:, t] >= 0
        if t:
            window = np.concatenate([window[:, 1:], start.truth[:, t - 1 : t].clip(min=0)], 1)
        if alive.any():
            q = encode(bank[window[alive]], np.full(int(alive.sum()), k, dtype=np.int64))
            out[alive, t] = (q * bank[start.truth[alive, t]]).sum(1)
    return out


def row_measures(step: Step, truth: np.ndarray, teacher: np.ndarray, bank: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of one step: its decision (one-hot), hits, cosines; NaN where the article had ended."""
    alive = truth >= 0
    cos_truth = np.where(alive, (step.vectors * bank[truth.clip(min=0)]).sum(1), np.nan)
    hits = step.keys == truth[:, None]
    out = {name: (step.decisions == i).astype(np.float32) for i, name in enumerate(DECISIONS)}
    out.update(
        hit1=np.where(alive, hits[:, 0], np.nan),
        hit10=np.where(alive, hits[:, :TOP].any(1), np.nan),
        cos_truth=cos_truth,
        cos_teacher=teacher,
        drift=teacher - cos_truth,
    )
    return out


def stacked(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r[name] for r in rows]) for name in MEASURES}


def summary(measures: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float]:
    """Mean of each measure over the kept rows that have it (decisions over every kept row)."""
    out = {}
    for name in MEASURES:
        values = measures[name][keep]
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if len(values) else float("nan")
    out["rows"] = int(keep.sum())
    return out


def bank_lanes(bank: Bank, cfg: DecodeConfig) -> list[str] | None:
    """Each key's lane from `cfg.lane_column` of the bank's Parquet files (None: one default lane)."""
    if not cfg.lane_column:
        return None
    import pyarrow.parquet as pq

    files = [Path(bank.path) / name for name in bank.manifest.files]
    columns = pq.ParquetFile(files[0]).schema_arrow.names
    if cfg.lane_column not in columns or cfg.lane_column == "vector":
        raise RayttError(
            f"decode.lane_column {cfg.lane_column!r}: the bank {bank.path} has no such column (its columns: "
            f"{[c for c in columns if c != 'vector']})"
        )
    values = [str(v) for f in files for v in pq.read_table(f, columns=[cfg.lane_column]).column(0).to_pylist()]
    return lane_names(cfg, values)


def rollout(
    model: TwoTower,
    bank: Bank,
    articles: list[str],
    context_len: int,
    steps: int,
    cfg: DecodeConfig,
    max_articles: int = 0,
    progress: Callable[[str], None] = say,
) -> dict:
    """The telemetry of the trained tower's rollout and the heuristic rollouts over the same start windows."""
    from raytt.towers import index_vectors

    if steps < 1:
        raise RayttError(f"rollout: --steps must be >= 1, got {steps}")
    start = starts(bank, articles, context_len, steps, bank_lanes(bank, cfg), max_articles)
    progress(
        f"rollout: {len(start):,} articles x {steps} steps from their first {context_len} chunks, full-bank "
        f"search over {bank.num_vectors:,} vectors ({start.skipped} articles too short)"
    )
    methods = {"model": (model, index_vectors(model, bank.vectors))}
    methods.update({name: (TwoTower(tower, bank.dim), bank.vectors) for name, tower in BASELINES.items()})
    return {
        "articles": len(start),
        "skipped_short": start.skipped,
        "steps": steps,
        "context_len": context_len,
        "decode": dataclasses.asdict(cfg),
        "methods": {name: roll(net, index, bank.vectors, start, cfg, steps) for name, (net, index) in methods.items()},
    }


def console(report: dict) -> str:
    """Per-step telemetry of every method, then each lane's overall figures."""
    head = f"{'method':<7}{'step':>5}  {'%SNAP':>6}{'%BLEND':>7}{'%NOVEL':>7}  {'Hit@1':>6}{'Hit@10':>7}"
    head += f"  {'cos':>6}{'teacher':>8}{'drift':>7}"
    lines = [head]
    for name, method in report["methods"].items():
        for row in [*method["steps"], {"step": "all", **method["overall"]}]:
            lines.append(f"{name:<7}{row['step']:>5}  " + _cells(row))
    lanes = {lane for m in report["methods"].values() for lane in m["lanes"]}
    if len(lanes) > 1:
        lines += ["", f"{'method':<7}{'lane':>12}  " + head[14:]]
        for name, method in report["methods"].items():
            lines += [f"{name:<7}{lane[:12]:>12}  " + _cells(row) for lane, row in method["lanes"].items()]
    return "\n".join(lines)


def _cells(row: dict) -> str:
    shares = "".join(f"{100 * row[d]:>{w}.1f}" for d, w in zip(DECISIONS, (6, 7, 7)))
    return (
        f"{shares}  {row['hit1']:>6.3f}{row['hit10']:>7.3f}  {row['cos_truth']:>6.3f}{row['cos_teacher']:>8.3f}"
        f"{row['drift']:>7.3f}"
    )


def write(report: dict, out: str | Path) -> Path:
    """report.json, report.md (the console table) and rollout.png into `out`."""
    from raytt.storage import atomic_write_text, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", f"# Rollout telemetry\n\n```\n{console(report)}\n```\n")
    plot(report, out / "rollout.png")
    return out


def plot(report: dict, path: Path) -> None:
    """Cosine to the true chunk and %SNAP per step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, method in report["methods"].items():
        steps = [r["step"] for r in method["steps"]]
        left.plot(steps, [r["cos_truth"] for r in method["steps"]], marker="o", label=name)
        right.plot(steps, [100 * r["snap"] for r in method["steps"]], marker="o", label=name)
    left.set(xlabel="step", ylabel="cosine to the true chunk", title="drift")
    right.set(xlabel="step", ylabel="% SNAP", title="decisions")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
