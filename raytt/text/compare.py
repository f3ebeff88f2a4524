"""`raytt compare` for text reports: one table of every method in several `raytt text-eval` reports, then the
first run minus every other row with paired-bootstrap intervals over the queries they all ranked.

Pairing needs each report's per-query values (`per_query.parquet`, written beside report.json) over the
same queries of the same bank; otherwise the table is shown and one line says why there are no intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raytt.errors import RayttError
from raytt.intervals import LEVEL, RESAMPLES, describe, paired_bootstrap
from raytt.report import table
from raytt.storage import atomic_write_bytes
from raytt.text.metrics import METRICS

PER_QUERY_FILE = "per_query.parquet"
BASELINES = ("bm25", "frozen")
Row = tuple[Path, str, dict]  # (the report's folder, the method's name in it, its mean metrics)


def is_text_report(report: dict) -> bool:
    return "methods" in report and "views" not in report


def write_per_query(folder: Path, rows: list[int], values: dict[str, dict[str, np.ndarray]]) -> None:
    """Each query's split-file row and every method's value of every metric (`method/metric` columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"row": pa.array(rows, pa.int64())}
    columns.update({f"{name}/{m}": pa.array(per[m], pa.float64()) for name, per in values.items() for m in METRICS})
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write_bytes(folder / PER_QUERY_FILE, sink.getvalue().to_pybytes())


def text_rows(reports: list[tuple[Path, dict]]) -> dict[str, Row]:
    """Every report's trained methods (each once, by name; untrained `@init` rows left out), then the first
    report's baselines."""
    rows: dict[str, Row] = {}
    for folder, rep in reports:
        for name, metrics in rep["methods"].items():
            if name not in BASELINES and not name.endswith("@init") and name not in rows:
                rows[name] = (folder, name, metrics)
    folder, first = reports[0]
    rows.update({name: (folder, name, first["methods"][name]) for name in BASELINES if name in first["methods"]})
    return rows


def compare_text(reports: list[tuple[Path, dict]]) -> str:
    """The table of `text_rows`, best per column marked, then the intervals (or why there are none)."""
    if not all(is_text_report(rep) for _, rep in reports):
        kinds = ", ".join(f"{f} ({'text' if is_text_report(r) else 'vector'})" for f, r in reports)
        raise RayttError(f"compare: text and vector reports cannot share a table: {kinds}")
    rows = text_rows(reports)
    sets = {(rep.get("bank_sha256"), rep["split"], rep["queries"]) for _, rep in reports}
    note = "" if len(sets) == 1 else "\nwarning: the reports rank different banks, splits or query counts"
    text = "compare (text reports; * = best per column)\n" + table({k: r[2] for k, r in rows.items()}, METRICS)
    return text + note + "\n\n" + text_intervals(rows, reports)


def text_intervals(rows: dict[str, Row], reports: list[tuple[Path, dict]], resamples: int = RESAMPLES) -> str:
    """The first row minus every other row in every metric, paired over the queries (one line why not)."""
    values, why = _matched(reports)
    if values is None:
        return f"intervals not shown: {why}"
    (ref, *others) = list(rows)
    if not others:
        return f"intervals not shown: nothing to compare {ref} with"
    n = len(next(iter(values.values()))["row"])
    name_width, width = max(10, *(len(o) + 1 for o in others)), 24
    lines = [
        f"{ref} minus each row ({LEVEL:.0%} paired bootstrap over {n:,} queries, {resamples} resamples; "
        f"* = interval excludes 0)",
        "vs".ljust(name_width) + "".join(m.rjust(width) for m in METRICS),
    ]
    for other in others:
        cells = [
            describe(*paired_bootstrap(_column(values, rows[ref], m), _column(values, rows[other], m), resamples))
            for m in METRICS
        ]
        lines.append(other.ljust(name_width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)


def _column(values: dict[Path, dict[str, np.ndarray]], row: Row, metric: str) -> np.ndarray:
    folder, method, _ = row
    return values[folder][f"{method}/{metric}"]


def _matched(reports: list[tuple[Path, dict]]):
    """Each report's per-query columns, or why they cannot be paired (a file missing, other queries)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = {}
    for folder, _ in reports:
        path = folder / PER_QUERY_FILE
        if not path.is_file():
            return None, f"{folder} has no {PER_QUERY_FILE} (raytt text-eval writes it since per-query values are kept)"
        try:
            t = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            return None, f"{path} is unreadable ({e})"
        values[folder] = {name: t.column(name).to_numpy() for name in t.column_names}
    (first, first_values), *rest = values.items()
    for folder, v in rest:
        if not np.array_equal(first_values["row"], v["row"]):
            return None, f"{first} and {folder} rank different queries (their split rows differ)"
    return values, ""
