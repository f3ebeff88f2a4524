"""The configs that ship inside the package (`raytt/configs/*.yaml`), usable outside the repository.

`raytt configs list` names them, `raytt configs copy NAME DIR` copies one to edit, and a config path
that does not exist relative to the working directory but names a shipped config (`configs/demo.yaml`
or `demo.yaml`) resolves to the shipped file, so `raytt demo` and searches work from any directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from raytt.errors import ConfigError

FOLDER = Path(__file__).resolve().parent / "configs"


def names() -> list[str]:
    """Every shipped config's file name, sorted."""
    return sorted(p.name for p in FOLDER.glob("*.yaml"))


def path(name: str) -> Path:
    """The shipped config called `name` (with or without `.yaml`), or a ConfigError listing what ships."""
    file = FOLDER / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not file.is_file():
        raise ConfigError(f"no shipped config {name!r}; shipped: {', '.join(names())}")
    return file


def resolve(given: str | Path) -> Path:
    """`given` when it exists; else the shipped config of that file name (`configs/X.yaml`, `X.yaml` or `X`)."""
    given = Path(given)
    if given.exists():
        return given
    for name in (given.name, f"{given.name}.yaml"):
        if (FOLDER / name).is_file():
            return FOLDER / name
    return given


def copy(name: str, folder: str | Path) -> Path:
    """Copy a shipped config into `folder` (created), refusing to overwrite a file there."""
    source = path(name)
    dest = Path(folder) / source.name
    if dest.exists():
        raise ConfigError(f"{dest}: already exists; remove it or copy into another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest
