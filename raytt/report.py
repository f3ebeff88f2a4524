"""Evaluation outputs: `report.json`, `report.md`, `ranks.parquet`, PNG plots (headless matplotlib), and run
comparison, whose differences come with paired bootstrap intervals over the per-query ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raytt.curves import training_curves
from raytt.errors import RayttError
from raytt.evaluation import KS, VIEWS
from raytt.intervals import LEVEL, RESAMPLES, check_metric, describe, paired_bootstrap, per_query
from raytt.storage import atomic_dir, read_json, write_json

TABLE_COLUMNS = ("R@1", "R@10", "R@100", "R@1000", "MRR@10", "NDCG@10", "median_rank")
LOWER_IS_BETTER = {"median_rank", "mean_rank"}
RANKS_FILE = "ranks.parquet"
RANK_SUFFIX = {"all": "", "context_excluded": "@excl"}  # ranks.parquet column of a method, per view
INTERVAL_METRICS = ("R@10", "MRR@10")


def best_per_column(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> dict[str, float]:
    values = {}
    for c in columns:
        column = [r[c] for r in rows.values() if c in r]
        values[c] = min(column) if c in LOWER_IS_BETTER else max(column)
    return values


def table(rows: dict[str, dict[str, float]], columns: tuple[str, ...] = TABLE_COLUMNS, markdown: bool = False) -> str:
    """Methods x metrics, the best value per column marked with `*`."""
    best = best_per_column(rows, columns)
    name_width = max(10, *(len(n) + 1 for n in rows))

    def cell(row: dict, c: str) -> str:
        if c not in row:
            return "-"
        mark = "*" if row[c] == best[c] else " "
        return (f"{row[c]:.0f}" if c in LOWER_IS_BETTER else f"{row[c]:.3f}") + mark

    if markdown:
        lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(cell(r, c) for c in columns) + " |" for n, r in rows.items()]
        return "\n".join(lines)
    width = max(len(c) for c in columns) + 3
    lines = ["method".ljust(name_width) + "".join(c.rjust(width) for c in columns)]
    lines += [n.ljust(name_width) + "".join(cell(r, c).rjust(width) for c in columns) for n, r in rows.items()]
    return "\n".join(lines)


def console(report: dict) -> str:
    """The text printed after every evaluation: both views, always."""
    head = f"{report['split']}: {report['queries']:,} queries, full bank of {report['bank']['num_vectors']:,}"
    parts = [
        f"{head} (all candidates; * = best)",
        table(report["views"]["all"]),
        f"{head} (context chunks excluded)",
        table(report["views"]["context_excluded"]),
    ]
    model = report["in_batch"].get("model")
    if model:
        parts.append(
            f"model: in-batch accuracy {model['in_batch_accuracy']:.3f} (batch {model['batch']}) vs "
            f"full-bank Recall@1 {model['full_bank_R@1']:.3f}"
        )
    if "val_test_gap" in report:
        g = report["val_test_gap"]
        parts.append(
            "model R@10: " + ", ".join(f"{k} {v:+.3f}" if k == "gap" else f"{k} {v:.3f}" for k, v in g.items())
        )
    return "\n".join(parts)


def markdown(report: dict) -> str:
    """report.md: what was evaluated against what, both views, rank buckets, diagnostics, in-batch vs full-bank."""
    check = report["oracle_check"]
    lines = [
        f"# Evaluation: {report['split']} split",
        "",
        f"- run: `{report['run']}`, checkpoint: `{report['checkpoint']}`"
        if report["run"]
        else "- no run: baselines only",
        f"- queries: {report['queries']:,} (context length {report['context_len']}), shards `{report['shards']}`",
        f"- bank: `{report['bank']['path']}`, {report['bank']['num_vectors']:,} x {report['bank']['dim']}, "
        f"embedder `{report['bank']['embedder_id']}`, sha256 `{report['bank']['sha256'][:16]}`",
        f"- oracle check: truth vectors as queries give Recall@1 = {check['recall@1']:.1%} "
        f"({check['exact_duplicates']} exact duplicates; mean cosine to the bank row "
        f"{check['mean_cos_truth_to_bank_row']:.4f})",
        "- ties count against the model: a candidate scoring within 1e-5 of the truth ranks ahead of it.",
        "",
    ]
    for view in VIEWS:
        lines += [
            f"## Full-bank retrieval, {view.replace('_', ' ')} (* = best)",
            "",
            table(report["views"][view], markdown=True),
            "",
        ]
    bins = list(next(iter(report["histogram"].values())))
    lines += [
        "## Rank of the truth, queries per bucket (all candidates)",
        "",
        "| method | " + " | ".join(bins) + " |",
        "|---" * (len(bins) + 1) + "|",
    ]
    lines += [f"| {n} | " + " | ".join(str(h[b]) for b in bins) + " |" for n, h in report["histogram"].items()]
    lines.append("")
    lines += diagnostics_section(report["diagnostics"])
    lines += [
        "",
        "## In-batch accuracy vs full-bank Recall@1",
        "",
        "| method | batch | in-batch accuracy | full-bank R@1 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {v['batch']} | {v['in_batch_accuracy']:.3f} | {v['full_bank_R@1']:.3f} |"
        for n, v in report["in_batch"].items()
    ]
    if "val_test_gap" in report:
        lines += ["", "## Val vs test (model R@10)", "", json.dumps(report["val_test_gap"])]
    lines += ["", "## Plots", "", "![recall](recall_at_k.png)", "![ranks](rank_histogram.png)"]
    if report.get("training_curves"):
        lines.append("![training](training_curves.png)")
    return "\n".join(lines) + "\n"


def diagnostics_section(diagnostics: dict) -> list[str]:
    """The report's diagnostics table: margins and where each method's top impostor comes from."""
    lines = [
        "## Diagnostics (all candidates)",
        "",
        "| method | cos truth p50 | cos top impostor p50 | margin mean | margin > 0 | impostor: context "
        "| same article | other article |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, d in diagnostics.items():
        src = d["top_impostor_from"]
        lines.append(
            f"| {name} | {d['cos_truth']['p50']:.3f} | {d['cos_top_impostor']['p50']:.3f} | "
            f"{d['margin_mean']:+.3f} | {d['positive_margin_share']:.3f} | {src['context_chunk']:.3f} | "
            f"{src['same_article']:.3f} | {src['other_article']:.3f} |"
        )
    return lines


def plots(report: dict, ranks: dict[str, np.ndarray], folder: Path, metrics_jsonl: Path | None) -> list[str]:
    """Recall@K curves of every method, the rank histogram, and training curves when a run has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in report["views"]["all"].items():
        style = (
            dict(linewidth=2.5, color="black") if name == "model" else dict(linestyle="--" if name == "oracle" else "-")
        )
        ax.plot(KS, [row[f"R@{k}"] for k in KS], marker="o", label=name, **style)
    ax.set(xscale="log", xlabel="K", ylabel="Recall@K", ylim=(0, 1), title=f"Full-bank Recall@K ({report['split']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "recall_at_k.png", dpi=110)
    written.append("recall_at_k.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = [n for n in ("model", "last", "exp0.5", "oracle") if n in ranks]
    edges = np.unique(np.geomspace(1, max(int(r.max()) for r in ranks.values()) + 1, 40).astype(int))
    for name in shown:
        ax.hist(ranks[name], bins=edges, histtype="step", linewidth=2, label=name)
    ax.set(xscale="log", xlabel="rank of the truth (log)", ylabel="queries", title="Rank of the truth, full bank")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "rank_histogram.png", dpi=110)
    written.append("rank_histogram.png")
    plt.close(fig)

    if metrics_jsonl and training_curves(metrics_jsonl, folder / "training_curves.png"):
        written.append("training_curves.png")
    return written


def rank_column(method: str, view: str) -> str:
    """The ranks.parquet column of `method` in `view`: `model` (all candidates), `model@excl` (context excluded)."""
    return method + RANK_SUFFIX[view]


def write_ranks(
    path: Path, ranks: dict[str, np.ndarray], ranks_excl: dict[str, np.ndarray], target_key: np.ndarray | None
) -> None:
    """ranks.parquet: one row per query (`query`, `target_key`), one int64 rank column per method and view."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(next(iter(ranks.values())))
    columns = {"query": np.arange(n, dtype=np.int64)}
    if target_key is not None:
        columns["target_key"] = np.asarray(target_key, dtype=np.int64)
    for view, per_method in (("all", ranks), ("context_excluded", ranks_excl)):
        columns.update({rank_column(m, view): np.asarray(r, dtype=np.int64) for m, r in per_method.items()})
    pq.write_table(pa.table(columns), path)


def write(report: dict, out: str | Path, metrics_jsonl: Path | None = None) -> Path:
    """Write report.json, report.md, ranks.parquet and the plots into `out` (replaced atomically)."""
    ranks = report.pop("ranks")
    ranks_excl, target_key = report.pop("ranks_excl", {}), report.pop("target_key", None)
    with atomic_dir(out, overwrite=True) as tmp:
        write_ranks(tmp / RANKS_FILE, ranks, ranks_excl, target_key)
        written = plots(report, ranks, tmp, metrics_jsonl)
        report["training_curves"] = "training_curves.png" in written
        report["plots"] = written
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(markdown(report))
    return Path(out)


def report_file(path: str | Path) -> Path:
    """The report.json of a report file, its folder, or a run directory (its test evaluation)."""
    path = Path(path)
    for candidate in (path, path / "report.json", path / "eval" / "test" / "report.json"):
        if candidate.is_file():
            return candidate
    raise RayttError(f"{path}: no report.json here or under eval/test/ (run `raytt eval` or `raytt text-eval` first)")


def load(path: str | Path) -> dict:
    """A report from its file, its folder, or a run directory (its test evaluation)."""
    return read_json(report_file(path), "eval report", RayttError)


Row = tuple[int, str, dict]  # (which report, which method, its metrics in the view)


def compare_rows(reports: list[tuple[Path, dict]], view: str) -> dict[str, Row]:
    """Every report's model (labelled by its run), then the first report's baselines."""
    rows: dict[str, Row] = {}
    for i, (path, rep) in enumerate(reports):
        if "model" in rep["views"][view]:
            run = Path(rep["run"]) if rep["run"] else path
            label = run.name if run.name not in rows else f"{run.parent.name}/{run.name}"
            rows[label] = (i, "model", rep["views"][view]["model"])
    first = reports[0][1]["views"][view]
    rows.update({name: (0, name, row) for name, row in first.items() if name != "model"})
    return rows


def compare(paths: list[str | Path], view: str = "all", interval_metrics: tuple[str, ...] = INTERVAL_METRICS) -> str:
    """One table: every run's model and the baselines (from the first report), best per column marked; then
    the first row's differences from every other row with paired bootstrap intervals (see `intervals_table`)."""
    if view not in VIEWS:
        raise RayttError(f"compare: view must be one of {VIEWS}, got {view!r}")
    for metric in interval_metrics:
        check_metric(metric)  # refused before any report is read
    files = [report_file(p) for p in paths]
    reports = [(Path(p), read_json(f, "eval report", RayttError)) for p, f in zip(paths, files)]
    if any("methods" in rep for _, rep in reports):
        from raytt.text.compare import compare_text

        return compare_text([(f.parent, rep) for f, (_, rep) in zip(files, reports)])
    rows = compare_rows(reports, view)
    shards = {(str(Path(rep["shards"]).resolve()), rep["split"], rep["queries"]) for _, rep in reports}
    note = "" if len(shards) == 1 else "\nwarning: the reports evaluate different shards/splits/query counts"
    text = f"compare ({view.replace('_', ' ')}; * = best per column)\n" + table({k: r[2] for k, r in rows.items()})
    return text + note + "\n\n" + intervals_table([f.parent for f in files], rows, view, RESAMPLES, interval_metrics)


def read_ranks(path: Path) -> dict[str, np.ndarray]:
    """ranks.parquet as columns."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return {name: t.column(name).to_numpy() for name in t.column_names}


def matched_ranks(folders: list[Path], rows: dict[str, Row], view: str) -> tuple[list[dict] | None, str]:
    """Every report's ranks.parquet, or why they cannot be paired (missing, other queries, a method absent)."""
    import pyarrow as pa

    tables = []
    for folder in folders:
        if not (folder / RANKS_FILE).is_file():
            return None, f"{folder} has no {RANKS_FILE} (written by `raytt eval` since per-query ranks are kept)"
        try:
            tables.append(read_ranks(folder / RANKS_FILE))
        except (OSError, pa.ArrowException) as e:
            return None, f"{folder / RANKS_FILE} is unreadable ({e})"
    first = tables[0]
    for folder, t in zip(folders[1:], tables[1:]):
        if len(t["query"]) != len(first["query"]):
            return None, f"{folders[0]} ranks {len(first['query']):,} queries and {folder} {len(t['query']):,}"
        if "target_key" not in first or "target_key" not in t:
            return None, f"{folders[0]} or {folder} has no target_key column, so their queries cannot be matched"
        if not np.array_equal(first["target_key"], t["target_key"]):
            return None, f"{folders[0]} and {folder} rank different queries (their target keys differ)"
    for i, method, _ in rows.values():
        if rank_column(method, view) not in tables[i]:
            return None, f"{folders[i] / RANKS_FILE} has no column {rank_column(method, view)!r}"
    return tables, ""


def intervals_table(
    folders: list[Path],
    rows: dict[str, Row],
    view: str,
    resamples: int = RESAMPLES,
    interval_metrics: tuple[str, ...] = INTERVAL_METRICS,
) -> str:
    """The first row minus every other row in each of `interval_metrics`, with its paired bootstrap interval.

    Only when every report kept per-query ranks of the same queries; otherwise one line saying why not.
    """
    tables, why = matched_ranks(folders, rows, view)
    if tables is None:
        return f"intervals not shown: {why}"
    (ref_label, (ref_i, ref_method, _)), *others = rows.items()
    ref = tables[ref_i][rank_column(ref_method, view)]
    if not others:
        return f"intervals not shown: nothing to compare {ref_label} with"
    head = (
        f"{ref_label} minus each row ({view.replace('_', ' ')}; {LEVEL:.0%} paired bootstrap over {len(ref):,} "
        f"queries, {resamples} resamples; * = interval excludes 0)"
    )
    name_width = max(10, *(len(label) + 1 for label, _ in others))
    width = 27
    lines = [head, "vs".ljust(name_width) + "".join(m.rjust(width) for m in interval_metrics)]
    for label, (i, method, _) in others:
        other = tables[i][rank_column(method, view)]
        cells = [
            describe(*paired_bootstrap(per_query(ref, m), per_query(other, m), resamples)) for m in interval_metrics
        ]
        lines.append(label.ljust(name_width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)
