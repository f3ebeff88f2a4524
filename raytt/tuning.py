"""Ray Tune searches over training hyperparameters, scheduled by ASHA on full-bank validation recall.

`raytt tune --config configs/tune_demo.yaml` reads a `SearchConfig`: a base training config, a search
space over any of its fields (dotted keys: `loss.tau`, `optim.lr`, `mining.schedule`, ...), a search
algorithm and the metric. The top-level driver checks the data once, puts the bank in the object
store once and starts one miner pool that every trial shares; each trial is a function that builds
a `TorchTrainer` (the Ray Train V2 pattern; metrics reach Tune through `TuneReportCallback`). Trials
report once per epoch, after full-bank validation, so ASHA only ever compares full-bank numbers.
The search ends with `results.csv` and `best.yaml`, which `raytt train --config best.yaml` runs as is.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ray.tune import Callback

from raytt import config, shipped
from raytt.bank import share_bank
from raytt.config import doc
from raytt.errors import ConfigError, RayttError
from raytt.progress import say
from raytt.rundir import RunDir
from raytt.session import actor_placement_groups, release_orphaned_placement_groups
from raytt.storage import Located, check_uri, download, is_uri, locate
from raytt.training.config import TrainConfig
from raytt.training.driver import (
    Prepared,
    absolute_paths,
    find_resume,
    join_ray,
    make_trainer,
    prepare,
    resource_request,
    start_pool,
    train_dataset,
)

SEARCH_FILE = "search.yaml"
TRIAL_DRIVER_CPU = 0.01  # a trial's own actor only waits on its TorchTrainer; the workers hold the CPUs
# Tune gives a stopped trial's actor this long to end before killing it (Ray's default: 600 s). Until it ends,
# its Ray Train controller and worker placement group live on and hold CPUs later trials need.
FORCE_CLEANUP_ENV, FORCE_CLEANUP_S = "TUNE_FORCE_TRIAL_CLEANUP_S", 60
RELEASE_EVERY_S = 2.0
Value = str | int | float | bool


@dataclass
class Param:
    """One dimension of the search space."""

    kind: Literal["loguniform", "uniform", "randint", "choice", "grid"] = field(
        default="choice", metadata=doc("loguniform/uniform/randint over [low, high], or choice/grid over values")
    )
    low: float = 0.0
    high: float = 0.0
    values: tuple[Value, ...] = ()

    def __post_init__(self) -> None:
        if self.kind in ("choice", "grid") and not self.values:
            raise ValueError(f"a {self.kind} parameter needs values")
        if self.kind in ("loguniform", "uniform", "randint") and not self.low < self.high:
            raise ValueError(f"a {self.kind} parameter needs low < high, got {self.low}, {self.high}")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform parameter needs low > 0, got {self.low}")

    def sample_value(self) -> Value:
        """A representative value, used to check the key against the training config before any trial runs."""
        if self.values:
            return self.values[0]
        return int(self.low) if self.kind == "randint" else self.low

    def to_tune(self, grid: bool):
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "randint":
            return tune.randint(int(self.low), int(self.high))
        if self.kind == "grid" or grid:
            return tune.grid_search(list(self.values))
        return tune.choice(list(self.values))


@dataclass
class SearchConfig(Located):
    name: str = field(default="tune", metadata=doc("search name: its directory under storage; --resume continues it"))
    storage: str = field(
        default="runs/tune",
        metadata=doc("where searches go: a path (shared by every node on a cluster) or a URI such as s3://bucket/tune"),
    )
    train: str = field(default="configs/demo.yaml", metadata=doc("the base training config every trial starts from"))
    overrides: tuple[str, ...] = field(default=(), metadata=doc("overrides of the base config, KEY=VALUE"))
    search: Literal["random", "grid", "optuna"] = field(
        default="random",
        metadata=doc("random sampling, a grid over choice/grid values, or Optuna's TPE (pip install raytt[optuna])"),
    )
    num_samples: int = field(default=6, metadata=doc("trials (random, optuna); repeats of the grid (grid)"))
    metric: str = field(
        default="val/R@10", metadata=doc("full-bank validation metric to maximise: val/R@K or val/MRR@10")
    )
    scheduler: Literal["asha", "fifo"] = field(
        default="asha", metadata=doc("asha stops weak trials early; fifo runs all")
    )
    grace_period: int = field(default=1, metadata=doc("asha: epochs every trial runs before it can be stopped"))
    reduction_factor: int = field(default=2, metadata=doc("asha: keep the top 1/reduction_factor at each rung"))
    max_concurrent_trials: int = field(default=0, metadata=doc("0 = as many as the cluster's CPUs/GPUs fit"))
    seed: int = field(default=0, metadata=doc("seed of the search algorithm"))
    space: dict[str, Param] = field(default_factory=dict, metadata=doc("dotted training-config key -> Param"))

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty directory name, got {self.name!r}")
        if not self.metric.startswith("val/") or self.metric == "val/in_batch_acc":
            raise ValueError(
                f"metric must be a full-bank validation metric (val/R@K, val/MRR@10), not "
                f"{self.metric!r}: loss and in-batch accuracy say nothing about full-bank retrieval"
            )
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor < 2 or self.max_concurrent_trials < 0:
            raise ValueError(
                "num_samples and grace_period must be >= 1, reduction_factor >= 2, max_concurrent_trials >= 0"
            )
        if not self.space:
            raise ValueError("space is empty: name at least one training-config key to search")
        if self.search == "grid" and any(p.kind not in ("choice", "grid") for p in self.space.values()):
            raise ValueError("search: grid needs every space parameter to be choice or grid (values to enumerate)")
        if self.search == "optuna" and any(p.kind == "grid" for p in self.space.values()):
            raise ValueError("search: optuna samples its own points; use choice instead of grid parameters")


def load_search(run_dir: str | Path) -> SearchConfig:
    """The config a search was started with, pointed at the directory (or URI) it lives in (to resume it)."""
    where = str(run_dir).rstrip("/")
    if is_uri(where):
        storage, name = where.rsplit("/", 1)
        local = locate(storage, name)[0]
        download(where, local, skip=("trials",))
    else:
        local = Path(where).resolve()
        storage, name = str(local.parent), local.name
    path = local / SEARCH_FILE
    if not path.is_file():
        raise ConfigError(f"{where}: not a search directory (no {SEARCH_FILE}); start it with --config")
    return dataclasses.replace(config.load(SearchConfig, path), storage=storage, name=name)


def set_dotted(data: dict, key: str, value) -> None:
    """Set `a.b.c` in a nested mapping (sections are created as needed)."""
    *sections, last = key.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"search space key {key!r}: {part!r} is not a section")
    node[last] = value


def is_text(data: dict) -> bool:
    """A training config mapping of a text run (its data names a built text set) rather than a vector run."""
    return "built" in (data.get("data") or {})


def train_class(data: dict) -> type:
    from raytt.text.config import TextTrainConfig

    return TextTrainConfig if is_text(data) else TrainConfig


def base_config(search: SearchConfig) -> dict:
    """The base training config as a plain mapping (relative paths resolved on the driver)."""
    from raytt.text.train import absolute

    train = shipped.resolve(search.train)
    cls = train_class(config.read_mapping(train))
    cfg = config.load(cls, train, list(search.overrides))
    return config.to_dict(absolute(cfg) if cls is not TrainConfig else absolute_paths(cfg))


def trial_config(base: dict, params: dict, storage: str | Path, name: str) -> TrainConfig:
    """A trial's full training config: the base, the trial's parameters, its own run directory."""
    data = {**with_params(base, params), "name": name, "storage": str(storage)}
    return config.from_dict(train_class(base), data, f"trial {name} (params {params})")


def with_params(base: dict, params: dict) -> dict:
    """A deep copy of the base config mapping with the dotted `params` set."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        set_dotted(data, key, value)
    return data


