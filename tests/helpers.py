"""Helpers the tests share (imported as `from helpers import ...`; conftest holds only fixtures and hooks)."""

from dataclasses import dataclass

import numpy as np

from raytt.synthetic import SynthConfig

QUIET = lambda *_: None
SMALL = SynthConfig(num_vectors=4000, dim=64, latent_dim=16)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random unit vectors of dimension d."""
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


STORE_BYTES = 100 * 1024 * 1024  # each test node's object store: small, so four fit in /dev/shm


@dataclass
class LocalCluster:
    """Ray's own multi-node test harness, shaped for raytt on 2 cores: a head (1 CPU, the driver's and Ray
    Data's), two `trainer` nodes (2 CPUs each) for training workers, a `miner` node (1 CPU) for miners."""

    cluster: object  # ray.cluster_utils.Cluster
    trainers: list
    miner: object

    @classmethod
    def start(cls) -> "LocalCluster":
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "object_store_memory": STORE_BYTES, "dashboard_host": "127.0.0.1"},
        )
        trainers = [
            cluster.add_node(num_cpus=2, resources={"trainer": 2}, object_store_memory=STORE_BYTES) for _ in range(2)
        ]
        miner = cluster.add_node(num_cpus=1, resources={"miner": 1}, object_store_memory=STORE_BYTES)
        cluster.wait_for_nodes()
        return cls(cluster, trainers, miner)

    @property
    def address(self) -> str:
        return self.cluster.address

    def node(self, node_id: str):
        """The cluster's node with this Ray node id."""
        return next(n for n in self.cluster.list_all_nodes() if n.node_id == node_id)

    def processes_on(self, node_id: str, title: str) -> list[int]:
        """Pids of the node's worker processes whose command line (Ray's process title) names `title`."""
        import psutil
        from ray._private import ray_constants

        raylet = self.node(node_id).all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        found = []
        for child in psutil.Process(raylet).children(recursive=True):
            try:
                if title in " ".join(child.cmdline()):
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def remove(self, node_id: str) -> None:
        """Lose a node as a preempted machine would: its raylet and every process on it end."""
        self.cluster.remove_node(self.node(node_id), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def fake_run(
    root, shards, query: str = "gru", dim: int = 64, seed: int = 0, doc: str = "identity", embedder_id: str = ""
):
    """A run directory as `raytt train` leaves one (config.yaml, best/), holding a seeded untrained tower
    (its meta names `embedder_id` when given, as a trained run's does)."""
    import dataclasses

    import torch

    from raytt import checkpoints, config
    from raytt.towers import TowerConfig, TwoTower
    from raytt.training.config import TrainConfig

    tower = TowerConfig(query=query, hidden=32, doc=doc)
    torch.manual_seed(seed)
    model = TwoTower(tower, dim)
    run = root / "run"
    (run / "best").mkdir(parents=True)
    config.dump(config.from_dict(TrainConfig, {"name": "run", "data": {"shards": str(shards)}}), run / "config.yaml")
    meta = {"step": 1, "epoch": 1, "tower": dataclasses.asdict(tower), "dim": dim}
    meta |= {"embedder_id": embedder_id} if embedder_id else {}
    checkpoints.save(run / "best", model, {}, meta)
    return run
