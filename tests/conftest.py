"""Shared fixtures. Ray runs in token-auth mode with HOME in a temp dir, so tests never touch ~/.ray.

One Ray instance serves the session, and every test that uses it must give it back as it found it:
every CPU free, no placement group, no actor of its own left alive. A test that leaks fails, and
the instance is restarted so the tests after it start clean.
"""

import os
import secrets
import tempfile
import time
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="raytt-test-home-")
os.environ["HOME"] = _HOME
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
from helpers import QUIET, SMALL, LocalCluster, fake_run  # noqa: E402

from raytt.bank import scan_bank  # noqa: E402
from raytt.sequences import BuildConfig, build_shards  # noqa: E402
from raytt.synthetic import generate  # noqa: E402

RAY_CPUS = 3
RAY_FIXTURES = {"ray_local", "ray_head", "ray_cluster"}  # a test using one of these is in the `integration` tier
RELEASE_S = 120  # the longest a finished test's Ray work may take to hand its resources back
# Ray's own detached helpers: library singletons (created once per cluster), and Ray Train's placement-group
# cleaner, which ends itself once the dashboard reports its controller gone. They hold no CPU; not a test's leak.
RAY_HELPERS = {
    "_AutoscalingCoordinatorActor",
    "_StatsActor",
    "ActorLocationTracker",
    "TrainStateActor",
    "PlacementGroupCleaner",
}


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts Ray (through a Ray fixture) `integration`: `make test-fast` leaves them out."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def synth_bank(tmp_path_factory):
    """A small synthetic bank shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("synth") / "bank"
    generate(SMALL, path, progress=QUIET)
    return path


@pytest.fixture(scope="session")
def synth_shards(synth_bank, tmp_path_factory):
    path = tmp_path_factory.mktemp("shards") / "shards"
    build_shards(scan_bank(synth_bank), path, BuildConfig(context_len=4), progress=QUIET)
    return path


@pytest.fixture(scope="session")
def exported(synth_shards, tmp_path_factory):
    """A seeded GRU tower's run and its export (IVF index, calibrated): (run, export folder)."""
    from raytt.export import export

    root = tmp_path_factory.mktemp("export")
    run = fake_run(root, synth_shards)
    return run, export(run, root / "export", factory="IVF16,Flat", progress=QUIET)


class RayInstance:
    """The session's local Ray, sized explicitly: 2 training workers plus a CPU for Ray Data.

    The dashboard (bound to 127.0.0.1) is on because Ray Train's placement-group cleaner asks its state
    API whether a trial's controller is still alive.
    """

    def __init__(self) -> None:
        self.up = False

    def start(self):
        import ray

        if not self.up:
            ray.init(num_cpus=RAY_CPUS, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
            self.up = True
        return ray

    def stop(self) -> None:
        import ray

        ray.shutdown()
        self.up = False


@pytest.fixture(scope="session")
def ray_instance():
    instance = RayInstance()
    yield instance
    instance.stop()


@pytest.fixture
def ray_local(ray_instance):
    """The session's Ray; the test fails if it leaves placement groups, actors or busy CPUs behind."""
    ray = ray_instance.start()
    before = {a["ActorID"] for a in _live_actors()}
    yield ray
    leaked = _await_release(before)
    if leaked:
        ray_instance.stop()
        pytest.fail(f"the test left Ray work behind after {RELEASE_S}s: {leaked}", pytrace=False)


@pytest.fixture
def ray_cluster(ray_instance):
    """A four-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), this process connected to it.

    The session's Ray is stopped first; the cluster (every node and what ran on it) is shut down after,
    so nothing it did reaches the next test. Its nodes read the session's token file (Ray keeps the
    first token it loads for the life of the process, so every cluster here must share it).
    """
    import ray

    ray_instance.stop()
    token = Path(_HOME) / ".ray" / "auth_token"
    if not token.exists():
        token.parent.mkdir(exist_ok=True)
        token.write_text(secrets.token_hex(32))
    cluster = LocalCluster.start()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(autouse=True)
def _no_private_ray(request, ray_instance):
    """A test that does not ask for `ray_local` must not leave a Ray of its own running in this process."""
    import ray

    yield
    if ray.is_initialized() and not ray_instance.up:
        ray.shutdown()
        pytest.fail("the test started Ray in the test process without the ray_local fixture", pytrace=False)


def _live_actors() -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values() if a["State"] != "DEAD"]


def leftovers(before: set[str]) -> dict:
    """Placement groups, actors started since `before` (Ray's singletons aside) and CPUs not free."""
    import ray

    groups = [k for k, v in ray.util.placement_group_table().items() if v["state"] != "REMOVED"]
    actors = [
        f"{a['ActorClassName']}({a['State']})"
        for a in _live_actors()
        if a["ActorID"] not in before and a["ActorClassName"] not in RAY_HELPERS
    ]
    busy = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    found = {"placement_groups": groups, "actors": actors, "busy_cpus": busy}
    return {k: v for k, v in found.items() if v}


def _await_release(before: set[str]) -> dict:
    """Poll until the test's Ray work is gone; what is still there after RELEASE_S is a leak."""
    deadline = time.monotonic() + RELEASE_S
    while True:
        left = leftovers(before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)
