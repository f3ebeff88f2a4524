"""Ray Tune searches over dual-path decoding: snap/novel thresholds and alpha, chosen on a rollout metric.

`raytt tune --config tune_rollout_demo.yaml` reads a `RolloutSearch` (its `rollout:` key names the trained run):
a base `decode` config, a space over its fields (`snap`, `novel`, `alpha`, `lanes.NAME.snap`, ...) and the
rollout metric to maximise on a split the model did not train on (val by default). Every trial decodes the
same articles with the same tower; a sampled point that breaks the thresholds' order (novel > snap) scores
the metric's worst value instead of failing. The search ends with `results.csv` and `best.yaml`, a decode
config that `raytt rollout RUN --config best.yaml` reads.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from raytt import config
from raytt.config import doc
from raytt.decoding import DecodeConfig
from raytt.errors import ConfigError, RayttError
from raytt.progress import say
from raytt.storage import atomic_write_text
from raytt.tuning import Param, with_params

WORST = {"cos_truth": -1.0, "hit1": 0.0, "hit10": 0.0}


@dataclass
class RolloutSearch:
    """A search over decoding settings of one trained run."""

    rollout: str = field(default="", metadata=doc("the trained run whose tower decodes (a run directory)"))
    name: str = field(default="rollout", metadata=doc("search name: its directory under storage"))
    storage: str = field(default="runs/tune", metadata=doc("where searches go"))
    checkpoint: str = field(default="best", metadata=doc("best, latest, or a checkpoint directory"))
    split: Literal["train", "val", "test"] = field(default="val", metadata=doc("articles the search decodes"))
    steps: int = field(default=8, metadata=doc("vectors generated per article"))
    max_articles: int = field(default=200, metadata=doc("a fixed random subset of the split's articles (0 = all)"))
    metric: Literal["cos_truth", "hit1", "hit10"] = field(
        default="cos_truth", metadata=doc("the model's rollout measure to maximise, over every step")
    )
    search: Literal["random", "grid"] = field(default="random", metadata=doc("random sampling or a grid"))
    num_samples: int = field(default=8, metadata=doc("trials (random); repeats of the grid (grid)"))
    seed: int = field(default=0, metadata=doc("seed of the random search"))
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata=doc("the base decode config"))
    space: dict[str, Param] = field(default_factory=dict, metadata=doc("decode key (snap, lanes.X.novel) -> Param"))

    def __post_init__(self) -> None:
        if not self.rollout:
            raise ValueError("rollout: name the trained run whose decoding is searched")
        if not self.space:
            raise ValueError("space is empty: name at least one decode key (snap, novel, alpha, lanes.NAME.snap)")
        if self.steps < 1 or self.num_samples < 1 or self.max_articles < 0:
            raise ValueError("steps and num_samples must be >= 1, max_articles >= 0")
        if self.search == "grid" and any(p.kind not in ("choice", "grid") for p in self.space.values()):
            raise ValueError("search: grid needs every space parameter to be choice or grid (values to enumerate)")
        base = config.to_dict(self.decode)
        for key, param in self.space.items():
            try:
                config.from_dict(DecodeConfig, with_params(base, {key: param.sample_value()}), f"space.{key}")
            except ConfigError as exc:
                if "unknown key" in str(exc):
                    raise ValueError(f"space.{key}: not a decode setting ({exc})") from None


def is_rollout_search(data: dict) -> bool:
    """A `raytt tune` config mapping that searches decoding (it names a `rollout:` run)."""
    return "rollout" in data


def decode_of(search: RolloutSearch, params: dict) -> DecodeConfig | None:
    """The base decode config with a trial's parameters, or None when they break its rules."""
    try:
        return config.from_dict(DecodeConfig, with_params(config.to_dict(search.decode), params), "trial")
    except ConfigError:
        return None


