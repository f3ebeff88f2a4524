"""Kill soak: short 2-worker trainings on the synthetic bank, each hit by one random fault at a random step.

Faults: `worker` (kill -9 of a Ray Train worker process), `miner` (kill -9 of the miner actor's
process), `driver` (SIGINT of the `raytt train` driver, then the same command again, which resumes
the run), `node` (a whole node lost: the run joins a four-node Ray cluster started here with
`ray.cluster_utils.Cluster`, workers spread over two `trainer` nodes, and the node of a random
worker is removed; a fresh one replaces it before the next run). Every run must finish with the
fault-free run's final step count, lose no more steps than `checkpoint_every` (steps trained by an
attempt after the checkpoint the next attempt resumed from), and leave a `best/` that loads. Each
run is its own `raytt train` process, with its own private Ray except under `node`.

    python bench/soak.py [--runs 20] [--seed 0] [--faults worker,miner,driver,node] [--workdir DIR]

Prints one row per run as it ends, then the table: fault kind, runs, finished, max steps lost, and
wall time against a fault-free run of the same config measured first, in the same session.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from raytt import checkpoints
from raytt.bank import scan_bank
from raytt.rundir import RunDir
from raytt.sequences import BuildConfig, build_shards
from raytt.storage import read_json
from raytt.synthetic import SynthConfig, generate

FAULTS = ("worker", "miner", "driver", "node")
CHECKPOINT_EVERY = 10
PROCESS_OF = {"worker": "RayTrainWorker", "miner": "Miner"}  # in the process title Ray gives an actor's worker
RUN_LIMIT_S = 900


def command(data: Path, storage: Path, name: str) -> list[str]:
    """The soak's `raytt train`: 2 workers, a miner from epoch 0, a checkpoint every 10 steps, every step logged."""
    sets = [
        f"name={name}",
        f"storage={storage}",
        f"data.bank={data / 'bank'}",
        f"data.shards={data / 'shards'}",
        "workers=2",
        "data.batch_size=64",
        "data.shuffle_buffer=2000",
        "data.cache=true",
        "tower.query=gru",
        "tower.hidden=64",
        "tower.residual=false",
        "optim.epochs=2",
        "optim.warmup_steps=5",
        "val_queries=300",
        f"checkpoint_every={CHECKPOINT_EVERY}",
        "log_every=1",
        "max_failures=3",
        "mining.schedule=0-1:8@0.0-0.99",
        "mining.actor_cpus=0.5",
        "mining.timeout_s=1.0",
    ]
    return [sys.executable, "-m", "raytt.cli", "train", *[x for s in sets for x in ("--set", s)]]


# under `node`: one worker per trainer node, and the train split streamed (no cached blocks on a lost node)
NODE_SETS = ["placement=spread", "worker_resources.trainer=1", "data.cache=false"]
STORE_BYTES = 200 * 1024 * 1024


class SoakCluster:
    """The `node` fault's cluster: a head (2 CPUs: driver side, miner, Ray Data) and two `trainer` nodes."""

    def __init__(self) -> None:
        import secrets

        from ray.cluster_utils import Cluster

        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # every node and `raytt train` share it
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": STORE_BYTES})
        self.trainers: list = []
        self.refill()

    def refill(self) -> None:
        """Bring the `trainer` nodes back to two."""
        self.trainers = [n for n in self.trainers if n.node_id in self._alive()]
        while len(self.trainers) < 2:
            self.trainers.append(
                self.cluster.add_node(num_cpus=2, resources={"trainer": 2}, object_store_memory=STORE_BYTES)
            )
        self.cluster.wait_for_nodes()

    def _alive(self) -> set[str]:
        return {n.node_id for n in self.cluster.list_all_nodes()}

    def remove(self, node_id: str) -> None:
        node = next(n for n in self.trainers if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def remove_a_workers_node(run_dir: Path, cluster: SoakCluster, rng: random.Random) -> str:
    """Lose the node of a random worker of the run's latest attempt."""
    workers = RunDir(run_dir).starts()[-1]["workers"]
    victim = rng.choice(workers)
    cluster.remove(victim["node"])
    return f"removed node {victim['node'][:8]} (rank {victim['rank']})"


def prepare(data: Path) -> None:
    if (data / "shards" / "manifest.json").is_file():
        return
    generate(
        SynthConfig(num_vectors=8000, dim=64, latent_dim=16), data / "bank", overwrite=True, progress=lambda *_: None
    )
    build_shards(
        scan_bank(data / "bank"), data / "shards", BuildConfig(context_len=4), overwrite=True, progress=lambda *_: None
    )


@dataclass
class Outcome:
    fault: str
    at_step: int
    finished: bool
    steps: int
    lost: int
    seconds: float
    note: str


def latest_step(run_dir: Path) -> int:
    rows = RunDir(run_dir).all_rows()
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, deadline: float) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        if latest_step(run_dir) >= step:
            return True
        time.sleep(0.1)
    return False


def kill_actor_process(driver: subprocess.Popen, title: str, rng: random.Random) -> str:
    """SIGKILL one process of the driver's private Ray whose title names `title`; returns what was killed."""
    found = []
    for child in psutil.Process(driver.pid).children(recursive=True):
        try:
            if title in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    if not found:
        return f"no {title} process found"
    victim = rng.choice(found)
    victim.kill()
    return f"killed pid {victim.pid} ({title})"


