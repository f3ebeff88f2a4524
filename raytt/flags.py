"""Command-line flags generated from the config dataclasses: every field of every section, with its help.

Top-level fields are `--field-name`; fields of a section are `--section.field-name` (`--optim.lr`,
`--tower.query`). Literal fields list their choices, booleans are `--use-gpu/--no-use-gpu`, and fields
whose metadata says `hidden` (test hooks) take flags but stay out of `--help`. `--config FILE` and
`--set key=value` work beside them: flags win over `--set`, which wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from raytt import config

PREFIX = "cfg__"


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """`--config FILE`, `--set KEY=VALUE`, and one flag per field of `cls` and of each of its sections."""
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config YAML or with --set)")
    group.add_argument("--config", type=Path, help="YAML file with these settings")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    _add_fields(parser, group, cls, "")


def _add_fields(parser: argparse.ArgumentParser, group, cls: type, section: str) -> None:
    hints = typing.get_type_hints(cls)
    nested = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested.append((f.name, tp))
        elif typing.get_origin(tp) is not dict:
            _add_flag(group, f, tp, section)
    for name, tp in nested:
        sub = parser.add_argument_group(f"{section}{name} section")
        _add_fields(parser, sub, tp, f"{section}{name}.")


def _add_flag(group, f: dataclasses.Field, tp, section: str) -> None:
    key = f"{section}{f.name}"
    flag = "--" + section + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = f"{f.metadata.get('help', '')} (default: {_shown(default)})"
    kwargs: dict = {
        "dest": PREFIX + key.replace(".", "__"),
        "default": None,
        "help": argparse.SUPPRESS if f.metadata.get("hidden") else shown,
    }
    if tp is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(tp) is typing.Literal:
        group.add_argument(flag, choices=[str(c) for c in typing.get_args(tp)], **kwargs)
    else:
        kind = "comma-separated" if typing.get_origin(tp) is tuple else getattr(tp, "__name__", str(tp))
        group.add_argument(flag, metavar=kind.upper(), **kwargs)


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return repr(value) if value == "" else str(value)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """`--set` items, then one `key=value` per flag given (flags win: they come last)."""
    items = list(getattr(args, "set", []) or [])
    for dest, value in vars(args).items():
        if dest.startswith(PREFIX) and value is not None:
            key = dest[len(PREFIX) :].replace("__", ".")
            items.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return items


def config_from_args(cls: type, args: argparse.Namespace):
    """Resolve file -> --set -> flags into one checked config object."""
    return config.load(cls, args.config, overrides_from_args(args))
