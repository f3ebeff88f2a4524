"""`metrics.jsonl`, the run's log: one JSON row per progress line, epoch end and (re)start.

A run that restarts (a worker group restarted by Ray Train, or a re-run of the same name) replays
the steps after its last checkpoint, so the file can hold a step twice. Every row carries the
`attempt` that wrote it, and `read` keeps, for each step and kind of row, the latest attempt's row:
plots, summaries and `compare` see each step once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raytt.errors import RayttError

KINDS = ("start", "train", "epoch")


def kind_of(row: dict) -> str:
    """The row's kind: `start` (an attempt began), `train` (a progress line) or `epoch` (validation)."""
    if "kind" in row:
        return row["kind"]
    return "epoch" if any(k.startswith("val/") for k in row) else "train"


def append(path: str | Path, row: dict, kind: str, attempt: int) -> dict:
    """Append one row (stamped with kind, attempt and wall time) and return it as written."""
    if kind not in KINDS:
        raise ValueError(f"row kind must be one of {KINDS}, got {kind!r}")
    stamped = {**row, "kind": kind, "attempt": attempt, "time": round(time.time(), 3)}
    try:
        with open(path, "a+b") as f:
            lead = b"\n" if _cut_short(f) else b""
            f.write(lead + json.dumps(stamped).encode() + b"\n")
    except OSError as exc:
        raise RayttError(f"{path}: cannot append to the run's metrics ({exc.strerror or exc})") from exc
    return stamped


def _cut_short(f) -> bool:
    """Whether the file's last line lacks its newline (a crash mid-write): the next row must not join it."""
    end = f.seek(0, 2)
    if end == 0:
        return False
    f.seek(end - 1)
    return f.read(1) != b"\n"


def read_all(path: str | Path) -> list[dict]:
    """Every row as written, attempts and replays included; a line a crash cut short is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue   # empty, or a line cut short by a crash mid-write
    return rows


def read(path: str | Path, kind: str | None = None) -> list[dict]:
    """Train and epoch rows, each step once, in step order (only `kind` rows when given).

    A row is superseded when a later attempt started before its step (that attempt replayed or
    abandoned it); of rows left with the same step and kind, the latest attempt's wins.
    """
    rows = read_all(path)
    starts = [(r.get("attempt", 0), r.get("step", 0)) for r in rows if kind_of(r) == "start"]
    latest: dict[tuple[int, str], dict] = {}
    for row in rows:
        key = (row.get("step", 0), kind_of(row))
        attempt = row.get("attempt", 0)
        if key[1] == "start" or any(b > attempt and began < key[0] for b, began in starts):
            continue
        if key not in latest or attempt >= latest[key].get("attempt", 0):
            latest[key] = row
    ordered = [latest[k] for k in sorted(latest, key=lambda k: (k[0], KINDS.index(k[1])))]
    return [r for r in ordered if kind is None or kind_of(r) == kind]


def starts(path: str | Path) -> list[dict]:
    """The `start` rows: when each attempt began and the step it resumed from."""
    return [r for r in read_all(path) if kind_of(r) == "start"]


def next_attempt(path: str | Path) -> int:
    """The number the next attempt of this run writes under (1 for a new run)."""
    return max((row.get("attempt", 0) for row in read_all(path)), default=0) + 1
