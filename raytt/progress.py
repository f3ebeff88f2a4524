"""Progress a person can follow: every console line stamped with the wall time, optionally kept in a log file.

Commands take a `progress` callable; the default, `say`, prints a timestamped line. A run's driver
and its rank-0 worker use a `Console` that also appends each line to the run's `train.log`.
"""

from __future__ import annotations

import time
from pathlib import Path


def stamp(line: str, when: float | None = None) -> str:
    """`line` prefixed with the local wall time, e.g. `2026-12-02 10:15:03  train: ...` (every line of it)."""
    prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return "\n".join(f"{prefix}  {part}" for part in str(line).split("\n"))


def say(line: str) -> None:
    """The default progress callable: print `line`, timestamped, and flush (workers' output is streamed)."""
    print(stamp(line), flush=True)


class Console:
    """A progress callable that prints timestamped lines and appends them to `keep_in` (e.g. RUN/train.log)."""

    def __init__(self, keep_in: str | Path | None = None, prefix: str = "", hold: bool = False) -> None:
        self.keep_in = Path(keep_in) if keep_in else None
        self.prefix = prefix
        self.held = hold
        self.waiting: list[str] = []

    def __call__(self, line: str) -> None:
        print(stamp(f"{self.prefix}{line}"), flush=True)
        self.keep(line)

    def keep(self, line: str) -> None:
        """Append the timestamped line to the log file alone.

        With `hold`, lines wait in memory until `release()`: a run refused before it starts writes nothing.
        """
        if self.keep_in is None:
            return
        self.waiting.append(stamp(f"{self.prefix}{line}"))
        if not self.held:
            self._write()

    def release(self) -> None:
        """Stop holding: write the lines that waited, and every line from now on."""
        self.held = False
        self._write()

    def _write(self) -> None:
        if self.waiting:
            self.keep_in.parent.mkdir(parents=True, exist_ok=True)
            with open(self.keep_in, "a") as log:
                log.write("".join(f"{text}\n" for text in self.waiting))
            self.waiting.clear()


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left at the pace so far (`done` of `total` units in `elapsed_s`); None before the first unit."""
    if done <= 0:
        return None
    return elapsed_s / done * max(0, total - done)