def steps_lost(run_dir: Path) -> int:
    """Max over restarts: steps an attempt trained past the checkpoint the next attempt resumed from."""
    rows = RunDir(run_dir).all_rows()
    starts = {r["attempt"]: r["step"] for r in rows if r.get("kind") == "start"}
    lost = 0
    for attempt, resumed in starts.items():
        before = [r["step"] for r in rows if r.get("kind") == "train" and r.get("attempt", 0) < attempt]
        if before and attempt > 1:
            lost = max(lost, max(before) - resumed)
    return lost


def run_once(
    cmd: list[str],
    run_dir: Path,
    fault: str | None,
    at_step: int,
    rng: random.Random,
    cluster: SoakCluster | None = None,
) -> Outcome:
    """One training, with `fault` injected once `at_step` has been logged (None: fault-free).

    With `cluster` the run joins it (RAY_ADDRESS) instead of starting a private Ray.
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + RUN_LIMIT_S
    env = {**os.environ, "RAY_ADDRESS": cluster.cluster.address} if cluster else None
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")  # noqa: SIM115 - both Popen calls below write to it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    note = ""
    try:
        if fault and wait_for_step(proc, run_dir, at_step, deadline):
            if fault == "driver":
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                note = f"SIGINT at step {latest_step(run_dir)}, exit {proc.returncode}; re-run"
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            elif fault == "node":
                note = remove_a_workers_node(run_dir, cluster, rng)
            else:
                note = kill_actor_process(proc, PROCESS_OF[fault], rng)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        note += f"; still running after {RUN_LIMIT_S}s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    seconds = time.monotonic() - started
    summary = run_dir / "summary.json"
    steps = read_json(summary, "summary")["steps"] if summary.is_file() else 0
    finished = proc.returncode == 0 and summary.is_file() and loads(run_dir / "best")
    if fault == "miner":
        note += f"; {fallbacks(run_dir)}"
    return Outcome(fault or "none", at_step, finished, steps, steps_lost(run_dir), seconds, note)


def fallbacks(run_dir: Path) -> str:
    """The mining fallbacks the run's epochs counted, by reason."""
    epochs = RunDir(run_dir).rows("epoch")
    counts = {
        reason: sum(r.get(f"mining/fallback_{reason}", 0) for r in epochs)
        for reason in ("actor_died", "timeout", "error", "busy")
    }
    return (
        "fallbacks " + ", ".join(f"{k} {v:.0f}" for k, v in counts.items() if v)
        if any(counts.values())
        else "no fallbacks counted"
    )


def loads(best: Path) -> bool:
    try:
        checkpoints.load_model(best)
        return True
    except Exception:
        return False


def table(outcomes: list[Outcome], base: Outcome) -> str:
    lines = [f"{'fault':<8}{'runs':>6}{'finished':>10}{'max steps lost':>16}{'wall vs fault-free':>20}"]
    for fault in FAULTS:
        rows = [o for o in outcomes if o.fault == fault]
        if not rows:
            continue
        good = [o for o in rows if o.finished and o.steps == base.steps]
        overhead = sum(o.seconds for o in rows) / len(rows) / base.seconds
        lines.append(
            f"{fault:<8}{len(rows):>6}{f'{len(good)}/{len(rows)}':>10}{max(o.lost for o in rows):>16}{overhead:>19.2f}x"
        )
    total = [o for o in outcomes if o.finished and o.steps == base.steps]
    lines.append(
        f"all: {len(total)}/{len(outcomes)} finished with {base.steps} steps (the fault-free count), max steps "
        f"lost {max((o.lost for o in outcomes), default=0)} (checkpoint_every {CHECKPOINT_EVERY}); fault-free "
        f"run {base.seconds:.0f}s"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated fault kinds to draw from")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    kinds = [k for k in args.faults.split(",") if k]
    unknown = sorted(set(kinds) - set(FAULTS))
    if unknown or not kinds:
        sys.exit(f"soak: --faults {args.faults!r}: choose from {', '.join(FAULTS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="raytt-soak-"))
    prepare(work / "data")
    rng = random.Random(args.seed)
    print(f"soak: {args.runs} runs in {work}", flush=True)
    base = run_once(command(work / "data", work / "runs", "fault-free"), work / "runs" / "fault-free", None, 0, rng)
    print(f"soak: fault-free run: {base.steps} steps in {base.seconds:.0f}s, finished {base.finished}", flush=True)
    if not base.finished:
        sys.exit("soak: the fault-free run did not finish; see its log")
    outcomes, cluster = [], None
    try:
        for i in range(args.runs):
            fault = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
            at_step = rng.randint(3, base.steps - 5)
            name = f"run{i:02d}-{fault}"
            cmd = command(work / "data", work / "runs", name)
            if fault == "node":
                cluster = cluster or SoakCluster()
                cluster.refill()
                cmd += [x for s in NODE_SETS for x in ("--set", s)]
            outcome = run_once(cmd, work / "runs" / name, fault, at_step, rng, cluster if fault == "node" else None)
            outcomes.append(outcome)
            report(name, at_step, outcome)
    finally:
        if cluster:
            cluster.shutdown()
    print(table(outcomes, base), flush=True)


def report(name: str, at_step: int, outcome: Outcome) -> None:
    print(
        f"soak: {name}: fault at step {at_step}: {outcome.note}; finished {outcome.finished}, {outcome.steps} "
        f"steps, lost {outcome.lost}, {outcome.seconds:.0f}s",
        flush=True,
    )


if __name__ == "__main__":
    main()
