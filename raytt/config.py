"""Typed dataclass configs: YAML file, then `--set key=value` / flag overrides, strictly checked.

Unknown keys and values of the wrong type are errors that name the file and the key, so a typo in
a run config fails before Ray starts instead of being silently ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from raytt.errors import ConfigError

C = TypeVar("C")


def doc(text: str, hidden: bool = False) -> dict:
    """A config field's help text, as `dataclasses.field(metadata=...)`; `hidden` keeps a test hook out of --help."""
    return {"help": text, "hidden": hidden}


class _Loader(yaml.SafeLoader):
    """YAML where only true/false are booleans: `yes`, `no`, `on`, `off` stay strings (and fail a bool field)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str):
    """YAML 1.2-style booleans (see `_Loader`); everything else as `yaml.safe_load` reads it."""
    return yaml.load(text, Loader=_Loader)


def load(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build `cls` from an optional YAML file plus `key=value` overrides (dotted keys for sections)."""
    data: dict[str, Any] = read_mapping(path) if path is not None else {}
    where = str(path) if path is not None else "defaults"
    for item in overrides or []:
        apply_override(data, item)
        where = f"{where} + overrides"
    return from_dict(cls, data, where)


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping, with a clear error for a missing file, bad YAML or a non-mapping."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        loaded = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded or {}


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`1e-3`, `[1, 2]`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = parse_yaml(raw) if raw.strip() else ""


def from_dict(cls: type[C], data: dict[str, Any], where: str = "config", section: str = "") -> C:
    """Construct dataclass `cls` from a plain mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: section {section or '<top>'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in {section or 'the top level'}; known keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where, f"{section}.{name}".lstrip("."))
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe mapping of a config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def dumps(cfg: Any) -> str:
    """The resolved config as YAML that `load` reads back to an equal object."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def dump(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML that `load` reads back to an equal object."""
    Path(path).write_text(dumps(cfg))


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        item_type = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: {key} needs {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, where, key) for a, v in zip(args, value))
        return tuple(_coerce(item_type, v, where, key) for v in value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    raise ConfigError(f"{where}: {key} has unsupported config type {tp!r}")