def check_space(search: SearchConfig, base: dict) -> None:
    """Every space key must name a training-config field and accept its values, before anything starts."""
    for key, param in search.space.items():
        for value in param.values or (
            param.sample_value(),
            param.high if param.kind != "randint" else int(param.high) - 1,
        ):
            try:
                cfg = trial_config(base, {key: value}, Path("."), "check")
            except ConfigError as exc:
                raise ConfigError(f"{search.run_dir / SEARCH_FILE}: space.{key} = {value!r}: {exc}") from None
            cfg.mining.curriculum.check_covers(cfg.optim.epochs, f"space.{key} value")


def check_trial_resources(search: SearchConfig, base: dict, trials: str, mines: bool) -> None:
    """Refuse a search one of whose trials (the base, or the base with one space value) can never be placed."""
    from raytt.resources import check, cluster_capacity

    capacity = cluster_capacity()
    for key, param in search.space.items():
        for value in param.values or (param.sample_value(),):
            cfg = trial_config(base, {key: value}, trials, "check")
            try:
                check(resource_request(cfg, mines=mines), capacity)
            except RayttError as exc:
                raise type(exc)(f"{search.run_dir / SEARCH_FILE}: a trial with {key} = {value!r}: {exc}") from None


def concurrency(search: SearchConfig, base: TrainConfig, cpus: float, gpus: float, miner_cpus: float) -> int:
    """Trials that fit at once: the cluster's CPUs (less the miners, and one for Ray Data's reads when trials
    stream their data) over a trial's workers and its driver."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    workers = max(1, base.workers)
    reads = 0 if base.data.cache else 1
    by_cpu = (cpus - miner_cpus - reads) // (workers * base.threads_per_worker + TRIAL_DRIVER_CPU)
    by_gpu = gpus // workers if base.use_gpu else math.inf
    return int(max(1, min(by_cpu, by_gpu)))


@dataclass
class TrialInputs:
    """What every trial gets from the search's driver (Ray pickles it once per trial)."""

    base: dict  # the base training config as a mapping, for the space's dotted keys
    inputs: Prepared  # the data the driver checked and loaded once
    bank: object  # ObjectRef of the bank, put once
    pool: object | None  # the miner pool every trial shares
    trials: str  # where trial run directories go (a path or a URI)


