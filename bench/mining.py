"""Mining benchmark: the miner pool against in-process mining, training with and without mining, memory.

(a) Queries/s of one miner actor (requests pipelined over the object store, two in flight) against
    the same `Miner` code called in this process on the same index: the price of the actor hop.
    Target >= 0.8. Per index kind (exact flat, FAISS IVF), mining by the model's query vectors.
(b) Training step time with asynchronous mining against no mining: bank 100k x 384, batch 256, one
    training worker and one miner, each with one core. Target <= 1.15. Two baselines: the other core
    idle, and the other core busy with a matmul loop in the miner's place (on a 2-core machine the
    miner takes the core that otherwise absorbs Ray's own work). The fallback rate is printed beside
    it: a step waits at most mining.timeout_s, so a miner slower than training shows up as waiting
    (up to the timeout) and then as fallbacks. The exact index is left out here: (a) shows one core
    of it serves fewer queries/s than one training worker consumes.
(c) Node memory with 1 and 4 miner actors against the bank's bytes: the bank once in the object store
    (shared, zero-copy) plus every miner's private memory (USS), and how much of that is index.
(d) FAISS index_factory strings for large banks (scalar and product quantisation): each index's private
    bytes per miner against the bank's, its build time, and the overlap of the negatives it mines with
    those the exact index mines for the same requests (the baseline, measured in the same run).

    python bench/mining.py [--vectors 100000] [--dim 384] [--workdir DIR] [--parts abcd]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raytt import config
from raytt.bank import load_bank, scan_bank
from raytt.mining.config import MiningConfig
from raytt.mining.index import default_nlist
from raytt.mining.messages import MineRequest, WeightsOffer
from raytt.mining.pool import Miner, MinerPool, model_state
from raytt.rundir import RunDir
from raytt.sequences import BuildConfig, build_shards, sample_windows
from raytt.synthetic import SynthConfig, generate
from raytt.towers import TowerConfig, TwoTower
from raytt.training.config import TrainConfig

QUIET = lambda *_: None
BATCH = 256
SCHEDULE = "0-999:8@0.0-0.99"


def requests(bank, n: int, weights) -> list[MineRequest]:
    """n mining requests of BATCH real windows (context 5), carrying the tower weights to encode with."""
    mining = config.load(MiningConfig, None, [f"schedule={SCHEDULE}"])
    spec = mining.spec(mining.curriculum.at(0))
    out = []
    for i in range(n):
        ctx, lengths, target = sample_windows(bank, 5, BATCH, seed=i)
        out.append(MineRequest(ctx, lengths, target, spec, i, weights))
    return out


def pool_vs_in_process(ray, bank, bank_ref, kind: str, n: int) -> tuple[float, float]:
    """(in-process q/s, pool q/s) for the same requests on the same index kind."""
    tower = TowerConfig(query="gru", residual=False)
    weights = WeightsOffer(time.time(), 0, ray.put(model_state(TwoTower(tower, bank.dim))), tower)
    reqs = requests(bank, n, weights)
    mining = config.load(MiningConfig, None, [f"schedule={SCHEDULE}", f"index={kind}", "actor_cpus=1"])
    local = Miner([bank_ref], mining, 0)
    local.mine(reqs[0])
    started = time.perf_counter()
    for r in reqs:
        local.mine(r)
    in_process = n * BATCH / (time.perf_counter() - started)
    del local
    pool = MinerPool(bank_ref, mining, progress=QUIET)
    ray.get(pool.submit(reqs[0], 0))
    started = time.perf_counter()
    pending = []
    for _i, r in enumerate(reqs):
        if len(pending) == 2:
            ray.get(pending.pop(0))
        pending.append(pool.submit(r, 0))
    ray.get(pending)
    via_pool = n * BATCH / (time.perf_counter() - started)
    pool.shutdown()
    return in_process, via_pool


def step_rate(
    bank_dir: Path, shards_dir: Path, storage: Path, name: str, mining: list[str], steps: int = 60, window: int = 10
) -> tuple[float, dict]:
    """Samples/s of a 1-worker training run (warm-up window dropped) and its mining metrics."""
    from raytt.training.driver import train

    shutil.rmtree(storage / name, ignore_errors=True)
    cfg = config.load(
        TrainConfig,
        None,
        [
            f"name={name}",
            f"storage={storage}",
            "workers=1",
            "threads_per_worker=1",
            f"data.bank={bank_dir}",
            f"data.shards={shards_dir}",
            f"data.batch_size={BATCH}",
            "data.shuffle_buffer=0",
            "data.cache=true",
            "tower.query=gru",
            "tower.residual=false",
            "loss.tau=0.1",
            f"optim.max_steps={steps}",
            f"log_every={window}",
            "checkpoint_every=100000",
            "val_queries=200",
            "optim.epochs=1000",
            "mining.actor_cpus=1",
            *mining,
        ],
    )
    train(cfg, progress=QUIET)
    rows = RunDir(cfg.run_dir).rows()
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][1:]
    mined = next((r for r in rows if "mining/requests" in r), {})
    return float(np.mean(rates)), mined


class BusyCore:
    """A single-threaded matmul loop in another process: a core taken, as a miner would take it."""

    def __enter__(self):
        code = "import numpy as np\na = np.ones((512, 512), np.float32)\nwhile True: a @ a"
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def miner_memory(ray, bank_ref, kind: str, actors: int) -> tuple[float, float]:
    """(private memory of all `actors` miners summed (USS), private index bytes per miner)."""
    import psutil

    mining = config.load(
        MiningConfig, None, [f"schedule={SCHEDULE}", f"index={kind}", f"actors={actors}", "actor_cpus=0.5"]
    )
    pool = MinerPool(bank_ref, mining, progress=QUIET)
    infos = ray.get([a.info.remote() for a in pool.actors])
    uss = sum(psutil.Process(i["pid"]).memory_full_info().uss for i in infos)
    pool.shutdown()
    return uss, infos[0]["private_bytes"]


def factory_strings(n: int, dim: int) -> list[tuple[str, str]]:
    """(index kind, factory string) pairs for part (d): the plain FAISS kinds, then quantised ones."""
    nlist = default_nlist(n)
    return [
        ("ivf", ""),
        ("hnsw", ""),
        ("factory", f"IVF{nlist},SQ8"),
        ("factory", f"IVF{nlist},PQ{dim // 8}"),
        ("factory", "HNSW32,SQ8"),
    ]


def negative_overlap(bank_ref, kind: str, factory: str, reqs: list) -> tuple[float, int, float]:
    """(mean share of the exact index's mined negatives this index also mines, its private bytes, build s)."""
    base = [f"schedule={SCHEDULE}", "actor_cpus=1"]
    exact = Miner([bank_ref], config.load(MiningConfig, None, [*base, "index=flat"]), 0)
    other = Miner([bank_ref], config.load(MiningConfig, None, [*base, f"index={kind}", f"factory={factory}"]), 0)
    shares = []
    for r in reqs:
        want, got = exact.mine(r).keys, other.mine(r).keys
        for a, b in zip(want, got):
            truth = set(a[a >= 0].tolist())
            if truth:
                shares.append(len(truth & set(b[b >= 0].tolist())) / len(truth))
    return float(np.mean(shares)), other.index.private_bytes, other.index.build_seconds


def part_d(ray, bank, bank_ref, n_requests: int) -> None:
    print("(d) FAISS index_factory strings: private bytes per miner, build time, mined negatives vs the exact index:")
    tower = TowerConfig(query="gru", residual=False)
    weights = WeightsOffer(time.time(), 0, ray.put(model_state(TwoTower(tower, bank.dim))), tower)
    reqs = requests(bank, n_requests, weights)
    for kind, factory in factory_strings(bank.num_vectors, bank.dim):
        overlap, private, build_s = negative_overlap(bank_ref, kind, factory, reqs)
        print(
            f"    {factory or kind:<16} private {private / 2**20:7,.0f} MiB ({private / bank.vectors.nbytes:.2f}x "
            f"bank) | built in {build_s:5.1f}s | mined negatives shared with exact {overlap:.1%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parts", default="abcd", help="which parts to run, e.g. d")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="raytt-bench-mining-"))
    bank_dir, shards_dir = work / "bank", work / "shards"
    if not bank_dir.exists():
        generate(SynthConfig(num_vectors=args.vectors, dim=args.dim), bank_dir, progress=QUIET)
    if not shards_dir.exists():
        build_shards(scan_bank(bank_dir), shards_dir, BuildConfig(context_len=5), progress=QUIET)
    import ray

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores + 2, include_dashboard=False, log_to_driver=False)
    bank = load_bank(bank_dir)
    bank_ref = ray.put(bank)
    print(
        f"mining bench: {args.vectors:,} x {args.dim} synthetic bank ({bank.vectors.nbytes / 2**20:,.0f} MiB), "
        f"batch {BATCH}, {cores} cores"
    )

    if "a" in args.parts:
        part_a(ray, bank, bank_ref, args.requests)
    if "b" in args.parts:
        part_b(bank_dir, shards_dir, work)
    if "c" in args.parts:
        part_c(ray, bank, bank_ref)
    if "d" in args.parts:
        part_d(ray, bank, bank_ref, args.requests)
    ray.shutdown()