def run_trial(params: dict, search: RolloutSearch, inputs) -> None:
    """One trial: decode the search's articles with `params`, report the model's overall measures."""
    import ray.tune

    from raytt.rollout import rollout

    model, bank, articles, context_len = inputs
    cfg = decode_of(search, params)
    if cfg is None:
        ray.tune.report({**WORST, "snap_share": 0.0, "novel_share": 0.0, "valid": 0})
        return
    report = rollout(model, bank, articles, context_len, search.steps, cfg, search.max_articles, lambda _: None)
    overall = report["methods"]["model"]["overall"]
    shares = {"snap_share": overall["snap"], "novel_share": overall["novel"]}
    ray.tune.report({**{m: overall[m] for m in WORST}, **shares, "valid": 1})


def tune_rollout(search: RolloutSearch, progress=say) -> list[dict]:
    """Run the search; returns its rows, best first, and writes results.csv and best.yaml."""
    import ray
    from ray import tune as rt

    from raytt.bank import load_bank
    from raytt.checkpoints import load_model, resolve
    from raytt.sequences import bank_of, open_shards
    from raytt.session import start_ray
    from raytt.training.config import TrainConfig

    run = Path(search.rollout).resolve()
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"rollout: {run}: not a run directory (no config.yaml)")
    shards = open_shards(config.load(TrainConfig, run / "config.yaml").data.shards)
    model, _ = load_model(resolve(run, search.checkpoint))
    start_ray(1)
    inputs = (model, load_bank(bank_of(shards)), shards.articles(search.split), shards.context_len)
    out = Path(search.storage).resolve() / search.name
    progress(
        f"tune: rollout search over {sorted(search.space)} of {run}, {search.num_samples} sample(s), maximising "
        f"{search.metric} on {search.split}"
    )
    started = time.perf_counter()
    grid = rt.Tuner(
        rt.with_resources(rt.with_parameters(run_trial, search=search, inputs=inputs), {"cpu": 1}),
        param_space={k: p.to_tune(search.search == "grid") for k, p in search.space.items()},
        tune_config=rt.TuneConfig(metric=search.metric, mode="max", num_samples=search.num_samples),
        run_config=ray.tune.RunConfig(name=search.name, storage_path=str(out.parent), verbose=0),
    ).fit()
    if grid.errors:
        raise RayttError(f"tune: {len(grid.errors)} rollout trial(s) failed; the first: {grid.errors[0]}")
    measures = (*WORST, "snap_share", "novel_share", "valid")
    rows = [{**r.config, **{k: r.metrics.get(k) for k in measures}} for r in grid if r.metrics]
    rows.sort(key=lambda row: -row[search.metric])
    write_results(rows, search, out)
    progress(format_rows(rows, search))
    progress(
        f"tune: done in {time.perf_counter() - started:.0f}s; {out}/results.csv, best decode config {out}/best.yaml"
    )
    return rows


def write_results(rows: list[dict], search: RolloutSearch, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0]) if rows else []
    with open(out / "results.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.csv.tmp").rename(out / "results.csv")
    valid = [r for r in rows if r["valid"]]
    if valid:
        best = decode_of(search, {k: valid[0][k] for k in search.space})
        atomic_write_text(out / "best.yaml", config.dumps(best))


def format_rows(rows: list[dict], search: RolloutSearch) -> str:
    keys = sorted(search.space)
    lines = ["  ".join([*(f"{k:>12}" for k in keys), f"{search.metric:>10}", "  %SNAP", " %NOVEL"])]
    for row in rows:
        cells = [f"{row[k]:>12.4g}" if isinstance(row[k], float) else f"{row[k]!s:>12}" for k in keys]
        shares = f"{100 * row['snap_share']:>7.1f}{100 * row['novel_share']:>7.1f}" if row["valid"] else "  (invalid)"
        lines.append("  ".join([*cells, f"{row[search.metric]:>10.4f}", shares]))
    return "\n".join(lines)