def run_trial(params: dict, shared: TrialInputs) -> None:
    """One trial: the base config plus `params`, trained by its own TorchTrainer, reported to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    name = ray.tune.get_context().get_trial_id()
    cfg = trial_config(shared.base, params, shared.trials, name)
    run = cfg.run
    run.path.mkdir(parents=True, exist_ok=True)
    run.pull()
    with open(run.path / "starts.log", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} params={json.dumps(params, sort_keys=True)}\n")
    run.push()
    trainer = _trainer(cfg, shared, [TuneReportCallback()], name)
    result = trainer.fit()
    if result.error:
        raise result.error


def _trainer(cfg, shared: TrialInputs, callbacks: list, label: str):
    """A trial's TorchTrainer: a vector run's (shared bank and miners) or a text run's (shared passage table)."""
    if is_text(shared.base):
        from raytt.text.train import make_text_trainer

        return make_text_trainer(cfg, shared.inputs, shared.bank, find_resume(cfg), callbacks, label)
    return make_trainer(
        cfg, shared.inputs, shared.bank, shared.pool, find_resume(cfg), callbacks=callbacks, label=label
    )


def tune(search: SearchConfig, resume: bool = False, progress=say) -> list[dict]:
    """Run (or resume) a search; returns the results table, best first."""
    if not resume:
        search = dataclasses.replace(search, train=str(shipped.resolve(search.train).resolve()))
    run = RunDir(search.run_dir if search.remote else search.run_dir.resolve(), search.remote)
    shared, base_cfg = start_search(search, run, resume, progress)
    started = time.perf_counter()
    try:
        grid = make_tuner(search, run, shared, base_cfg, resume, progress).fit()
    finally:
        if shared.pool:
            shared.pool.shutdown()
        release_trial_groups()
    rows = results_table(grid, search, base_cfg)
    write_results(rows, search, shared.base, run.path)
    run.push()
    progress(format_results(rows, search))
    progress(
        f"tune: done in {time.perf_counter() - started:.0f}s; {run.location}/results.csv, best config "
        f"{run.location}/best.yaml"
    )
    return rows


