"""The `raytt` subcommands as plain functions: the CLI parses flags and calls these, notebooks can too."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raytt.bank import BankManifest, load_bank, read_manifest, scan_bank
from raytt.errors import RayttError, ShardError
from raytt.progress import say
from raytt.sequences import (
    SPLITS,
    BuildConfig,
    ShardSet,
    bank_of,
    build_shards,
    check_provenance,
    import_npz,
    is_shards,
    open_shards,
)
from raytt.storage import is_uri, mirror_of
from raytt.synthetic import SynthConfig, generate

Progress = Callable[[str], None]


def synth(
    out: str | Path,
    cfg: SynthConfig | None = None,
    report: bool = False,
    overwrite: bool = False,
    progress: Progress = say,
) -> BankManifest:
    """Generate the synthetic bank; with `report`, print baselines vs the oracle on full-bank retrieval."""
    manifest = generate(cfg or SynthConfig(), out, overwrite=overwrite, progress=progress)
    progress(f"synth: wrote {manifest.num_vectors:,} x {manifest.dim} bank to {out} ({manifest.embedder_id})")
    if report:
        from raytt.evaluation import sampled_report

        progress(
            format_table(
                sampled_report(out),
                f"synth report: 2000 sampled windows (context <= 5), full bank of {manifest.num_vectors:,}",
            )
        )
    return manifest


def ingest(input_dir: str | Path, out: str | Path, cfg=None, overwrite: bool = False, progress: Progress = say):
    """Documents -> chunks -> vectors as a bank, with Ray Data and encoder actors; see `raytt.corpus.ingest`."""
    from raytt.corpus.config import IngestConfig
    from raytt.corpus.ingest import ingest as run_ingest

    return run_ingest(input_dir, out, cfg or IngestConfig(), overwrite=overwrite, progress=progress)


def build(
    bank: str | Path,
    out: str | Path,
    cfg: BuildConfig | None = None,
    overwrite: bool = False,
    progress: Progress = say,
) -> ShardSet:
    """Build sequence shards from a bank (the bank is verified while it streams: sha256, norms, keys)."""
    meta = scan_bank(bank, verify=True)
    shards = build_shards(meta, out, cfg or BuildConfig(), overwrite=overwrite, progress=progress)
    progress(f"build: wrote shards to {out}")
    return shards


def import_vectors(
    npz: str | Path,
    bank: str | Path,
    out: str | Path,
    cfg: BuildConfig | None = None,
    overwrite: bool = False,
    progress: Progress = say,
) -> ShardSet:
    """Import loose `.npz` sequences as shards by aligning each vector to its bank row (or refuse)."""
    shards = import_npz(npz, load_bank(bank), out, cfg or BuildConfig(), overwrite=overwrite, progress=progress)
    progress(f"import: wrote shards to {out}")
    return shards


def inspect(path: str | Path, bank: str | Path | None = None, sample: int = 1000, progress: Progress = print) -> dict:
    """Summarise a bank or a shard set; for shards, check splits and that sampled rows point into the bank."""
    path = Path(path)
    summary = inspect_shards(path, bank, sample) if is_shards(path) else inspect_bank(path)
    progress(format_summary(summary))
    return summary


def inspect_bank(path: Path) -> dict:
    meta = scan_bank(path, verify=True)
    lengths = np.bincount(meta.article_codes)
    return {
        "kind": "bank",
        "path": str(path),
        "manifest": meta.manifest.to_json() | {"files": len(meta.manifest.files)},
        "articles": len(meta.article_names),
        "chunks per article (min/median/mean/max)": [
            int(lengths.min()),
            float(np.median(lengths)),
            round(float(lengths.mean()), 2),
            int(lengths.max()),
        ],
        "verified": "sha256, keys 0..N-1, dims, finite values, norms, unique (article, position)",
    }


def inspect_shards(path: Path, bank: str | Path | None, sample: int) -> dict:
    shards = open_shards(path)
    bank_path = Path(bank) if bank else bank_of(shards)
    check_provenance(shards.manifest, read_manifest(bank_path), str(path / "manifest.json"))
    meta = scan_bank(bank_path, verify=False)
    overlap = {
        f"{a}&{b}": len(set(shards.articles(a)) & set(shards.articles(b)))
        for i, a in enumerate(SPLITS)
        for b in SPLITS[i + 1 :]
    }
    checked = {s: check_rows(shards, s, meta, sample) for s in SPLITS}
    return {
        "kind": "shards",
        "path": str(path),
        "bank": shards.manifest["bank"],
        "context_len": shards.context_len,
        "min_context": shards.manifest["min_context"],
        "splits": {
            s: {"rows": shards.rows(s), "articles": len(shards.articles(s)), "files": len(shards.files(s))}
            for s in SPLITS
        },
        "article overlap": overlap,
        "rows checked": "article ids of every split read from the rows: disjoint, as the manifest lists, "
        "row counts match",
        "sampled rows checked against the bank": checked,
    }


def check_rows(shards: ShardSet, split: str, meta, sample: int) -> int:
    """Check sampled rows: target and context keys are bank rows of the row's article, in order before it."""
    table = shards.read(split)
    if table.num_rows == 0:
        return 0
    pick = np.random.default_rng(0).choice(table.num_rows, min(sample, table.num_rows), replace=False)
    rows = table.take(pick)
    target = rows.column("target_key").to_numpy()
    ctx = np.stack(rows.column("context_keys").to_numpy(zero_copy_only=False))
    names = np.asarray(rows.column("article_id").to_pylist(), dtype=object)
    n = len(meta.positions)
    where = f"{shards.path}/{split}"
    if target.min() < 0 or target.max() >= n or ctx.max() >= n:
        raise ShardError(f"{where}: keys outside the bank's 0..{n - 1}")
    article = np.asarray(meta.article_names, dtype=object)
    if (article[meta.article_codes[target]] != names).any():
        raise ShardError(f"{where}: target keys whose bank article differs from the row's article_id")
    real = ctx >= 0
    ctx_codes = meta.article_codes[np.clip(ctx, 0, None)]
    same = (ctx_codes == meta.article_codes[target][:, None]) | ~real
    before = (meta.positions[np.clip(ctx, 0, None)] < meta.positions[target][:, None]) | ~real
    if not (same.all() and before.all()):
        raise ShardError(f"{where}: context keys from another article or not before the target")
    return len(pick)


