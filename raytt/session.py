"""Joining Ray: the cluster at RAY_ADDRESS (`ray job submit` sets it), or a private one sized for the work."""

from __future__ import annotations

import math
import os


def start_ray(cpus: float) -> None:
    """Connect once per process; a private local Ray gets at least `cpus` logical CPUs (or every core)."""
    import ray

    if ray.is_initialized():
        pass
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(logging_config=ray.LoggingConfig(log_level="WARNING"))
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)),
            logging_config=ray.LoggingConfig(log_level="WARNING"),
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        )
    ray.data.DataContext.get_current().enable_progress_bars = False


def release_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor has died; returns how many were removed.

    Ray frees a placement group only when both the job and the actor that created it are gone. In a
    long-lived driver (a search, a notebook, a test session) a Ray Train controller that ends with its
    Tune trial would leave its workers' group holding their CPUs; Ray Train's own cleaner removes it
    through the dashboard's state API, which a loaded or dashboard-less cluster may not answer.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    orphans = [g for g in actor_placement_groups() if g.creator_actor_dead and not g.is_detached]
    for group in orphans:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
    return len(orphans)


def actor_placement_groups() -> list:
    """This job's placement groups that actors (Ray Train controllers) created and that are not yet removed."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    job, nil = ray.get_runtime_context().get_job_id(), ray.ActorID.nil().binary()
    groups = [
        gcs_pb2.PlacementGroupTableData.FromString(raw)
        for raw in state._connect_and_get_accessor().get_placement_group_table()
    ]
    return [
        g
        for g in groups
        if g.creator_actor_id != nil
        and g.creator_job_id.hex() == job
        and g.state != gcs_pb2.PlacementGroupTableData.REMOVED
    ]