def start_search(search: SearchConfig, run: RunDir, resume: bool, progress=say) -> tuple[TrialInputs, TrainConfig]:
    """Check the space and the data, join Ray, read the data and put the bank once, start the shared miners."""
    trials = f"{run.remote}/trials" if run.remote else str(run.path / "trials")
    if run.remote:
        check_uri(run.remote)
    base = base_config(search)
    check_space(search, base)
    base_cfg = config.from_dict(train_class(base), base, search.train)
    mines = base_cfg.mining.curriculum.mines or any(
        trial_config(base, {k: v}, trials, "check").mining.curriculum.mines
        for k, p in search.space.items()
        if k.startswith("mining.")
        for v in p.values
    )
    if is_text(base) and mines:
        raise ConfigError(
            f"{search.train}: text trials cannot share a miner pool (each trial's passage side indexes differently); "
            "search text runs with data.mined_negatives and mining.schedule empty"
        )
    inputs = _prepare(base_cfg, progress)
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        config.dump(search, run.path / SEARCH_FILE)
        run.push()
    join_ray(
        resource_request(base_cfg, mines=mines),
        base_cfg.resource_timeout_s,
        progress,
        private_cpus=resource_request(base_cfg, trials=2, mines=mines).total("CPU"),
    )
    check_trial_resources(search, base, trials, mines)
    os.environ.setdefault(FORCE_CLEANUP_ENV, str(FORCE_CLEANUP_S))
    if is_text(base):
        import ray

        return TrialInputs(base, inputs, ray.put(inputs.table), None, trials), base_cfg
    if base_cfg.data.cache:  # read once here, before any trial: no trial then needs a free CPU to read
        inputs.dataset = train_dataset(base_cfg, inputs.files)
    bank_ref = share_bank(inputs.bank)
    pool = start_pool(base_cfg, bank_ref, progress, force=mines)
    return TrialInputs(base, inputs, bank_ref, pool, trials), base_cfg


def _prepare(cfg, progress):
    """The data every trial shares, checked and read once on the search's driver."""
    from raytt.text.config import TextTrainConfig

    if isinstance(cfg, TextTrainConfig):
        from raytt.text.train import prepare_text

        return prepare_text(cfg, progress, check_run=False)
    return prepare(cfg, progress, check_run=False)


def make_tuner(
    search: SearchConfig, run: RunDir, shared: TrialInputs, base_cfg: TrainConfig, resume: bool, progress=say
):
    """The `Tuner` over `run_trial` (restored from its saved state when resuming), as many trials at once as fit."""
    import ray
    from ray import tune as rt

    resources = ray.cluster_resources()
    miner_cpus = base_cfg.mining.actors * base_cfg.mining.actor_cpus if shared.pool else 0
    limit = concurrency(search, base_cfg, resources.get("CPU", 1), resources.get("GPU", 0), miner_cpus)
    trainable = rt.with_resources(rt.with_parameters(run_trial, shared=shared), {"cpu": TRIAL_DRIVER_CPU})
    progress(
        f"tune: {search.search} search over {sorted(search.space)}, {search.num_samples} sample(s), metric "
        f"{search.metric}, scheduler {search.scheduler}; up to {limit} trial(s) at once"
    )
    if resume:
        if not rt.Tuner.can_restore(run.location):
            raise RayttError(f"{run.location}: no Tune experiment state to resume")
        return rt.Tuner.restore(run.location, trainable=trainable, resume_unfinished=True, resume_errored=True)
    space = {k: p.to_tune(search.search == "grid") for k, p in search.space.items()}
    storage = search.storage if search.remote else str(run.path.parent)
    return rt.Tuner(
        trainable,
        param_space=space,
        tune_config=_tune_config(search, base_cfg, limit),
        run_config=ray.tune.RunConfig(
            name=search.name, storage_path=storage, verbose=0, callbacks=[ReleaseEndedTrials()]
        ),
    )