def format_summary(summary: dict, indent: int = 0) -> str:
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(" " * indent + f"{key}:")
            lines.append(format_summary(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key}: {value}")
    return "\n".join(lines)


def format_table(table: dict[str, dict[str, float]], title: str) -> str:
    """Rows = methods, columns = metrics, as a fixed-width text table."""
    columns = list(next(iter(table.values())))
    width = max(len(c) for c in columns) + 2
    lines = [title, "method".ljust(10) + "".join(c.rjust(width) for c in columns)]
    for name, row in table.items():
        lines.append(name.ljust(10) + "".join(f"{row[c]:.3f}".rjust(width) for c in columns))
    return "\n".join(lines)


def train(cfg, progress: Progress = say) -> dict:
    """Train (or resume) the run `cfg` describes; see `raytt.training.driver`."""
    from raytt.training.driver import train as run_train

    return run_train(cfg, progress)


def dry_run(cfg, progress: Progress = say) -> list[str]:
    """What `raytt train --dry-run` prints; see `raytt.training.driver.dry_run`."""
    from raytt.training.driver import dry_run as plan_run

    return plan_run(cfg, progress)


def tune(search_or_resume, progress: Progress = say) -> list[dict]:
    """Run a search (a SearchConfig), or resume one from its directory; see `raytt.tuning`."""
    from raytt import tuning as search_module
    from raytt.rollout_tuning import RolloutSearch, tune_rollout

    if isinstance(search_or_resume, RolloutSearch):
        return tune_rollout(search_or_resume, progress=progress)
    if isinstance(search_or_resume, search_module.SearchConfig):
        return search_module.tune(search_or_resume, progress=progress)
    return search_module.tune(search_module.load_search(search_or_resume), resume=True, progress=progress)


def demo(
    out: str | Path = "runs/demo",
    num_vectors: int = 50_000,
    train_config: str | Path = "configs/demo.yaml",
    overwrite: bool = True,
    progress: Progress = say,
) -> dict:
    """The main job: synthesise a bank, build shards, train with Ray, evaluate on test articles vs baselines."""
    import shutil

    from raytt.config import load
    from raytt.training.config import TrainConfig

    out = Path(out)
    started = time.perf_counter()
    synth(out / "bank", SynthConfig(num_vectors=num_vectors), overwrite=overwrite, progress=progress)
    build(out / "bank", out / "shards", BuildConfig(), overwrite=overwrite, progress=progress)
    cfg = load(
        TrainConfig, train_config, [f"data.bank={out / 'bank'}", f"data.shards={out / 'shards'}", f"storage={out}"]
    )
    if overwrite:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
    train(cfg, progress)
    result = evaluate(run=cfg.run_dir, progress=progress)
    verdict = bar(result["views"]["all"])
    progress(verdict)
    progress(
        f"demo: done in {time.perf_counter() - started:.0f}s; report in {cfg.run_dir / 'eval' / 'test' / 'report.md'}"
    )
    return result


def bar(rows: dict[str, dict[str, float]]) -> str:
    """The demo's bar: the model beats every heuristic on R@10 and MRR@10, and reaches 0.9x the oracle's R@10."""
    model = rows["model"]
    heuristics = {n: r for n, r in rows.items() if n not in ("model", "oracle")}
    beats = all(model["R@10"] > r["R@10"] and model["MRR@10"] > r["MRR@10"] for r in heuristics.values())
    lines = [f"bar: model beats every heuristic on R@10 and MRR@10: {'yes' if beats else 'NO'}"]
    if "oracle" in rows:
        ratio = model["R@10"] / rows["oracle"]["R@10"]
        lines.append(f"bar: model R@10 / oracle R@10 = {ratio:.3f} (target >= 0.9): {'yes' if ratio >= 0.9 else 'NO'}")
    return "\n".join(lines)


def evaluate(
    run: str | Path | None = None,
    shards: str | Path | None = None,
    bank: str | Path | None = None,
    checkpoint: str = "best",
    split: str = "test",
    out: str | Path | None = None,
    max_queries: int = 0,
    device: str | None = None,
    progress: Progress = say,
) -> dict:
    """Full-bank evaluation of a run's checkpoint (or, with no run, of the baselines alone); writes the report.

    `run` may be a storage URI (`s3://bucket/runs/NAME`): it is mirrored locally and the report uploaded beside it.
    """
    from raytt import report
    from raytt.checkpoints import resolve
    from raytt.config import load
    from raytt.evaluation import Model
    from raytt.evaluation import evaluate as run_eval
    from raytt.rundir import RunDir
    from raytt.training.config import TrainConfig

    if split not in SPLITS:
        raise RayttError(f"eval: --split must be one of {SPLITS}, got {split!r}")
    model, metrics_jsonl, run_dir = None, None, None
    if run is not None:
        run_dir = RunDir(mirror_of(str(run)), str(run)) if is_uri(run) else RunDir(Path(run))
        run_dir.pull(with_checkpoints=checkpoint != "best")
        if not run_dir.config.is_file():
            raise RayttError(f"{run_dir.path}: not a run directory (no config.yaml); train one with `raytt train`")
        cfg = load(TrainConfig, run_dir.config)
        shards = shards or cfg.data.shards
        model = Model(run_dir.path, resolve(run_dir.path, checkpoint), cfg.data.batch_size)
        out = out or run_dir.eval_dir(split)
        metrics_jsonl = run_dir.metrics
    elif shards is None or out is None:
        raise RayttError("eval: give --run RUN, or --shards DIR --out DIR for the baselines alone")
    result = run_eval(shards, split, model, bank, max_queries, device=device, progress=progress)
    text = report.console(result)
    report.write(result, out, metrics_jsonl)
    progress(text)
    remote = run_dir.remote if run_dir else None
    if run_dir:
        run_dir.push()
    progress(f"eval: wrote {Path(out) / 'report.md'} and plots" + (f", uploaded to {remote}" if remote else ""))
    return result


def compare(
    paths: list[str | Path], view: str = "all", metrics: str = "R@10,MRR@10", progress: Progress = print
) -> str:
    """Print one table of runs and baselines from their eval reports, with intervals on `metrics`."""
    from raytt import report

    text = report.compare(paths, view, tuple(m.strip() for m in metrics.split(",") if m.strip()))
    progress(text)
    return text


def text_build(folder, out, min_train_queries: int = 1000, overwrite: bool = False, progress: Progress = say) -> dict:
    """A BEIR folder as a passage bank and query shards; see `raytt.text.build`."""
    from raytt.text.build import TextBuildConfig, build_text

    return build_text(folder, out, TextBuildConfig(min_train_queries), overwrite, progress)


def text_import(kind: str, source: str, out, config: str = "v1.1", limit: int = 0, progress: Progress = say) -> Path:
    """A pairs JSONL file or MS MARCO (through `datasets`) written as a BEIR folder; see `raytt.text.pairs`."""
    from raytt.text.beir import write_beir
    from raytt.text.pairs import MSMARCO, msmarco_set, read_pairs

    if kind == "pairs" and not source:
        raise RayttError("text-import pairs: give the JSONL file")
    data = read_pairs(source) if kind == "pairs" else msmarco_set(source or MSMARCO, config, limit)
    folder = write_beir(out, data)
    splits = ", ".join(f"{s} {len(q):,}" for s, q in data.qrels.items())
    progress(f"text-import: {folder}: {len(data.passages):,} passages, {len(data.queries):,} queries ({splits})")
    return folder


def text_encode(
    built,
    embedder: str,
    max_seq_length: int,
    batch_size: int,
    actors: int,
    actor_cpus: int,
    overwrite: bool = False,
    precision: str = "auto",
    progress: Progress = say,
) -> Path:
    """Cache a frozen encoder's passage and query vectors beside a built text set; see `raytt.text.encode`."""
    from raytt.text.encode import EncodeConfig, encode_set

    cfg = EncodeConfig(embedder, max_seq_length, batch_size, actors, actor_cpus, precision)
    return encode_set(built, cfg, overwrite, progress)


def text_eval(
    folder,
    split: str,
    out,
    embedder: str = "all-MiniLM-L6-v2",
    max_queries: int = 0,
    runs=(),
    encode_actors: int = 0,
    progress: Progress = say,
) -> dict:
    """Full-corpus ranking of a text set's split by the baselines and trained runs; see `raytt.text.evaluate`."""
    from raytt.text.evaluate import evaluate

    return evaluate(
        folder, split, out, embedder, max_queries, runs=list(runs), encode_actors=encode_actors, progress=progress
    )


def text_train(cfg, progress: Progress = say) -> dict:
    """Train (or resume) a text two-tower run; see `raytt.text.train`."""
    from raytt.text.train import train_text

    return train_text(cfg, progress)


def import_bank(
    src: str | Path, out: str | Path, cfg=None, overwrite: bool = False, progress: Progress = say
) -> BankManifest:
    """Bring your own bank: vectors, article ids and positions from .npy/.npz/Parquet/hf: (see `raytt.sources`)."""
    from raytt.sources import ImportConfig
    from raytt.sources import import_bank as run_import

    return run_import(src, out, cfg or ImportConfig(), overwrite=overwrite, progress=progress)


def export(
    run: str | Path,
    out: str | Path,
    checkpoint: str = "best",
    index_factory: str = "",
    target_recall: float = 0.98,
    overwrite: bool = False,
    progress: Progress = say,
) -> Path:
    """A run's tower as a self-contained folder: weights, config, torch.export query tower, ANN index, keys."""
    from raytt.export import export as run_export

    return run_export(run, out, checkpoint, index_factory, target_recall, overwrite, progress)


def search(
    folder: str | Path,
    contexts: list,
    k: int = 10,
    exact: bool = False,
    bank: str | Path | None = None,
    progress: Progress = print,
):
    """The top `k` bank chunks after each context (lists of keys, or one list of texts), printed as a table."""
    from raytt.retriever import Retriever

    retriever = Retriever.load(folder, bank)
    hits = retriever.search(contexts, k, exact)
    for i in range(len(hits.keys)):
        progress(f"context {i}: top {k} of {len(retriever.vectors):,} ({'exact' if exact else 'index'})")
        for rank, row in enumerate(hits.rows(i), 1):
            text = str(row.get("text") or "").replace("\n", " ")
            progress(
                f"  {rank:>3}  key {row['key']:<9} score {row['score']:.4f}  {row['article_id']}#{row['position']}"
                + (f"  {text[:70]}" if text else "")
            )
    return hits


def serve(folder: str | Path, bank: str | Path | None = None, cfg=None, progress: Progress = print) -> str:
    """Serve an export with Ray Serve until Ctrl-C (see `raytt.serving`)."""
    from raytt.serving import ServeConfig
    from raytt.serving import serve as run_serve

    return run_serve(folder, bank, cfg or ServeConfig(), progress)


def rollout(
    run: str | Path,
    split: str = "test",
    steps: int = 8,
    cfg=None,
    checkpoint: str = "best",
    max_articles: int = 0,
    out: str | Path | None = None,
    progress: Progress = say,
) -> dict:
    """Dual-path decoding of a split's articles by the run's tower and the heuristic rollouts; writes
    RUN/rollout/SPLIT/ (report.json, report.md, rollout.png)."""
    from raytt import rollout as rollouts
    from raytt.checkpoints import load_model, resolve
    from raytt.config import load
    from raytt.decoding import DecodeConfig
    from raytt.training.config import TrainConfig

    if split not in SPLITS:
        raise RayttError(f"rollout: --split must be one of {SPLITS}, got {split!r}")
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise RayttError(f"{run}: not a run directory (no config.yaml); train one with `raytt train`")
    shards = open_shards(load(TrainConfig, run / "config.yaml").data.shards)
    bank = load_bank(bank_of(shards))
    folder = resolve(run, checkpoint)
    model, _ = load_model(folder)
    report = rollouts.rollout(
        model, bank, shards.articles(split), shards.context_len, steps, cfg or DecodeConfig(), max_articles, progress
    )
    report.update(split=split, run=str(run), checkpoint=str(folder), bank=str(bank.path))
    written = rollouts.write(report, out or run / "rollout" / split)
    progress(rollouts.console(report))
    progress(f"rollout: wrote {written / 'report.md'} and rollout.png")
    return report
