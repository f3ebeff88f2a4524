"""One device resolver for evaluation, ingest, mining and training: `auto`, `cpu` or `cuda`, refused clearly."""

from __future__ import annotations

from raytt.errors import ConfigError

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str | None = "auto", field: str = "device") -> str:
    """`None`/`auto` -> CUDA when torch sees a GPU, else CPU; `cuda` without a GPU is a `ConfigError` naming `field`."""
    import torch

    choice = "auto" if choice is None else choice
    if choice not in CHOICES:
        raise ConfigError(f"{field} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} 'cuda' asked for, but torch sees no GPU here (use auto or cpu)")
    return choice