class ReleaseEndedTrials(Callback):
    """Every few seconds of a search, free the worker placement groups that ended trials left behind.

    A trial that ASHA stops (or that fails) ends its actor, and its Ray Train controller with it; Ray
    keeps that controller's placement group while the search's job lives (`session`), and later
    trials would wait for its CPUs. A restored search brings this callback back with its state.
    """

    def __init__(self, every_s: float = RELEASE_EVERY_S) -> None:
        self.every_s, self.last = every_s, 0.0

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last >= self.every_s:
            release_orphaned_placement_groups()
            self.last = time.monotonic()


def release_trial_groups(timeout_s: float = 60.0) -> None:
    """After a search: free every trial's placement group as its controller ends (at most `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while actor_placement_groups() and time.monotonic() < deadline:
        release_orphaned_placement_groups()
        time.sleep(0.5)


def _tune_config(search: SearchConfig, base: TrainConfig, limit: int):
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    algo = None
    if search.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise ConfigError(f"search: optuna needs the optuna package (pip install 'raytt[optuna]'): {exc}") from None
        algo = OptunaSearch(seed=search.seed)
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=base.optim.epochs,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )
        if search.scheduler == "asha"
        else FIFOScheduler()
    )
    return rt.TuneConfig(
        metric=search.metric,
        mode="max",
        search_alg=algo,
        scheduler=scheduler,
        num_samples=search.num_samples,
        max_concurrent_trials=limit,
        trial_dirname_creator=_trial_id,
        trial_name_creator=_trial_id,
    )


def _trial_id(trial) -> str:
    """Trials are named by id: the Tune directory and the training run directory (trials/ID) match."""
    return trial.trial_id


def results_table(grid, search: SearchConfig, base: TrainConfig) -> list[dict]:
    """One row per trial: params, best metric over its epochs, epochs run, stopped early, error; best first."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        values = history[search.metric].dropna() if history is not None and search.metric in history else []
        epochs = int(history["epoch"].max()) if history is not None and "epoch" in history and len(history) else 0
        rows.append(
            {
                "trial": result.path.rstrip("/").split("/")[-1],
                "params": {k: result.config[k] for k in search.space},
                "best": float(max(values)) if len(values) else float("nan"),
                "epochs": epochs,
                "stopped_early": result.error is None and epochs < base.optim.epochs,
                "error": str(result.error).splitlines()[0] if result.error else "",
            }
        )
    return sorted(rows, key=lambda r: (math.isnan(r["best"]), -r["best"] if not math.isnan(r["best"]) else 0))


def write_results(rows: list[dict], search: SearchConfig, base: dict, run_dir: Path) -> None:
    """results.csv (atomically) and best.yaml: the best trial's full config, ready for `raytt train`."""
    from raytt.storage import atomic_write_text

    keys = sorted(search.space)
    lines = [["rank", "trial", search.metric, "epochs", "stopped_early", "error", *keys]]
    for i, r in enumerate(rows, 1):
        lines.append(
            [
                i,
                r["trial"],
                f"{r['best']:.4f}",
                r["epochs"],
                r["stopped_early"],
                r["error"],
                *[r["params"][k] for k in keys],
            ]
        )
    atomic_write_text(run_dir / "results.csv", "".join(_csv_line(line) for line in lines))
    best = next((r for r in rows if not math.isnan(r["best"])), None)
    if best is None:
        raise RayttError(f"tune: no trial of {run_dir} reported {search.metric}; see the trials' errors in results.csv")
    cfg = trial_config(base, best["params"], base["storage"], f"{search.name}-best")
    atomic_write_text(
        run_dir / "best.yaml",
        f"# best trial of search {search.name}: {best['trial']} ({search.metric} = {best['best']:.4f})\n" + _yaml(cfg),
    )


def _csv_line(values: list) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


def _yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(cfg), sort_keys=False)


def format_results(rows: list[dict], search: SearchConfig) -> str:
    keys = sorted(search.space)
    head = ["trial", search.metric, "epochs", "early stop", *keys]
    body = [
        [
            r["trial"],
            f"{r['best']:.4f}",
            str(r["epochs"]),
            "yes" if r["stopped_early"] else ("ERROR" if r["error"] else "no"),
            *[_short(r["params"][k]) for k in keys],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [f"tune results (best first, by {search.metric}):", fmt.format(*head), *[fmt.format(*row) for row in body]]
    )


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
