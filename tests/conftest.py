"""Shared fixtures. Ray runs in token-auth mode with HOME in a temp dir, so tests never touch ~/.ray."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="raytt-test-home-")
os.environ["HOME"] = _HOME
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from raytt.sequences import BuildConfig, build_shards  # noqa: E402
from raytt.bank import scan_bank  # noqa: E402
from raytt.synth import SynthConfig, generate  # noqa: E402

QUIET = lambda *_: None  # noqa: E731
SMALL = SynthConfig(num_vectors=4000, dim=64, latent_dim=16)


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
def ray_local():
    """One local Ray instance for the session, sized explicitly: 2 training workers plus a CPU for Ray Data.

    The dashboard (bound to 127.0.0.1) is on because Ray Train's placement-group cleaner asks its state
    API whether a trial's controller is still alive: without it, a trial ASHA stops keeps its CPUs.
    """
    import ray

    ray.init(num_cpus=3, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
