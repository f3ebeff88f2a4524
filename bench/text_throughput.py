"""Text training throughput: `raytt text-train` (Ray Data -> one Ray Train worker) against a bare PyTorch loop.

Same towers (seeded alike), same loss (InfoNCE, in-batch negatives), same batch size, same threads, same
rows in the same order, every measured step inside one epoch (a real epoch is thousands of steps; this
set's would otherwise end every few windows). The baseline is the tightest loop there is: query and
passage inputs already looked up into in-memory tensors, no Ray, no data pipeline. raytt is measured from its own
metrics.jsonl (samples/s per logging window, the first window dropped as warm-up), so the one-off
start of the run and the epoch-end validation are outside both. The bare loop runs before and after raytt
and the baseline is their mean, so drift in the shared machine's load hits both sides alike. Printed as
ratios (target >= 0.9).

The data is synthetic (random words; quality is not the question): N passages and N queries, and for
towers that read the frozen encoder's vectors a stand-in cache of random unit vectors with the real
cache's manifest. `bag` and `adapter` run on CPU; `finetune` (a local randomly initialised BERT of
MiniLM's shape, or --encoder) with `--device cuda` on a GPU.

    python bench/text_throughput.py [--kinds bag,adapter] [--n N] [--workdir DIR] [--device cuda --kinds finetune]
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
from raytt.losses.objective import LossConfig, objective
from raytt.rundir import RunDir
from raytt.storage import write_json
from raytt.text.beir import BeirSet, write_beir
from raytt.text.build import TextBuildConfig, build_text
from raytt.text.config import TextTrainConfig
from raytt.text.data import passage_table, query_inputs
from raytt.text.encode import cache_name
from raytt.text.shards import open_text
from raytt.text.step import World, on_device, scored
from raytt.text.towers import build_text_tower

WORDS = [f"w{i}" for i in range(3000)]
SETTINGS = {"bag": (256, 60, 10), "adapter": (256, 600, 20), "finetune": (64, 40, 8)}  # batch, steps, window


def synthetic_set(root: Path, n: int, seed: int = 0) -> str:
    """A built text set of random-word passages (40 words) and queries (8 of their passage's words)."""
    rng = np.random.default_rng(seed)
    data = BeirSet()
    for i in range(n):
        words = rng.choice(WORDS, 40)
        data.passages[f"p{i}"] = ("", " ".join(words))
        data.queries[f"q{i}"] = " ".join(rng.choice(words, 8))
        split = "train" if i < n * 0.9 else "dev"
        data.qrels.setdefault(split, {})[f"q{i}"] = {f"p{i}": 1}
    write_beir(root / "beir", data)
    build_text(root / "beir", root / "built", TextBuildConfig(min_train_queries=1), progress=lambda *_: None)
    return str(root / "built")


def stand_in_cache(built: str, embedder_id: str, dim: int = 384) -> None:
    """Random unit vectors in the layout and manifest `raytt text-encode` writes (throughput only)."""
    shards = open_text(built)
    folder = Path(built) / "encoded" / cache_name(embedder_id, 128)
    (folder / "queries").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    np.save(folder / "passages.npy", unit(shards.passages))
    for split in shards.splits:
        np.save(folder / "queries" / f"{split}.npy", unit(shards.rows(split)))
    rows = {"passages": shards.passages, **{s: shards.rows(s) for s in shards.splits}}
    write_json(folder / "manifest.json", {"embedder_id": embedder_id, "bank_sha256": shards.bank_sha256, "rows": rows})


def one_epoch(kinds: list[str]) -> int:
    """Passages (and queries) enough that every kind's steps fit in one epoch of the train split (90%)."""
    return max(int(SETTINGS[k][0] * SETTINGS[k][1] / 0.9) + 1000 for k in kinds)


def run_config(kind: str, built: str, storage: str, device: str, encoder: str) -> TextTrainConfig:
    batch, steps, window = SETTINGS[kind]
    threads = 1 if device == "cuda" else (os.cpu_count() or 1)
    return config.from_dict(
        TextTrainConfig,
        {
            "name": f"tp_{kind}",
            "storage": storage,
            "workers": 1,
            "threads_per_worker": threads,
            "use_gpu": device == "cuda",
            "log_every": window,
            "checkpoint_every": 10_000,
            "val_queries": 200,
            "tracking": [],
            "data": {"built": built, "batch_size": batch, "shuffle_buffer": 0},
            "tower": {"kind": kind, "encoder": encoder},
            "loss": {"tau": 0.05},
            "optim": {"epochs": 100, "max_steps": steps, "warmup_steps": 10},
        },
    )


def bare_loop(cfg: TextTrainConfig, device: str) -> float:
    """Samples/s of a plain loop over the same rows, inputs looked up beforehand (first window dropped)."""
    torch.set_num_threads(cfg.threads_per_worker)
    shards = open_text(cfg.data.built)
    from raytt.text.data import encoded_cache

    encoded = encoded_cache(cfg, shards) if cfg.tower.reads_cache else None
    batch, steps, window = cfg.data.batch_size, cfg.optim.max_steps, cfg.log_every
    table = torch.as_tensor(passage_table(cfg, shards, encoded)).to(device)
    queries = torch.as_tensor(query_inputs(cfg, shards, "train", encoded)).to(device)
    keys = torch.as_tensor(np.concatenate(shards.table("train")["positives"].to_pylist())).to(device)
    per_epoch = len(keys) // batch  # raytt drops the last partial batch and starts the next epoch
    torch.manual_seed(cfg.seed)
    model = build_text_tower(cfg.tower, int(encoded.passages().shape[1]) if encoded else 0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    world = World(0, 1, torch.device(device))
    marks = []
    for step in range(steps):
        rows = slice(step % per_epoch * batch, (step % per_epoch + 1) * batch)
        b = on_device(table, queries[rows], keys[rows], None, device)
        q, p, _ = model(b.queries, b.positives)
        loss = objective(LossConfig(tau=0.05), scored(q, p, None, b, world))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
    measured = marks[window - 1 :]
    return (len(measured) - 1) * batch / (measured[-1] - measured[0])


def raytt_rate(cfg: TextTrainConfig) -> float:
    """Samples/s from the run's own metrics rows, the first window dropped."""
    from raytt.text.train import train_text

    train_text(cfg, progress=lambda line: None)
    rows = [r for r in RunDir(cfg.run_dir).rows() if "train/samples_per_s" in r][1:]
    return float(np.mean([r["train/samples_per_s"] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="bag,adapter")
    parser.add_argument("--n", type=int, help="passages (and queries) in the synthetic set; default: one epoch's worth")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2", help="finetune: the model trained")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="text-throughput-"))
    n = args.n or one_epoch(args.kinds.split(","))
    built = synthetic_set(work, n)
    from raytt.corpus.embed import resolve

    stand_in_cache(built, resolve(args.encoder)[1])
    print(f"text throughput: {n:,} synthetic passages, device {args.device}, {os.cpu_count()} CPU cores")
    for kind in args.kinds.split(","):
        cfg = run_config(kind, built, str(work / "runs"), args.device, args.encoder)
        before = bare_loop(cfg, args.device)
        ours = raytt_rate(cfg)
        after = bare_loop(cfg, args.device)
        bare = (before + after) / 2
        print(
            f"{kind:>9}: raytt {ours:,.0f} samples/s, bare PyTorch {bare:,.0f} samples/s (before {before:,.0f}, after "
            f"{after:,.0f}), ratio {ours / bare:.2f} (batch {cfg.data.batch_size}, {cfg.optim.max_steps} steps, "
            f"{cfg.threads_per_worker} thread(s))"
        )


if __name__ == "__main__":
    main()
