"""Atomic output: everything is written under a temporary sibling and renamed into place at the end.

A crash, a gate that fails half-way or Ctrl-C never leaves a partial bank or shard set at the
destination; a rename within one filesystem is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from raytt.errors import RayttError


@contextlib.contextmanager
def atomic_dir(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dest` only if the block finishes without error."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise RayttError(f"{dest}: already exists (pass --overwrite to replace it)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "x")
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | Path, kind: str, error: type[RayttError] = RayttError) -> dict[str, Any]:
    """Read a manifest, turning a missing or corrupt file into `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no {kind} manifest here (is {path.parent} a {kind}?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {kind} manifest is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {kind} manifest must be a JSON object")
    return data
