"""The `raytt` command: subcommands over `raytt.commands`, config flags generated from the dataclasses.

Every config field is a flag (`--context-len 5`, `--optim.lr 3e-4`, see `raytt.flags`), a YAML file
can be given with `--config` (a path, or the name of a shipped config), and `--set key=value`
overrides anything; flags win over `--set`, which wins over the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from raytt import commands, config, flags, shipped
from raytt.corpus.config import IngestConfig
from raytt.decoding import DecodeConfig
from raytt.errors import RayttError
from raytt.flags import add_config_flags
from raytt.sequences import SPLITS, BuildConfig
from raytt.serving import ServeConfig
from raytt.sources import ImportConfig
from raytt.synthetic import SynthConfig
from raytt.text.config import TextTrainConfig
from raytt.training.config import TrainConfig
from raytt.tuning import SearchConfig


def config_from_args(cls: type, args: argparse.Namespace):
    """The config of `cls` from --config (a path, or a shipped config's name), --set and the flags."""
    if getattr(args, "config", None) is not None:
        args.config = shipped.resolve(args.config)
    return flags.config_from_args(cls, args)


def parser() -> argparse.ArgumentParser:
    """The `raytt` argument parser: data subcommands, then run subcommands."""
    top = argparse.ArgumentParser(prog="raytt", description="Two-tower retriever training on Ray.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(sub)
    add_run_commands(sub)
    add_text_commands(sub)
    add_product_commands(sub)
    add_config_commands(sub)
    return top


CONFIG_KINDS = {
    "train": TrainConfig,
    "text-train": TextTrainConfig,
    "tune": SearchConfig,
    "build": BuildConfig,
    "synth": SynthConfig,
    "ingest": IngestConfig,
    "import-bank": ImportConfig,
    "rollout": DecodeConfig,
    "serve": ServeConfig,
}


def add_config_commands(sub) -> None:
    """`config show` (a resolved config) and `configs list|copy` (the configs that ship with raytt)."""
    p = sub.add_parser("config", help="show a resolved config: file, then --set overrides, every field")
    show = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = show.add_parser("show", help="print the config a command would run with, as YAML")
    s.add_argument("--kind", choices=sorted(CONFIG_KINDS), default="train", help="which command's config")
    s.add_argument("--config", type=Path, help="YAML file (a path, or a shipped config's name)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p = sub.add_parser("configs", help="the configs that ship with raytt: list them, copy one to edit")
    act = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    act.add_parser("list", help="name every shipped config")
    c = act.add_parser("copy", help="copy a shipped config into a folder")
    c.add_argument("name", help="a shipped config (demo.yaml, or demo)")
    c.add_argument("folder", type=Path, help="where to put it")


def add_data_commands(sub) -> None:
    """Subcommands that make or check data: synth, build, import-npz, import-bank, inspect, ingest."""
    p = sub.add_parser("synth", help="generate the synthetic corpus bank (the built-in default data)")
    p.add_argument("--out", type=Path, required=True, help="bank directory to write")
    p.add_argument("--report", action="store_true", help="print full-bank baselines vs the oracle predictor")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_config_flags(p, SynthConfig)

    p = sub.add_parser("build", help="build sequence shards from a bank, split by article")
    p.add_argument("--bank", type=Path, required=True, help="bank directory")
    p.add_argument("--out", type=Path, required=True, help="shard directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_config_flags(p, BuildConfig)

    p = sub.add_parser("import-npz", help="import loose .npz sequences by aligning them to bank rows")
    p.add_argument("npz", type=Path, help=".npz with context_sequences [N,k,D], target_vectors [N,D]")
    p.add_argument("--bank", type=Path, required=True, help="bank the vectors must come from")
    p.add_argument("--out", type=Path, required=True, help="shard directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_config_flags(p, BuildConfig)

    p = sub.add_parser("import-bank", help="bring your own bank: vectors + article ids + positions as a bank")
    p.add_argument("src", help="a .npy (+ sidecar table), a .npz, a Parquet file or directory, or hf:NAME[:split]")
    p.add_argument("--out", type=Path, required=True, help="bank directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_config_flags(p, ImportConfig)

    p = sub.add_parser("inspect", help="summarise and check a bank or a shard directory")
    p.add_argument("path", type=Path)
    p.add_argument("--bank", type=Path, help="bank for shards (default: the path in their manifest)")
    p.add_argument("--sample", type=int, default=1000, help="rows per split checked against the bank")

    p = sub.add_parser("ingest", help="a folder of documents -> chunks -> vectors (a bank), with Ray Data")
    p.add_argument("--input", type=Path, required=True, help="folder of .txt/.md/.rst/.html files (recursive)")
    p.add_argument("--out", type=Path, required=True, help="bank directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank (and any unfinished ingest)")
    add_config_flags(p, IngestConfig)


def add_product_commands(sub) -> None:
    """A trained tower as a product: export it, search with it, roll it forward (dual-path decoding)."""
    p = sub.add_parser("export", help="a run's tower as a folder: safetensors, torch.export query tower, ANN index")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="export folder to write")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint directory")
    p.add_argument("--index-factory", default="", help="a faiss.index_factory string (default: by bank size)")
    p.add_argument("--target-recall", type=float, default=0.98, help="ANN Recall@10 against exact to calibrate to")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")

    p = sub.add_parser("search", help="the bank chunks an exported tower predicts next, for keys or texts")
    p.add_argument("folder", type=Path, help="an export folder (raytt export)")
    p.add_argument(
        "--context-keys", action="append", default=[], metavar="K1,K2,...", help="one context's bank keys (repeatable)"
    )
    p.add_argument("--text", action="append", default=[], help="one chunk text of a single context (repeatable)")
    p.add_argument("--k", type=int, default=10, help="how many chunks to return")
    p.add_argument("--exact", action="store_true", help="scan the whole index instead of the ANN index")
    p.add_argument("--bank", type=Path, help="the bank (needed for key contexts when the doc tower is trained)")

    p = sub.add_parser("rollout", help="dual-path decoding (SNAP/BLEND/NOVEL) of held-out articles, with telemetry")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--split", default="test", help="train, val or test")
    p.add_argument("--steps", type=int, default=8, help="vectors to generate after each article's first k chunks")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint directory")
    p.add_argument("--max-articles", type=int, default=0, help="roll a fixed random subset (0 = every article)")
    p.add_argument("--out", type=Path, help="report folder (default: RUN/rollout/SPLIT)")
    add_config_flags(p, DecodeConfig)

    p = sub.add_parser("serve", help="an exported tower behind Ray Serve: /search, /rollout, /health over HTTP JSON")
    p.add_argument("folder", type=Path, help="an export folder (raytt export)")
    p.add_argument("--bank", type=Path, help="the bank (needed for key contexts when the doc tower is trained)")
    add_config_flags(p, ServeConfig)


def _search_config(args: argparse.Namespace):
    """A training search (SearchConfig) or, when the file names a `rollout:` run, a decoding search."""
    from raytt.rollout_tuning import RolloutSearch, is_rollout_search

    if args.config is not None:
        path = shipped.resolve(args.config)
        if is_rollout_search(config.read_mapping(path)):
            return config.load(RolloutSearch, path, args.set)
    return config_from_args(SearchConfig, args)


def _search(args: argparse.Namespace) -> None:
    if bool(args.context_keys) == bool(args.text):
        raise RayttError("search: give --context-keys (repeatable) or --text (repeatable), not both or neither")
    contexts = args.text or [_keys(value) for value in args.context_keys]
    commands.search(args.folder, contexts, args.k, args.exact, args.bank)


def _keys(value: str) -> list[int]:
    try:
        return [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise RayttError(f"search: --context-keys takes comma-separated integers, got {value!r}") from None


def add_text_commands(sub) -> None:
    """Text two-towers: build a passage bank and query shards, cache frozen vectors, train, evaluate."""
    p = sub.add_parser("text-build", help="a BEIR folder as a passage bank and query shards, behind the split gates")
    p.add_argument("folder", type=Path, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (bank/ and queries/)")
    p.add_argument("--min-train-queries", type=int, default=1000, help="refuse fewer judged training queries")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("text-import", help="pairs JSONL or MS MARCO (Hugging Face datasets) as a BEIR folder")
    p.add_argument("kind", choices=["pairs", "msmarco"], help="what SOURCE is")
    p.add_argument("source", nargs="?", default="", help="pairs: a JSONL file; msmarco: a datasets name or folder")
    p.add_argument("--out", type=Path, required=True, help="the BEIR folder to write")
    p.add_argument("--config", default="v1.1", help="msmarco: the dataset config")
    p.add_argument("--limit", type=int, default=0, help="msmarco: at most this many queries per split (0 = all)")

    p = sub.add_parser("text-encode", help="a frozen encoder's vectors of every passage and query, cached once")
    p.add_argument("built", type=Path, help="a folder written by raytt text-build")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2", help="a sentence-transformers name or path")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens each text is cut to")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder call")
    p.add_argument("--actors", type=int, default=1, help="Ray Data encoder actors")
    p.add_argument("--actor-cpus", type=int, default=0, help="torch threads per actor (0 = cores / actors)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 where the CPU has it natively"
    )
    p.add_argument("--overwrite", action="store_true", help="encode again even when the cache is up to date")

    p = sub.add_parser(
        "text-eval", help="rank a text set's queries against its whole corpus: BM25, frozen encoder, trained runs"
    )
    p.add_argument("folder", type=Path, help="a built text set (raytt text-build) or a BEIR folder")
    p.add_argument("--split", default="test", help="train, dev or test")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2", help="the frozen encoder (a name or a path)")
    p.add_argument("--max-queries", type=int, default=0, help="evaluate a fixed random subset (0 = every query)")
    p.add_argument("--run", action="append", default=[], type=Path, help="a text-train run to rank too (repeatable)")
    p.add_argument(
        "--encode-actors", type=int, default=0, help="runs: Ray Data actors that encode the corpus (0 = in-process)"
    )

    p = sub.add_parser("text-train", help="train a text two-tower with Ray Train (re-running a name resumes it)")
    p.add_argument(
        "--eval", metavar="SPLIT", help="then rank this split's queries with the best checkpoint and the baselines"
    )
    add_config_flags(p, TextTrainConfig)


def add_run_commands(sub) -> None:
    """Subcommands that train, search, evaluate and compare: train, tune, eval, compare, demo."""
    p = sub.add_parser("train", help="train a query tower with Ray Train (re-running a name resumes it)")
    p.add_argument(
        "--eval",
        metavar="SPLIT",
        choices=SPLITS,
        help="then evaluate the best checkpoint on this split (report in RUN/eval/SPLIT)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and data, print the resources and placement the run would ask for, start nothing",
    )
    add_config_flags(p, TrainConfig)

    p = sub.add_parser("tune", help="Ray Tune search over training settings, ASHA on full-bank validation recall")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed search (finished trials stay)")
    add_config_flags(p, SearchConfig)

    p = sub.add_parser("eval", help="full-bank evaluation of a run (or of the baselines alone) with a report")
    p.add_argument("--run", help="run directory (runs/NAME) or its storage URI (s3://bucket/runs/NAME)")
    p.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint directory")
    p.add_argument("--split", default="test", help="train, val or test")
    p.add_argument("--shards", type=Path, help="shards to evaluate (default: the run's)")
    p.add_argument("--bank", type=Path, help="bank to search (default: the one the shards were built from)")
    p.add_argument("--out", type=Path, help="report folder (default: RUN/eval/SPLIT)")
    p.add_argument("--max-queries", type=int, default=0, help="evaluate a fixed random subset (0 = every row)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU), cpu or cuda")

    p = sub.add_parser("compare", help="one table of several runs' evaluations and the baselines")
    p.add_argument("runs", nargs="+", type=Path, help="run directories or report folders")
    p.add_argument("--view", default="all", help="all or context_excluded")
    p.add_argument(
        "--metrics", default="R@10,MRR@10", help="comma-separated metrics with intervals (R@K, MRR@K, NDCG@K)"
    )

    p = sub.add_parser("demo", help="the main job on the built-in synthetic data")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    p.add_argument("--num-vectors", type=int, default=50_000, help="size of the synthetic bank")
    p.add_argument(
        "--train-config",
        type=Path,
        default=Path("configs/demo.yaml"),
        help="training config (a path, or a shipped config's name; default: the shipped demo.yaml)",
    )


def run(argv: list[str] | None = None) -> int:
    return dispatch(parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand."""
    HANDLERS[args.command](args)
    return 0


def _train(args: argparse.Namespace) -> None:
    cfg = config_from_args(TrainConfig, args)
    if args.dry_run:
        commands.dry_run(cfg)
        return
    commands.train(cfg)
    if args.eval:
        commands.evaluate(cfg.remote or cfg.run_dir, split=args.eval)


def _text_train(args: argparse.Namespace) -> None:
    cfg = config_from_args(TextTrainConfig, args)
    commands.text_train(cfg)
    if args.eval:
        commands.text_eval(cfg.data.built, args.eval, cfg.run_dir / "eval" / args.eval, runs=[cfg.run_dir])


def _config(args: argparse.Namespace) -> None:
    args.config = shipped.resolve(args.config) if args.config else None
    cfg = config.load(CONFIG_KINDS[args.kind], args.config, args.set)
    print(config.dumps(cfg), end="")


def _configs(args: argparse.Namespace) -> None:
    if args.action == "list":
        print("\n".join(f"{name}  ({shipped.path(name)})" for name in shipped.names()))
    else:
        print(f"configs: copied {shipped.copy(args.name, args.folder)}")


HANDLERS = {
    "synth": lambda a: commands.synth(a.out, config_from_args(SynthConfig, a), report=a.report, overwrite=a.overwrite),
    "build": lambda a: commands.build(a.bank, a.out, config_from_args(BuildConfig, a), overwrite=a.overwrite),
    "import-npz": lambda a: commands.import_vectors(
        a.npz, a.bank, a.out, config_from_args(BuildConfig, a), overwrite=a.overwrite
    ),
    "import-bank": lambda a: commands.import_bank(
        a.src, a.out, config_from_args(ImportConfig, a), overwrite=a.overwrite
    ),
    "inspect": lambda a: commands.inspect(a.path, bank=a.bank, sample=a.sample),
    "ingest": lambda a: commands.ingest(a.input, a.out, config_from_args(IngestConfig, a), overwrite=a.overwrite),
    "train": _train,
    "text-train": _text_train,
    "tune": lambda a: commands.tune(a.resume or _search_config(a)),
    "eval": lambda a: commands.evaluate(a.run, a.shards, a.bank, a.checkpoint, a.split, a.out, a.max_queries, a.device),
    "compare": lambda a: commands.compare(a.runs, a.view, a.metrics),
    "text-build": lambda a: commands.text_build(a.folder, a.out, a.min_train_queries, a.overwrite),
    "text-import": lambda a: commands.text_import(a.kind, a.source, a.out, a.config, a.limit),
    "text-encode": lambda a: commands.text_encode(
        a.built, a.embedder, a.max_seq_length, a.batch_size, a.actors, a.actor_cpus, a.overwrite, a.precision
    ),
    "text-eval": lambda a: commands.text_eval(
        a.folder, a.split, a.out, a.embedder, a.max_queries, a.run, a.encode_actors
    ),
    "export": lambda a: commands.export(a.run, a.out, a.checkpoint, a.index_factory, a.target_recall, a.overwrite),
    "search": _search,
    "serve": lambda a: commands.serve(a.folder, a.bank, config_from_args(ServeConfig, a)),
    "rollout": lambda a: commands.rollout(
        a.run, a.split, a.steps, config_from_args(DecodeConfig, a), a.checkpoint, a.max_articles, a.out
    ),
    "demo": lambda a: commands.demo(a.out, num_vectors=a.num_vectors, train_config=shipped.resolve(a.train_config)),
    "config": _config,
    "configs": _configs,
}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: RayttError becomes one clear line on stderr and its exit status (2; 130 on Ctrl-C)."""
    try:
        sys.exit(run(argv))
    except RayttError as exc:
        print(f"raytt: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def cluster_address() -> str | None:
    """RAY_ADDRESS (set by `ray job submit`), else the cluster `ray start` recorded on this machine.

    Unlike `ray.init(address="auto")`, this never joins some other process's private Ray (a notebook's,
    a test suite's) found by scanning the machine.
    """
    from ray._private.services import find_bootstrap_address

    return os.environ.get("RAY_ADDRESS") or find_bootstrap_address(None)


def job(command: str, argv: list[str]) -> None:
    """Entry point of `jobs/*.py`: check the flags, join the running cluster (never start a private one), run."""
    import ray

    args = parser().parse_args([command, *argv])
    address = cluster_address()
    if address is None:
        print(
            "raytt: error: no Ray cluster: RAY_ADDRESS is unset and `ray start` recorded none on this machine; "
            "submit this with `ray job submit`, or start a cluster with `ray start --head`",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        ray.init(address=address, logging_config=ray.LoggingConfig(log_level="WARNING"))
    except ConnectionError as exc:
        print(
            f"raytt: error: no Ray cluster at {address!r} ({exc}); submit this with `ray job submit`, or start a "
            f"cluster with `ray start --head`",
            file=sys.stderr,
        )
        sys.exit(2)
    resources = ray.cluster_resources()
    print(
        f"raytt: joined the Ray cluster at {address}: {len(ray.nodes())} node(s), {resources.get('CPU', 0):.0f} CPU, "
        f"{resources.get('GPU', 0):.0f} GPU",
        flush=True,
    )
    try:
        sys.exit(dispatch(args))
    except RayttError as exc:
        print(f"raytt: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
