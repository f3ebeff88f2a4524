"""Atomic output, and run directories on cloud storage.

Everything is written under a temporary sibling and renamed into place at the end: a crash, a gate
that fails half-way or Ctrl-C never leaves a partial bank or shard set at the destination.

A run's `storage` may also be a URI (`s3://`, `gs://`, `abfs://`, `file://`: any pyarrow filesystem).
Then Ray Train writes the checkpoints there itself, and raytt's own small files (config, metrics,
`best/`, summary, reports) live in a local mirror that is downloaded before and uploaded after use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` storage locations (read and written through pyarrow filesystems)."""
    return "://" in str(location)


def locate(storage: str, name: str) -> tuple[Path, str | None]:
    """A run's (local directory, URI or None): a URI storage's runs live in a local mirror of `storage/name`."""
    if is_uri(storage):
        remote = f"{storage.rstrip('/')}/{name}"
        return mirror_of(remote), remote
    return Path(storage) / name, None


class Located:
    """For configs with `storage` and `name`: where their directory is (a path, or a URI's local mirror)."""

    storage: str
    name: str

    @property
    def remote(self) -> str | None:
        """The URI when `storage` is one (Ray writes there; `run_dir` mirrors raytt's own files), else None."""
        return locate(self.storage, self.name)[1]

    @property
    def run_dir(self) -> Path:
        return locate(self.storage, self.name)[0]

    @property
    def run(self):
        """The run directory as a `RunDir` (paths, URI mirror, metrics)."""
        from raytt.rundir import RunDir

        return RunDir(*locate(self.storage, self.name))


def mirror_of(uri: str) -> Path:
    """The local directory that mirrors a storage URI on this node."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.split("://", 1)[1].strip("/"))[-40:]
    return Path(tempfile.gettempdir()) / "raytt-mirror" / f"{tail}-{digest}"


def _filesystem(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:
        raise RayttError(f"storage {uri}: not a filesystem pyarrow can open ({exc})") from exc


def check_uri(uri: str) -> None:
    """Refuse a storage URI pyarrow cannot open, before any work starts."""
    _filesystem(uri)


def list_dirs(uri: str) -> list[str]:
    """The names of the directories directly under `uri` (none when it does not exist)."""
    import pyarrow.fs

    fs, root = _filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=False))
    return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory)


def download(uri: str, local: Path, skip: tuple[str, ...] = ()) -> int:
    """Copy the files under `uri` into `local` (top-level names starting with `skip` left out); returns the count."""
    import pyarrow.fs

    fs, root = _filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=True))
    count = 0
    for info in infos:
        rel = info.path[len(root) :].lstrip("/")
        if info.type != pyarrow.fs.FileType.File or rel.split("/")[0].startswith(skip):
            continue
        dest = Path(local) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(info.path) as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, dest)
        count += 1
    return count


def upload(local: Path, uri: str, skip: tuple[str, ...] = ()) -> int:
    """Copy the files under `local` to `uri`, leaving out dotfiles (temporaries, markers) and `skip` prefixes."""
    fs, root = _filesystem(uri)
    count = 0
    for path in sorted(Path(local).rglob("*")):
        rel = path.relative_to(local)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts) or rel.parts[0].startswith(skip):
            continue
        dest = f"{root.rstrip('/')}/{rel.as_posix()}"
        fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        with open(path, "rb") as src, fs.open_output_stream(dest) as out:
            shutil.copyfileobj(src, out)
        count += 1
    return count
