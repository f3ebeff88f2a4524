"""`ray job submit` against a real Ray head started here: token auth on, dashboard on 127.0.0.1, always stopped."""

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from raytt.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)


def _free_ports(n: int) -> list[int]:
    """n distinct ports free right now (held open together so the kernel cannot hand one out twice)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of this head: those naming its temp dir, and all their descendants (workers, job drivers)."""
    roots = []
    for proc in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(proc.info["cmdline"] or []):
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update({c.pid: c for c in proc.children(recursive=True)})
    return list(found.values())


def _stop(temp_dir: str) -> None:
    """Stop this head only (`ray stop` would stop every Ray on the machine, the test session's own included)."""
    procs = _head_processes(temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def ray_head():
    """A Ray head on this machine: its own token, ports and temp dir; the dashboard and job API on 127.0.0.1."""
    # short (Ray's unix socket paths must stay < 108 bytes), and named ray/ so RAY_TMPDIR=<parent> finds the
    # address `ray start` records there, as /tmp/ray/ray_current_cluster is found on a real head
    temp_dir = str(Path(tempfile.mkdtemp(prefix="rtt-", dir="/tmp")) / "ray")
    Path(temp_dir).mkdir()
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    cmd = [
        RAY,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--num-cpus",
        "4",
        "--num-gpus",
        "0",
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
        *[str(x) for flag, port in ports.items() for x in (flag, port)],
    ]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        yield {
            "env": env,
            "address": f"http://127.0.0.1:{ports['--dashboard-port']}",
            "temp_dir": temp_dir,
            "dashboard_port": ports["--dashboard-port"],
            "gcs_port": ports["--port"],
        }
    finally:
        _stop(temp_dir)
    assert not _head_processes(temp_dir), "the head left processes behind"


def _job(
    head: dict, command: str, *args: str, env: dict | None = None, timeout: int = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", command, "--address", head["address"], *args],
        env=env or head["env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_training_through_ray_job_submit(ray_head, synth_bank, synth_shards, tmp_path):
    listening = [
        c
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_head["dashboard_port"]
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening), "the dashboard must not be exposed"

    refused = _job(ray_head, "list", env={**ray_head["env"], "RAY_AUTH_TOKEN": "not-the-token"})
    assert refused.returncode != 0, "a wrong token must be refused"

    storage = tmp_path / "runs"
    overrides = [
        f"data.bank={synth_bank}",
        f"data.shards={synth_shards}",
        f"storage={storage}",
        "name=submitted",
        "workers=2",
        "optim.epochs=2",
        "data.batch_size=64",
        "data.shuffle_buffer=2000",
        "tower.hidden=64",
        "val_queries=300",
        "checkpoint_every=20",
        "log_every=10",
    ]
    submission = f"raytt-test-{secrets.token_hex(4)}"
    submitted = _job(
        ray_head,
        "submit",
        "--submission-id",
        submission,
        "--working-dir",
        str(REPO),
        "--",
        sys.executable,
        "jobs/train.py",
        "--config",
        "configs/demo.yaml",
        *[x for o in overrides for x in ("--set", o)],
        "--eval",
        "test",
        timeout=600,
    )
    status = _job(ray_head, "status", submission)
    assert "succeeded" in status.stdout.lower(), (
        f"job did not succeed:\n{status.stdout}\n{submitted.stdout[-4000:]}\n{submitted.stderr[-4000:]}"
    )
    assert "raytt: joined the Ray cluster" in submitted.stdout and "train: done" in submitted.stdout

    run = storage / "submitted"
    rows = RunDir(run).rows()
    assert [r["epoch"] for r in rows if "val/R@10" in r] == [1, 2]
    assert sorted(run.glob("checkpoint_*")) and (run / "best" / "model.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "eval" / "test" / "report.json").read_text())
    assert summary["epochs"] == 2 and report["split"] == "test"
    assert report["views"]["all"]["model"]["R@10"] > 0

    on_head = subprocess.run(
        [
            sys.executable,
            "jobs/train.py",
            "--config",
            "configs/demo.yaml",
            "--set",
            f"data.shards={tmp_path / 'missing'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**ray_head["env"], "RAY_TMPDIR": str(Path(ray_head["temp_dir"]).parent)},
    )
    joined = f":{ray_head['gcs_port']}: 1 node(s), 4 CPU"  # Ray reports the host's address, not 127.0.0.1
    assert "raytt: joined the Ray cluster at " in on_head.stdout and joined in on_head.stdout, (
        f"with no RAY_ADDRESS, join the head `ray start` recorded:\n{on_head.stdout[-2000:]}\n{on_head.stderr[-2000:]}"
    )
    assert on_head.returncode == 2 and "missing" in on_head.stderr
