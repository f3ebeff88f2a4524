"""The `raytt` command: subcommands over `raytt.commands`, config flags generated from the dataclasses.

Every config field is a flag (`--context-len 5`), a YAML file can be given with `--config`, and
`--set key=value` overrides anything; flags win over `--set`, which wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

from raytt import commands, config
from raytt.corpus.config import IngestConfig
from raytt.errors import RayttError
from raytt.sequences import SPLITS, BuildConfig
from raytt.synthetic import SynthConfig
from raytt.training.config import TrainConfig
from raytt.tuning import SearchConfig


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per dataclass field, plus `--config FILE` and `--set key=value`."""
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config YAML)")
    group.add_argument("--config", type=Path, help="YAML file with these settings")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) or typing.get_origin(hints[f.name]) is dict:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        kind = "comma-separated" if typing.get_origin(tp) is tuple else getattr(tp, "__name__", str(tp))
        group.add_argument(
            flag,
            dest=f"cfg__{f.name}",
            default=None,
            metavar=kind.upper(),
            help=f"{f.metadata.get('help', '')} (default: {f.default})",
        )


def config_from_args(cls: type, args: argparse.Namespace):
    """Resolve file -> --set -> flags into a checked config object."""
    overrides = list(args.set)
    for f in dataclasses.fields(cls):
        value = getattr(args, f"cfg__{f.name}", None)
        if value is not None:
            overrides.append(f"{f.name}={value}")
    return config.load(cls, args.config, overrides)


def parser() -> argparse.ArgumentParser:
    """The `raytt` argument parser: data subcommands, then run subcommands."""
    top = argparse.ArgumentParser(prog="raytt", description="Two-tower retriever training on Ray.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(sub)
    add_run_commands(sub)
    return top


def add_data_commands(sub) -> None:
    """Subcommands that make or check data: synth, build, import-npz, inspect, ingest."""
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

    p = sub.add_parser("inspect", help="summarise and check a bank or a shard directory")
    p.add_argument("path", type=Path)
    p.add_argument("--bank", type=Path, help="bank for shards (default: the path in their manifest)")
    p.add_argument("--sample", type=int, default=1000, help="rows per split checked against the bank")

    p = sub.add_parser("ingest", help="a folder of documents -> chunks -> vectors (a bank), with Ray Data")
    p.add_argument("--input", type=Path, required=True, help="folder of .txt/.md/.rst/.html files (recursive)")
    p.add_argument("--out", type=Path, required=True, help="bank directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank (and any unfinished ingest)")
    add_config_flags(p, IngestConfig)


def add_run_commands(sub) -> None:
    """Subcommands that train, search, evaluate and compare: train, tune, eval, compare, demo."""
    p = sub.add_parser("train", help="train a query tower with Ray Train (re-running a name resumes it)")
    p.add_argument(
        "--eval",
        metavar="SPLIT",
        choices=SPLITS,
        help="then evaluate the best checkpoint on this split (report in RUN/eval/SPLIT)",
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

    p = sub.add_parser("demo", help="the main job on the built-in synthetic data")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    p.add_argument("--num-vectors", type=int, default=50_000, help="size of the synthetic bank")
    p.add_argument("--train-config", type=Path, default=Path("configs/demo.yaml"), help="training config")


def run(argv: list[str] | None = None) -> int:
    return dispatch(parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand."""
    if args.command == "synth":
        commands.synth(args.out, config_from_args(SynthConfig, args), report=args.report, overwrite=args.overwrite)
    elif args.command == "build":
        commands.build(args.bank, args.out, config_from_args(BuildConfig, args), overwrite=args.overwrite)
    elif args.command == "import-npz":
        commands.import_vectors(
            args.npz, args.bank, args.out, config_from_args(BuildConfig, args), overwrite=args.overwrite
        )
    elif args.command == "inspect":
        commands.inspect(args.path, bank=args.bank, sample=args.sample)
    elif args.command == "ingest":
        commands.ingest(args.input, args.out, config_from_args(IngestConfig, args), overwrite=args.overwrite)
    elif args.command == "train":
        cfg = config_from_args(TrainConfig, args)
        commands.train(cfg)
        if args.eval:
            commands.evaluate(cfg.remote or cfg.run_dir, split=args.eval)
    elif args.command == "tune":
        commands.tune(args.resume or config_from_args(SearchConfig, args))
    elif args.command == "eval":
        commands.evaluate(
            args.run, args.shards, args.bank, args.checkpoint, args.split, args.out, args.max_queries, args.device
        )
    elif args.command == "compare":
        commands.compare(args.runs, args.view)
    elif args.command == "demo":
        commands.demo(args.out, num_vectors=args.num_vectors, train_config=args.train_config)
    return 0


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