def part_a(ray, bank, bank_ref, n_requests: int) -> None:
    print("(a) miner actor vs the same miner in process (1 thread each, GRU query encoding + search + filters):")
    for kind in ("flat", "ivf"):
        local, pooled = pool_vs_in_process(ray, bank, bank_ref, kind, n_requests)
        print(
            f"    {kind:<5} in-process {local:,.0f} q/s | pool {pooled:,.0f} q/s | ratio {pooled / local:.2f} "
            f"(target >= 0.8)"
        )


def part_b(bank_dir: Path, shards_dir: Path, work: Path) -> None:
    print("(b) training step time, 1 worker + 1 miner, async mining vs none:")
    idle, _ = step_rate(bank_dir, shards_dir, work / "runs", "none", [])
    with BusyCore():
        busy, _ = step_rate(bank_dir, shards_dir, work / "runs", "none-busy", [])
    print(
        f"    no mining: {1000 * BATCH / idle:.0f} ms/step with the other core idle, {1000 * BATCH / busy:.0f} ms/step "
        f"with it busy"
    )
    for kind in ("ivf", "hnsw"):
        rate, mined = step_rate(
            bank_dir, shards_dir, work / "runs", kind, [f"mining.schedule={SCHEDULE}", f"mining.index={kind}"]
        )
        print(
            f"    {kind:<5} mining: {1000 * BATCH / rate:.0f} ms/step | "
            f"step-time ratio {idle / rate:.2f} vs idle core, "
            f"{busy / rate:.2f} vs busy core (target <= 1.15) | fallback "
            f"{mined.get('mining/fallback_rate', float('nan')):.0%}, miner latency p50 "
            f"{mined.get('mining/latency_ms_p50', float('nan')):.0f} ms"
        )


def part_c(ray, bank, bank_ref) -> None:
    print("(c) node memory: the shared bank once + each miner's private memory (USS), against the bank's bytes:")
    bank_bytes = bank.vectors.nbytes
    mib = 2**20
    for kind in ("flat", "ivf", "hnsw"):
        one, index_bytes = miner_memory(ray, bank_ref, kind, 1)
        four, _ = miner_memory(ray, bank_ref, kind, 4)
        print(
            f"    {kind:<5} 1 miner {(bank_bytes + one) / mib:,.0f} MiB "
            f"({(bank_bytes + one) / bank_bytes:.2f}x bank) | "
            f"4 miners {(bank_bytes + four) / mib:,.0f} MiB "
            f"({(bank_bytes + four) / bank_bytes:.2f}x bank) | per miner: "
            f"{four / 4 / mib:,.0f} MiB private, of which index {index_bytes / mib:,.0f} MiB "
            f"({index_bytes / bank_bytes:.2f}x bank), the rest the Python/torch/Ray process"
        )


if __name__ == "__main__":
    main()
