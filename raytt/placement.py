"""Where a run's work lands on a Ray cluster: the plan before it starts, and what Ray actually did.

`plan` is what `raytt train --dry-run` prints: every bundle the run asks for, how the workers are
placed, and whether this cluster (or the private Ray a laptop run starts) can ever hold it. During
the run every worker names its node (`gather_workers`, in the attempt's start row and line); at the
end the driver records which nodes hold the bank and each node's object-store bytes
(`observe`), so "one bank copy per node" is a number in RUN/summary.json, not a hope.
"""

from __future__ import annotations

from raytt.resources import Capacity, Request


def node_id() -> str:
    """This process's Ray node id (hex)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def short(node: str) -> str:
    """A node id as lines print it: its first 8 hex digits."""
    return node[:8]


def gather_workers(rank: int, size: int, cpus: int, gpus: int) -> list[dict]:
    """Every worker's rank, node, pid and resources, gathered to all ranks (a collective: every rank calls it)."""
    import os

    import torch.distributed as dist

    mine = {"rank": rank, "node": node_id(), "pid": os.getpid(), "cpus": cpus, "gpus": gpus}
    if size == 1:
        return [mine]
    everyone: list = [None] * size
    dist.all_gather_object(everyone, mine)
    return everyone


def describe_workers(workers: list[dict], strategy: str) -> str:
    """One line: how many workers on how many nodes, and which rank runs where."""
    nodes = {w["node"] for w in workers}
    each = f"{workers[0]['cpus']} CPU" + (f" + {workers[0]['gpus']} GPU" if workers[0]["gpus"] else "")
    where = ", ".join(f"rank {w['rank']} on {short(w['node'])}" for w in workers)
    return f"{len(workers)} worker(s) x {each} on {len(nodes)} node(s) (placement {strategy}): {where}"


def observe(bank_ref, miner_nodes: list[str]) -> dict:
    """What Ray did with the run's shared objects: the nodes holding the bank, each node's store bytes, the miners."""
    import ray

    location = ray.experimental.get_object_locations([bank_ref])[bank_ref]
    stores = store_bytes_by_node()
    return {
        "bank_bytes": int(location["object_size"] or 0),
        "bank_nodes": sorted(n for n in location["node_ids"] if n in stores),  # a node just lost is still listed
        "store_bytes_by_node": stores,
        "miner_nodes": miner_nodes,
    }


def store_bytes_by_node() -> dict[str, int]:
    """Object-store bytes in use on every live node that answers (each raylet's own count).

    A node lost moments ago can still be listed alive (the head has not yet missed its heartbeats):
    it does not answer and is left out.
    """
    import ray
    from ray._private.internal_api import node_stats

    used = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        try:
            reply = node_stats(node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False)
        except Exception:  # grpc's errors for a raylet that is gone
            continue
        used[node["NodeID"]] = int(reply.store_stats.object_store_bytes_used)
    return used


def describe_observed(seen: dict) -> str:
    """The end-of-run placement line: bank copies per node and the largest store, against the bank's size."""
    mib = 1 << 20
    largest = max(seen["store_bytes_by_node"].values(), default=0)
    return (
        f"placement: the bank ({seen['bank_bytes'] / mib:.1f} MiB) is held by {len(seen['bank_nodes'])} node(s), one "
        f"copy each; the fullest object store holds {largest / mib:.1f} MiB; miners on "
        f"{', '.join(short(n) for n in seen['miner_nodes']) or 'no node'}"
    )


def plan(request: Request, capacity: Capacity, strategy: str) -> list[str]:
    """What `--dry-run` prints: each bundle, the workers' placement, and where it would run."""
    lines = [f"plan: {ask.describe()}" for ask in request.asks if ask.count]
    lines.append(f"plan: workers placed {strategy} ({PLACEMENT_MEANING[strategy]})")
    lines.append(f"plan: in all {request.describe().split('(in all ')[-1].rstrip(')')}; {capacity.describe()}")
    return lines


PLACEMENT_MEANING = {
    "pack": "as few nodes as they fit on: fastest all-reduce",
    "spread": "one per node where the cluster allows: a lost node costs fewer workers",
}
