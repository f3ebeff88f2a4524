"""Tensor helpers shared by towers, mining, training and retrieval."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a numpy array, read-only ones (from the object store) included."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def gather(bank: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Vectors for keys of any shape; key -1 (padding) gives a zero vector."""
    out = bank[keys.clamp(min=0)]
    return out * (keys >= 0).unsqueeze(-1).to(out.dtype)
