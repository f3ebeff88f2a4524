"""A real retrieval set built offline from apt's indexes: a package's one-line description is the
query, its long description the passage.

apt's English translation index (`apt-get update -o Acquire::Languages=en` fetches it) holds every
description once per `Description-md5`; the Packages index maps each binary package to its source
package. Sibling packages (one source, or sharing a description) form one group, so near-duplicates
never straddle splits; splits are drawn per group from a hash of its name.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raytt.errors import RayttError
from raytt.text.beir import BeirSet

APT_HELPER = "/usr/lib/apt/apt-helper"
MIN_PASSAGE_WORDS = 8  # a long description shorter than this is a stub, not a passage


@dataclass
class Description:
    package: str
    short: str
    long: str


@dataclass
class DebianSet:
    """Queries (short descriptions), passages (long ones), which passages answer which query, groups."""

    passages: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    positives: list[set[int]] = field(default_factory=list)  # per query: passage numbers
    groups: list[str] = field(default_factory=list)  # per query


def stanzas(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as {field: value}; continuation lines keep their leading space."""
    record: dict[str, str] = {}
    key = ""
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if record:
                yield record
            record, key = {}, ""
        elif line[0] in " \t" and key:
            record[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            record[key] = value.strip()
    if record:
        yield record


def description(record: dict[str, str]) -> Description | None:
    """A Translation-en paragraph as short + long text (` .` lines are paragraph breaks)."""
    text = record.get("Description-en")
    if text is None or "Package" not in record:
        return None
    short, _, rest = text.partition("\n")
    lines = [line[1:] if line.startswith(" ") else line for line in rest.splitlines()]
    long = "\n".join("" if line.strip() == "." else line.rstrip() for line in lines).strip()
    return Description(record["Package"], short.strip(), long)


def sources(records: Iterable[dict[str, str]]) -> dict[str, str]:
    """Binary package -> source package name (`Source: name (version)`; absent means the same name)."""
    return {r["Package"]: r.get("Source", r["Package"]).split(" ")[0] for r in records if "Package" in r}


def build(descriptions: Iterable[Description], source_of: dict[str, str]) -> DebianSet:
    """Deduplicate by text (one query per short description, one passage per long one) and group siblings."""
    out = DebianSet()
    query_no: dict[str, int] = {}
    passage_no: dict[str, int] = {}
    links: list[tuple[int, str]] = []  # (query, source)
    for d in descriptions:
        if len(d.long.split()) < MIN_PASSAGE_WORDS or not d.short:
            continue
        q = query_no.setdefault(d.short, len(query_no))
        p = passage_no.setdefault(d.long, len(passage_no))
        if q == len(out.queries):
            out.queries.append(d.short)
            out.positives.append(set())
        if p == len(out.passages):
            out.passages.append(d.long)
        out.positives[q].add(p)
        links.append((q, source_of.get(d.package, d.package)))
    out.groups = _groups(len(out.queries), links, out.positives)
    return out


def _groups(queries: int, links: list[tuple[int, str]], positives: list[set[int]]) -> list[str]:
    """Connected components over queries, joined by a shared source package or a shared passage."""
    parent = list(range(queries))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        parent[root(a)] = root(b)

    first_of: dict[object, int] = {}
    for q, source in links:
        join(q, first_of.setdefault(("source", source), q))
    for q, passages in enumerate(positives):
        for p in passages:
            join(q, first_of.setdefault(("passage", p), q))
    name_of: dict[int, str] = {}
    for q, source in links:
        name_of.setdefault(root(q), source)
    return [name_of[root(q)] for q in range(queries)]


def split_of(group: str, shares: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """train, dev or test, drawn from the group's name (stable across runs and machines)."""
    u = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if u < shares[0] else "dev" if u < shares[0] + shares[1] else "test"


def apt_lists(kind: str) -> list[Path]:
    """apt's downloaded index files of one kind: `Translations` (English) or `Packages`."""
    query = ["Created-By: Translations", "Language: en"] if kind == "Translations" else ["Created-By: Packages"]
    try:
        found = subprocess.run(
            ["apt-get", "-o", "Acquire::Languages=en", "indextargets", "--format", "$(FILENAME)", *query],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RayttError(f"debian: cannot ask apt for its {kind} lists ({exc}); this needs a Debian system") from exc
    present = [Path(p) for p in found if Path(p).exists()]
    if not present:
        raise RayttError(f"debian: apt has no {kind} index here; run `apt-get update -o Acquire::Languages=en` first")
    return present


def read_list(path: Path) -> Iterator[str]:
    """One apt list's lines, decompressed by apt itself (lz4, xz, gz or plain)."""
    proc = subprocess.Popen([APT_HELPER, "cat-file", str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    yield from proc.stdout
    if proc.wait() != 0:
        raise RayttError(f"debian: {path}: apt-helper could not read it (exit {proc.returncode})")


def as_beir(data: DebianSet) -> BeirSet:
    """The set as a BEIR folder's contents: passages `p<n>`, queries `q<n>` with their group, qrels by split."""
    out = BeirSet(
        passages={f"p{i}": ("", text) for i, text in enumerate(data.passages)},
        queries={f"q{i}": text for i, text in enumerate(data.queries)},
        groups={f"q{i}": group for i, group in enumerate(data.groups)},
    )
    for q, (passages, group) in enumerate(zip(data.positives, data.groups)):
        out.qrels.setdefault(split_of(group), {})[f"q{q}"] = {f"p{p}": 1 for p in sorted(passages)}
    out.qrels = {s: out.qrels.get(s, {}) for s in ("train", "dev", "test")}
    return out


def from_apt() -> DebianSet:
    """The set from this machine's apt indexes (Translation-en and Packages)."""
    translated = (r for path in apt_lists("Translations") for r in stanzas(read_list(path)))
    source_of = sources(r for path in apt_lists("Packages") for r in stanzas(read_list(path)))
    return build(filter(None, map(description, translated)), source_of)
