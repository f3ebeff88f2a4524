"""What a run asks Ray for, checked against what the cluster has or could ever have, before anything starts.

A request that can never be met (a GPU on a machine without one, a worker larger than any node,
more CPUs than a fixed cluster holds) is refused at once, naming what was asked and what exists:
Ray itself would wait for it forever. A request that a busy shared cluster, or an autoscaler, may
meet later waits at most `resource_timeout_s`, saying what it waits for.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from raytt.errors import RayttError
from raytt.progress import say

POLL_S = 2.0
SAY_EVERY_S = 30.0


class ResourceError(RayttError):
    """The cluster cannot (or did not in time) provide what a run asks for."""


@dataclass(frozen=True)
class Ask:
    """`count` identical bundles of one kind, each needing `cpus`, `gpus` and any custom `resources` on one node.

    Custom resources (`{"miner": 1}`) are how a cluster pins work to node types: a node started with
    `ray start --resources='{"miner": 4}'` is the only place such a bundle fits.
    """

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    resources: tuple[tuple[str, float], ...] = ()

    def needs(self) -> dict[str, float]:
        """One bundle's resources, by Ray's names."""
        return {"CPU": self.cpus, "GPU": self.gpus, **dict(self.resources)}

    def describe(self) -> str:
        each = " + ".join(f"{v:g} {k}" for k, v in self.needs().items() if v or k == "CPU")
        return f"{self.count} {self.what} x {each}" if self.count != 1 else f"{self.what} {each}"


@dataclass(frozen=True)
class Request:
    """Everything a run (or a search) needs at once."""

    asks: tuple[Ask, ...]

    def total(self, key: str) -> float:
        return sum(a.count * a.needs().get(key, 0.0) for a in self.asks)

    def resource_names(self) -> list[str]:
        """CPU, GPU and every custom resource some ask needs."""
        extra = sorted({k for a in self.asks for k, _ in a.resources})
        return ["CPU", "GPU", *extra]

    def describe(self) -> str:
        parts = "; ".join(a.describe() for a in self.asks if a.count)
        return f"{parts} (in all {self.total('CPU'):g} CPU, {self.total('GPU'):g} GPU)"


@dataclass(frozen=True)
class Capacity:
    """What a cluster holds: the shapes a node can have, the most it can ever hold, and where it is."""

    shapes: tuple[dict, ...]
    most: dict
    where: str

    def describe(self) -> str:
        return f"{self.where} has at most {self.most.get('CPU', 0):g} CPU and {self.most.get('GPU', 0):g} GPU"


def check(request: Request, capacity: Capacity) -> None:
    """Refuse a request this cluster can never meet: a bundle no node fits, or more than it can ever hold."""
    for ask in request.asks:
        if ask.count and not any(_fits(ask, shape) for shape in capacity.shapes):
            raise ResourceError(_no_node(request, ask, capacity))
    for key in request.resource_names():
        if request.total(key) > capacity.most.get(key, 0) + 1e-9:
            raise ResourceError(
                f"asked for {request.describe()}, but {capacity.describe()}"
                + (f" and {capacity.most.get(key, 0):g} {key}" if key not in ("CPU", "GPU") else "")
                + "; lower workers, threads_per_worker or mining.actors, or join a larger cluster"
            )


def _fits(ask: Ask, shape: dict) -> bool:
    return all(v <= shape.get(k, 0) + 1e-9 for k, v in ask.needs().items())


def _no_node(request: Request, ask: Ask, capacity: Capacity) -> str:
    """Why no node can hold one bundle of `ask`: a custom resource nowhere, or too few CPUs/GPUs."""
    absent = [k for k, _ in ask.resources if not any(s.get(k, 0) for s in capacity.shapes)]
    if absent:
        return (
            f"asked for {request.describe()}, but no node of {capacity.where} has the custom resource(s) "
            f"{absent} one {ask.what} needs; start nodes with `ray start --resources='{{\"{absent[0]}\": N}}'` "
            "or drop it from worker_resources / mining.resources"
        )
    largest = max(capacity.shapes, key=lambda s: (s.get("GPU", 0), s.get("CPU", 0)), default={})
    return (
        f"asked for {request.describe()}, but no node can hold one {ask.what} "
        f"({ask.cpus:g} CPU, {ask.gpus:g} GPU): the largest node of {capacity.where} has "
        f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU" + _hint(ask)
    )


def _hint(ask: Ask) -> str:
    if ask.gpus:
        return "; set use_gpu: false (and mining.actor_gpus: 0) to run on CPUs, or join a cluster with GPUs"
    return "; lower threads_per_worker / mining.actor_cpus"


def private_capacity(cpus: float) -> Capacity:
    """The private Ray `session.start_ray` would start here: sized for the run, with this machine's GPUs."""
    return Capacity(
        ({"CPU": cpus, "GPU": local_gpus()},),
        {"CPU": cpus, "GPU": local_gpus()},
        "this machine (no Ray cluster joined)",
    )


def local_gpus() -> int:
    """CUDA devices this process can see (0 without torch's CUDA build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cluster_capacity() -> Capacity:
    """The connected cluster: its live nodes, and what its autoscaler may still add."""
    import ray
    from ray._private.state import state

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    keys = {"CPU", "GPU"} | {k for n in nodes for k in n}
    most = {k: sum(n.get(k, 0) for n in nodes) for k in keys}
    shapes = list(nodes)
    config = state.get_cluster_config()
    if config is not None:
        shapes += [dict(group.resources) for group in config.node_group_configs]
        scaled = state.get_max_resources_from_cluster_config() or {}
        most = {k: max(most.get(k, 0), scaled.get(k, 0)) for k in keys | set(scaled)}
    where = "this Ray cluster" + (" (autoscaling)" if config is not None else "")
    return Capacity(tuple(shapes), most, where)


def free() -> dict:
    import ray

    return {"CPU": 0.0, "GPU": 0.0, **ray.available_resources()}


def wait_until_free(
    request: Request, timeout_s: float, progress: Callable[[str], None] = say, free_now: Callable[[], dict] = free
) -> None:
    """Wait (at most `timeout_s`) until the cluster has the request's CPUs and GPUs free, saying what is pending."""
    started = time.monotonic()
    said = -math.inf
    while True:
        now = free_now()
        wanted = {k: request.total(k) for k in request.resource_names()}
        short = {k: v - now.get(k, 0) for k, v in wanted.items() if v > now.get(k, 0) + 1e-9}
        if not short:
            return
        waited = time.monotonic() - started
        pending = ", ".join(f"{v:g} more {k}" for k, v in short.items())
        if waited >= timeout_s:
            raise ResourceError(
                f"asked for {request.describe()}; after {waited:.0f}s the cluster still lacks "
                f"{pending} (free: {now['CPU']:g} CPU, {now['GPU']:g} GPU). Other work holds them: "
                f"free them, or raise resource_timeout_s (now {timeout_s:g})"
            )
        if waited - said >= SAY_EVERY_S:
            progress(
                f"resources: waiting for {pending} (asked for {request.describe()}; free now "
                f"{now['CPU']:g} CPU, {now['GPU']:g} GPU; giving up after {timeout_s:g}s)"
            )
            said = waited
        time.sleep(POLL_S)


def joins_cluster() -> bool:
    """Whether `session.start_ray` joins an existing Ray (this process's, or RAY_ADDRESS's) instead of starting one."""
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
