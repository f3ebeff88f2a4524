"""Training throughput: the raytt pipeline (Ray Data -> Ray Train workers) against a bare PyTorch loop.

Same model (GRU query tower, hidden = dim), same loss (InfoNCE), same batch size, same machine. The
baseline is the tightest loop there is: context vectors already gathered into in-memory tensors, no
Ray, no data pipeline, all cores. raytt is measured from its own metrics.jsonl (samples/s per logging
window, warm-up window dropped) with 1 worker (all cores) and 2 workers (one core each). Printed as
ratios to the baseline (target >= 0.9 for 1 worker), at context 5 and context 100, dim 768. The
measured steps lie inside the first epoch; the one-off start of an epoch's Ray Data stream (about 2 s
here) and the per-epoch validation are outside the windows, as they are outside the bare loop.

With `--device cuda` both sides run on the GPU (raytt: `use_gpu`, one GPU per worker; 2 workers only
when there are 2 GPUs), and `--precision bf16` puts both under bf16 autocast.

    python bench/train_throughput.py [--dim 768] [--vectors 20000] [--workdir DIR] [--device cuda --precision bf16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raytt import config
from raytt.bank import load_bank, scan_bank
from raytt.losses.objective import Batch, LossConfig, objective
from raytt.rundir import RunDir
from raytt.sequences import BuildConfig, build_shards, open_shards
from raytt.synthetic import SynthConfig, generate
from raytt.towers import TowerConfig, TwoTower
from raytt.training.config import TrainConfig

SETTINGS = {5: {"batch": 256, "steps": 60, "window": 10}, 100: {"batch": 64, "steps": 24, "window": 6}}
GPU_SETTINGS = {5: {"batch": 256, "steps": 300, "window": 50}, 100: {"batch": 64, "steps": 120, "window": 20}}


def bare_loop(
    bank: np.ndarray,
    shards,
    k: int,
    batch: int,
    steps: int,
    window: int,
    threads: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> float:
    """Samples/s of a plain loop over pre-gathered in-memory tensors (first window dropped as warm-up)."""
    torch.set_num_threads(threads)
    table = shards.read("train")
    keys = np.stack(table.column("context_keys").to_numpy(zero_copy_only=False))[: batch * steps]
    target = table.column("target_key").to_numpy()[: batch * steps]
    ctx = torch.as_tensor(bank[np.clip(keys, 0, None)] * (keys >= 0)[..., None]).to(device)
    lengths = torch.as_tensor(table.column("context_len").to_numpy()[: batch * steps].astype(np.int64)).to(device)
    pos = torch.as_tensor(bank[target]).to(device)
    tk = torch.as_tensor(target).to(device)
    torch.manual_seed(0)
    model = TwoTower(TowerConfig(query="gru", residual=False), bank.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_cfg = LossConfig(tau=0.1)
    start = None
    for step in range(steps):
        if step == window:
            _sync(device)
            start = time.perf_counter()
        s = slice(step * batch, (step + 1) * batch)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            q, p, _ = model(ctx[s], lengths[s], pos[s])
        q, p = q.float(), p.float()
        loss = objective(loss_cfg, Batch(q, p, tk[s], p, tk[s], 0))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    _sync(device)
    return (steps - window) * batch / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def raytt_run(
    bank_dir: Path,
    shards_dir: Path,
    storage: Path,
    name: str,
    workers: int,
    threads: int,
    batch: int,
    steps: int,
    window: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> float:
    """Samples/s of `raytt train` from its metrics.jsonl, warm-up window dropped."""
    import shutil

    from raytt.training.driver import train

    shutil.rmtree(storage / name, ignore_errors=True)
    cfg = config.load(
        TrainConfig,
        None,
        [
            f"name={name}",
            f"storage={storage}",
            f"workers={workers}",
            f"threads_per_worker={threads}",
            f"data.bank={bank_dir}",
            f"data.shards={shards_dir}",
            f"data.batch_size={batch}",
            "data.shuffle_buffer=0",
            "tower.query=gru",
            "tower.residual=false",
            "loss.tau=0.1",
            f"optim.max_steps={steps}",
            f"use_gpu={device == 'cuda'}",
            f"precision={precision}",
            f"log_every={window}",
            "checkpoint_every=100000",
            "val_queries=200",
            "optim.epochs=1000",
        ],
    )
    train(cfg, progress=lambda *_: None)
    rows = RunDir(cfg.run_dir).rows()
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][1:]
    return float(np.mean(rates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--vectors", type=int, default=60_000)
    ap.add_argument("--contexts", default="5,100", help="context lengths to measure")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and not gpus:
        raise SystemExit("train_throughput: --device cuda, but torch sees no GPU")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="raytt-bench-train-"))
    cores = os.cpu_count() or 1
    bank_dir = work / "bank"
    if not bank_dir.exists():
        generate(SynthConfig(num_vectors=args.vectors, dim=args.dim), bank_dir, progress=lambda *_: None)
    import ray

    ray.init(num_cpus=cores + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    bank = load_bank(bank_dir).vectors
    where = f"{gpus} x {torch.cuda.get_device_name(0)}, {args.precision}" if gpus else f"{cores} cores"
    print(f"train_throughput: GRU (hidden {args.dim}) on a {args.vectors:,} x {args.dim} synthetic bank, {where}")
    run = {"device": args.device, "precision": args.precision}
    for k in (int(c) for c in args.contexts.split(",")):
        s = GPU_SETTINGS[k] if gpus else SETTINGS[k]
        shards_dir = work / f"shards_k{k}"
        if not shards_dir.exists():
            build_shards(
                scan_bank(bank_dir),
                shards_dir,
                BuildConfig(context_len=k, min_train_pairs=100),
                progress=lambda *_: None,
            )
        base = bare_loop(bank, open_shards(shards_dir), k, s["batch"], s["steps"], s["window"], cores, **run)
        one = raytt_run(
            bank_dir, shards_dir, work / "runs", f"k{k}-w1", 1, cores, s["batch"], s["steps"], s["window"], **run
        )
        line = (
            f"  context {k:>3}, batch {s['batch']}: bare loop {base:,.0f} samples/s | raytt 1 worker {one:,.0f} "
            f"(ratio {one / base:.2f}, target >= 0.9)"
        )
        if not gpus or gpus >= 2:
            two = raytt_run(
                bank_dir,
                shards_dir,
                work / "runs",
                f"k{k}-w2",
                2,
                max(1, cores // 2),
                s["batch"],
                s["steps"],
                s["window"],
                **run,
            )
            line += f" | raytt 2 workers {two:,.0f} (ratio {two / base:.2f})"
        print(line, flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
