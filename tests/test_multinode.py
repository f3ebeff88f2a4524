"""Many nodes for real: a four-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, as Ray tests
itself), with training workers spread over two `trainer` nodes, a miner on its own node, the bank put once,
checkpoints on storage every node reads, and runs that lose a worker's node or the miner's node mid-epoch."""

import threading
import time
from pathlib import Path

import psutil
from helpers import QUIET

from raytt import config
from raytt.rundir import RunDir
from raytt.sequences import open_shards
from raytt.training.config import TrainConfig
from raytt.training.driver import train

BATCH = 64
EPOCHS = 1
CHECKPOINT_EVERY = 5


def _cfg(bank, shards, storage, name, **over) -> TrainConfig:
    """Two workers spread over the `trainer` nodes, one miner on the `miner` node mining from epoch 0."""
    sets = {
        "name": name,
        "storage": storage,
        "data.bank": bank,
        "data.shards": shards,
        "data.batch_size": BATCH,
        "data.shuffle_buffer": 2000,
        "workers": 2,
        "placement": "spread",
        "worker_resources.trainer": 1,
        "mining.resources.miner": 1,
        "mining.schedule": f"0-{EPOCHS - 1}:4@-1.0-0.99",
        "mining.timeout_s": 0.5,
        "tower.hidden": 32,
        "tower.residual": "false",
        "optim.epochs": EPOCHS,
        "optim.warmup_steps": 5,
        "checkpoint_every": CHECKPOINT_EVERY,
        "log_every": 1,
        "val_queries": 200,
        "resource_timeout_s": 120,
        **over,
    }
    return config.load(TrainConfig, None, [f"{k}={v}" for k, v in sets.items()])


def _steps(shards) -> int:
    """The fault-free run's last step: whole batches of 2 workers x BATCH per epoch."""
    return open_shards(shards).rows("train") // (BATCH * 2) * EPOCHS


def _attempts(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).starts()


def _nodes(start: dict) -> set[str]:
    return {w["node"] for w in start["workers"]}


def _gone(pids: list[int]) -> None:
    """Wait until these processes have ended (the test's own time limit bounds the wait)."""
    while any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class OnHold:
    """Act on the cluster while worker 0 holds at `hold_at_step`, then let the run go on.

    The run is released even when the act fails, so a failing act fails the test instead of hanging it.
    """

    def __init__(self, run_dir: Path, act) -> None:
        self.run_dir, self.act, self.stop, self.acted = run_dir, act, threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not (self.run_dir / ".held").exists():
            if self.stop.wait(0.1):
                return
        try:
            self.act()
            self.acted.set()
        except BaseException as exc:  # re-raised in the test's thread by close()
            self.error = exc
        finally:
            (self.run_dir / ".release").touch()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        if self.error:
            raise self.error


def _train_losing(cfg: TrainConfig, act) -> dict:
    """Train `cfg`, doing `act` (losing a node) while worker 0 holds; the act must have happened."""
    hold = OnHold(cfg.run_dir, act)
    try:
        summary = train(cfg, progress=QUIET)
    finally:
        hold.close()
    assert hold.acted.is_set()
    return summary


def test_workers_spread_miners_apart_one_bank_copy_per_node_and_shared_storage(
    ray_cluster, synth_bank, synth_shards, tmp_path
):
    storage = tmp_path / "shared"
    cfg = _cfg(synth_bank, synth_shards, f"file://{storage}", "spread")
    summary = train(cfg, progress=QUIET)

    (start,) = _attempts(cfg.run_dir)
    trainers = {n.node_id for n in ray_cluster.trainers}
    assert _nodes(start) == trainers, "spread: one worker on each trainer node"
    placed = summary["placement"]
    assert placed["miner_nodes"] == [ray_cluster.miner.node_id], "mining.resources pins the miner to its node"
    assert trainers | {ray_cluster.miner.node_id} <= set(placed["bank_nodes"]), "the bank reached every node using it"
    bank = placed["bank_bytes"]
    assert bank > 900_000
    for node, used in placed["store_bytes_by_node"].items():
        assert used < 1.5 * bank, f"node {node[:8]} holds {used} object-store bytes: more than one bank copy"
    assert summary["steps"] == _steps(synth_shards)
    checkpoints = sorted(p.name for p in (storage / "spread").glob("checkpoint_*"))
    assert checkpoints and (storage / "spread" / "best" / "model.pt").is_file(), "written where every node reads"
    log = (cfg.run_dir / "train.log").read_text()
    assert "2 worker(s) x 1 CPU on 2 node(s) (placement spread)" in log


def test_losing_a_workers_node_costs_at_most_a_checkpoint_interval(ray_cluster, synth_bank, synth_shards, tmp_path):
    cfg = _cfg(synth_bank, synth_shards, tmp_path, "lose-worker", hold_at_step=CHECKPOINT_EVERY * 2 + 2)
    removed = []

    def lose_rank_1s_node():
        rank_1 = next(w for w in _attempts(cfg.run_dir)[0]["workers"] if w["rank"] == 1)
        removed.append(rank_1["node"])
        ray_cluster.remove(rank_1["node"])
        _gone([rank_1["pid"]])  # its processes end a moment after its raylet; release worker 0 only then

    summary = _train_losing(cfg, lose_rank_1s_node)
    assert summary["steps"] == _steps(synth_shards), "the run finished every step"
    first, *later = _attempts(cfg.run_dir)
    assert later, "losing a worker's node restarted the worker group"
    assert all(removed[0] not in _nodes(s) for s in later), "no worker placed on the lost node"
    trained = max(r["step"] for r in RunDir(cfg.run_dir).all_rows() if r["attempt"] == first["attempt"] and "step" in r)
    assert trained - later[0]["step"] <= CHECKPOINT_EVERY, "lost more than one checkpoint interval"
    assert (cfg.run_dir / "best" / "model.pt").is_file()


def test_losing_the_miners_node_only_costs_counted_fallbacks(ray_cluster, synth_bank, synth_shards, tmp_path):
    cfg = _cfg(synth_bank, synth_shards, tmp_path, "lose-miner", hold_at_step=3)

    def lose_the_miners_node():
        miners = ray_cluster.processes_on(ray_cluster.miner.node_id, "Miner")
        assert miners, "the miner runs on the miner node"
        ray_cluster.remove(ray_cluster.miner.node_id)
        _gone(miners)

    summary = _train_losing(cfg, lose_the_miners_node)
    assert summary["steps"] == _steps(synth_shards)
    assert len(_attempts(cfg.run_dir)) == 1, "a lost miner never restarts training"
    (epoch,) = RunDir(cfg.run_dir).rows("epoch")
    counted = sum(epoch[f"mining/fallback_{why}"] for why in ("timeout", "busy", "actor_died", "error"))
    assert 0 < epoch["mining/fallback_rate"] < 1.0, "the miner served the steps before its node was lost, not after"
    assert counted == epoch["mining/fallback_rate"] * epoch["mining/requests"] > 0, "every fallback counted"
