"""The mining curriculum: which epochs mine, how many negatives, from which cosine band.

`"0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"` reads: epochs 0..5 train on in-batch negatives
only; epochs 6..10 add 8 mined negatives per query whose cosine to the query lies in [0.82, 0.92];
epochs 11..30 add 16 from [0.84, 0.96]. Epochs are 0-based and ranges inclusive; segments must be
in order, start at 0, and leave no gap or overlap. An empty schedule never mines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from raytt.errors import ConfigError

SEGMENT = re.compile(r"^(\d+)(?:-(\d+))?:(?:(none)|(\d+)@([-+]?[0-9.]+)-([-+]?[0-9.]+))$")


@dataclass(frozen=True)
class Stage:
    """One segment: epochs first..last mine `count` negatives with query cosine in [lo, hi] (count 0 = none)."""

    first: int
    last: int
    count: int = 0
    lo: float = -1.0
    hi: float = 1.0

    def __str__(self) -> str:
        what = (
            "in-batch negatives only" if not self.count else f"{self.count} mined negatives, cosine {self.lo}-{self.hi}"
        )
        return f"epochs {self.first}-{self.last}: {what}"


NONE = Stage(0, 0)


@dataclass(frozen=True)
class Curriculum:
    text: str
    stages: tuple[Stage, ...]

    @property
    def mines(self) -> bool:
        return any(s.count for s in self.stages)

    @property
    def max_count(self) -> int:
        return max((s.count for s in self.stages), default=0)

    def at(self, epoch: int) -> Stage:
        """The stage for a 0-based epoch; epochs past the last stage (or an empty schedule) do not mine."""
        return next((s for s in self.stages if s.first <= epoch <= s.last), NONE)

    def check_covers(self, epochs: int, where: str = "mining.schedule") -> None:
        """A schedule that mines must say what every epoch of the run does."""
        if self.stages and self.stages[-1].last < epochs - 1:
            raise ConfigError(
                f"{where} {self.text!r} covers epochs 0-{self.stages[-1].last}, but the run has "
                f"{epochs} epochs (0-{epochs - 1}); extend the last segment"
            )

    def with_count(self, count: int) -> Curriculum:
        """The same schedule with every mining stage asking for `count` negatives."""
        stages = tuple(Stage(s.first, s.last, count, s.lo, s.hi) if s.count else s for s in self.stages)
        return Curriculum(self.text, stages)

    def describe(self) -> list[str]:
        return [str(s) for s in self.stages] or ["no mining: in-batch negatives only"]


def parse(text: str, where: str = "mining.schedule") -> Curriculum:
    """Parse and validate a schedule string; every error names the segment and what is wrong with it."""
    stages: list[Stage] = []
    parts = [p.strip() for p in text.strip().strip(";").split(";")] if text.strip() else []
    for i, part in enumerate(parts, 1):
        label = f"{where} segment {i} {part!r}"
        m = SEGMENT.match(part.replace(" ", ""))
        if not m:
            raise ConfigError(f"{label}: expected FIRST-LAST:none or FIRST-LAST:COUNT@LO-HI (e.g. 6-10:8@0.82-0.92)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        if last < first:
            raise ConfigError(f"{label}: epoch range runs backwards ({first} > {last})")
        expected = stages[-1].last + 1 if stages else 0
        if first > expected:
            raise ConfigError(f"{label}: gap, epochs {expected}-{first - 1} are not covered")
        if first < expected:
            raise ConfigError(f"{label}: overlaps the previous segment (epoch {first} is already covered)")
        if m.group(3):
            stages.append(Stage(first, last))
            continue
        count = int(m.group(4))
        try:
            lo, hi = float(m.group(5)), float(m.group(6))
        except ValueError as exc:
            raise ConfigError(f"{label}: the band's bounds must be numbers ({exc})") from exc
        if count < 1:
            raise ConfigError(f"{label}: the negative count must be >= 1 (use 'none' for no mining)")
        if not -1.0 <= lo < hi <= 1.0:
            raise ConfigError(f"{label}: the cosine band needs -1 <= lo < hi <= 1, got lo={lo} hi={hi}")
        stages.append(Stage(first, last, count, lo, hi))
    return Curriculum(text, tuple(stages))
