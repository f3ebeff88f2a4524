"""Evaluation outputs: `report.json`, `report.md`, PNG plots (headless matplotlib), and run comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raytt.errors import RayttError
from raytt.evaluation import KS, VIEWS
from raytt.rundir import read
from raytt.storage import atomic_dir, read_json, write_json

TABLE_COLUMNS = ("R@1", "R@10", "R@100", "R@1000", "MRR@10", "NDCG@10", "median_rank")
LOWER_IS_BETTER = {"median_rank", "mean_rank"}


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

    if metrics_jsonl and metrics_jsonl.is_file():
        steps = read(metrics_jsonl, "train")
        epochs = read(metrics_jsonl, "epoch")
        if steps:
            fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
            a.plot([r["step"] for r in steps], [r["train/loss"] for r in steps])
            a.set(xlabel="step", ylabel="train loss", title="loss")
            b.plot([r["step"] for r in epochs], [r["val/R@10"] for r in epochs], marker="o", label="val full-bank R@10")
            b.plot(
                [r["step"] for r in epochs],
                [r["val/in_batch_acc"] for r in epochs],
                marker="s",
                label="val in-batch accuracy",
            )
            b.set(xlabel="step", ylim=(0, 1), title="validation")
            b.legend()
            fig.tight_layout()
            fig.savefig(folder / "training_curves.png", dpi=110)
            written.append("training_curves.png")
            plt.close(fig)
    return written


def write(report: dict, out: str | Path, metrics_jsonl: Path | None = None) -> Path:
    """Write report.json, report.md and the plots into `out` (replaced atomically)."""
    ranks = report.pop("ranks")
    with atomic_dir(out, overwrite=True) as tmp:
        written = plots(report, ranks, tmp, metrics_jsonl)
        report["training_curves"] = "training_curves.png" in written
        report["plots"] = written
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(markdown(report))
    return Path(out)


def load(path: str | Path) -> dict:
    """A report from its file, its folder, or a run directory (its test evaluation)."""
    path = Path(path)
    for candidate in (path, path / "report.json", path / "eval" / "test" / "report.json"):
        if candidate.is_file():
            return read_json(candidate, "eval report", RayttError)
    raise RayttError(f"{path}: no report.json here or under eval/test/ (run `raytt eval` first)")


def compare(paths: list[str | Path], view: str = "all") -> str:
    """One table: every run's model and the baselines (from the first report), best per column marked."""
    if view not in VIEWS:
        raise RayttError(f"compare: view must be one of {VIEWS}, got {view!r}")
    reports = [(Path(p), load(p)) for p in paths]
    rows, shards = {}, set()
    for path, rep in reports:
        shards.add((rep["shards"], rep["split"], rep["queries"]))
        if "model" in rep["views"][view]:
            run = Path(rep["run"]) if rep["run"] else path
            label = run.name if run.name not in rows else f"{run.parent.name}/{run.name}"
            rows[label] = rep["views"][view]["model"]
    first = reports[0][1]["views"][view]
    rows.update({name: row for name, row in first.items() if name != "model"})
    note = "" if len(shards) == 1 else "\nwarning: the reports evaluate different shards/splits/query counts"
    return f"compare ({view.replace('_', ' ')}; * = best per column)\n" + table(rows) + note
