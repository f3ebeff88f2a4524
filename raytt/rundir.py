"""A run's directory: its paths, its mirror of a storage URI, and `metrics.jsonl`, the run's log.

`RunDir` is the one place that knows the layout (config.yaml, metrics.jsonl, summary.json, best/,
checkpoint_*, eval/) and mirrors raytt's own files to and from a storage URI (`pull`/`push`; Ray Train
uploads the checkpoints itself). `metrics.jsonl` holds one JSON row per progress line, epoch end and
(re)start. A run that restarts (a worker group restarted by Ray Train, or a re-run of the same name) replays
the steps after its last checkpoint, so the file can hold a step twice. Every row carries the
`attempt` that wrote it, and `read` keeps, for each step and kind of row, the latest attempt's row:
plots, summaries and `compare` see each step once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from raytt.errors import RayttError
from raytt.storage import download, upload

KINDS = ("start", "train", "epoch")
CHECKPOINT_PREFIX = "checkpoint_"


@dataclass(frozen=True)
class RunDir:
    """A run directory (`path`), and the storage URI it mirrors when the run lives in object storage."""

    path: Path
    remote: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def location(self) -> str:
        """Where the run lives, as a user would name it: the URI, or the directory."""
        return self.remote or str(self.path)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def best(self) -> Path:
        return self.path / "best"

    def eval_dir(self, split: str) -> Path:
        return self.path / "eval" / split

    def pull(self, with_checkpoints: bool = False) -> None:
        """Refresh the local mirror from the storage URI (no-op for a path run)."""
        if self.remote:
            download(self.remote, self.path, skip=() if with_checkpoints else (CHECKPOINT_PREFIX,))

    def push(self) -> None:
        """Upload raytt's own files (config, metrics, best/, summary, reports) to the storage URI (no-op for a path)."""
        if self.remote:
            upload(self.path, self.remote, skip=(CHECKPOINT_PREFIX,))

    def append(self, row: dict, kind: str, attempt: int) -> dict:
        """Append one row to metrics.jsonl (see the module function `append`)."""
        return append(self.metrics, row, kind, attempt)

    def rows(self, kind: str | None = None) -> list[dict]:
        """metrics.jsonl's train and epoch rows, each step once (see `read`)."""
        return read(self.metrics, kind)

    def all_rows(self) -> list[dict]:
        return read_all(self.metrics)

    def starts(self) -> list[dict]:
        return starts(self.metrics)

    def next_attempt(self) -> int:
        return next_attempt(self.metrics)


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
            continue  # empty, or a line cut short by a crash mid-write
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
