"""`raytt text-train`: a text two-tower run on the vector runs' machinery.

The driver checks the built set (provenance, splits, the encoder cache a run reads), puts the passage
table in the object store once, builds the train rows as a Ray Dataset (Ray Data tokenises the
queries) and runs `text_train_loop` on Ray Train workers with the same run directory, resume,
failure, resource and summary rules as `raytt train` (`raytt.training.driver`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raytt import checkpoints, config
from raytt.errors import ConfigError, Interrupted, RayttError
from raytt.progress import Console, say
from raytt.storage import write_json
from raytt.text.config import TextTrainConfig
from raytt.text.data import (
    Judged,
    describe_data,
    encoded_cache,
    judged,
    passage_table,
    query_inputs,
    train_dataset,
    train_rows,
)
from raytt.text.encode import Encoded
from raytt.text.mine import mine_from_frozen
from raytt.text.mining import start_text_pool
from raytt.text.shards import open_text
from raytt.text.worker import TextWorkerInputs, text_train_loop
from raytt.tracking import check_tracking
from raytt.training.driver import (
    _kept,
    _restored_sigint,
    _summary,
    check_same_run,
    failure,
    find_resume,
    join_ray,
    resource_request,
    torch_trainer,
)

Progress = Callable[[str], None]


@dataclass
class TextPrepared:
    """What the driver checked and built before any worker starts."""

    table: np.ndarray  # passages by key: token ids or cached vectors
    rows: object  # pyarrow Table of train rows
    query_vectors: np.ndarray | None  # adapter, hybrid: the train queries' inputs by row
    val: Judged
    width: int  # the cached vectors' width (0 when no side reads them): what an adapter is built for

    def steps_per_epoch(self, cfg: TextTrainConfig) -> int:
        return self.rows.num_rows // (cfg.data.batch_size * max(1, cfg.workers))


def absolute(cfg: TextTrainConfig) -> TextTrainConfig:
    """Resolve the data and storage paths against the driver's directory; a run must name its data."""
    if not cfg.data.built:
        raise ConfigError("data.built not set: give --config configs/text_bag.yaml or --set data.built=BUILT")
    data = dataclasses.replace(cfg.data, built=str(Path(cfg.data.built).resolve()))
    storage = cfg.storage if cfg.remote else str(Path(cfg.storage).resolve())
    return dataclasses.replace(cfg, data=data, storage=storage)


def prepare_text(cfg: TextTrainConfig, progress: Progress = say, check_run: bool = True) -> TextPrepared:
    """Driver-side checks and inputs, before Ray starts any worker."""
    shards = open_text(cfg.data.built)
    for split in ("train", "dev"):
        if shards.rows(split) == 0:
            raise RayttError(
                f"{shards.root / 'queries'}: no {split!r} queries; a run trains on train and validates on dev"
            )
    needs_cache = cfg.tower.reads_cache or cfg.data.mined_negatives
    encoded: Encoded | None = encoded_cache(cfg, shards) if needs_cache else None
    mined = mine_from_frozen(cfg, shards, encoded, progress) if cfg.data.mined_negatives else None
    rows = train_rows(cfg, shards, mined)
    per_step = cfg.data.batch_size * max(1, cfg.workers)
    if rows.num_rows < per_step:
        raise RayttError(f"{cfg.data.built}: {rows.num_rows} train rows, fewer than one step of {per_step}")
    table = passage_table(cfg, shards, encoded)
    val = judged(cfg, shards, "dev", encoded, cfg.val_queries)
    if check_run:
        check_same_run(cfg)
    progress(describe_data(cfg, shards, rows, val, table))
    query_vectors = None if cfg.tower.queries_read_tokens else query_inputs(cfg, shards, "train", encoded)
    width = int(encoded.passages().shape[1]) if cfg.tower.reads_cache else 0
    return TextPrepared(table, rows, query_vectors, val, width)


def train_text(cfg: TextTrainConfig, progress: Progress = say) -> dict:
    """Run (or resume) a text run; returns the summary written to RUN/summary.json."""
    import ray

    cfg = absolute(cfg)
    check_tracking(cfg.tracking)
    log = Console(cfg.run.path / "train.log", hold=True)
    progress = _kept(progress, log)
    prepared = prepare_text(cfg, progress)
    resume = find_resume(cfg, progress)
    join_ray(resource_request(cfg), cfg.resource_timeout_s, progress)
    started = time.perf_counter()
    pool = start_text_pool(cfg, prepared.table, prepared.width, progress)
    try:
        with _restored_sigint():
            trainer = make_text_trainer(cfg, prepared, ray.put(prepared.table), resume, pool=pool)
            log.release()
            result = trainer.fit()
    except (KeyboardInterrupt, SystemExit) as exc:
        raise Interrupted(f"text-train: run {cfg.name!r} interrupted; run the same command again to resume it") from exc
    except Exception as exc:
        raise failure(cfg, exc) from exc
    finally:
        if pool:
            pool.shutdown()
    if result.error:
        raise failure(cfg, result.error) from result.error
    cfg.run.pull()
    summary = _summary(cfg, time.perf_counter() - started)
    write_json(cfg.run.summary, summary)
    cfg.run.push()
    best = summary["best"]
    progress(
        f"text-train: done in {summary['seconds']:.0f}s, {summary['steps']} steps; best {cfg.best_metric} = "
        f"{best['value']:.4f} at step {best['step']} ({cfg.run.location}/best)"
    )
    return summary


def make_text_trainer(
    cfg: TextTrainConfig, prepared: TextPrepared, table_ref, resume: Path | None, callbacks=(), label="", pool=None
):
    """The run's `TorchTrainer` over the train rows' Ray Dataset (with the miner pool when the schedule mines)."""
    run = cfg.run
    run.path.mkdir(parents=True, exist_ok=True)
    config.dump(cfg, run.config)
    run.push()
    inputs = TextWorkerInputs(
        cfg,
        table_ref,
        prepared.val,
        prepared.width,
        prepared.steps_per_epoch(cfg),
        str(resume) if resume else None,
        tune=bool(label),
        local=cfg.workers == 0,
        label=label,
        pool=pool,
    )
    dataset = train_dataset(cfg, prepared.rows, prepared.query_vectors)
    return torch_trainer(cfg, text_train_loop, inputs, dataset, callbacks)


def load_text_model(folder: str | Path, device: str = "cpu"):
    """A text tower from a checkpoint or best/ folder, with its meta."""
    from raytt.text.towers import TextTowerConfig, build_text_tower

    weights, _, meta = checkpoints.read(Path(folder), device)
    tower = config.from_dict(TextTowerConfig, meta["tower"], str(folder), "tower")
    model = build_text_tower(tower, int(meta["dim"]))
    model.load_state_dict(weights)
    return model.eval(), meta
