"""Helpers the tests share (imported as `from helpers import ...`; conftest holds only fixtures and hooks)."""

import numpy as np

from raytt.synthetic import SynthConfig

QUIET = lambda *_: None
SMALL = SynthConfig(num_vectors=4000, dim=64, latent_dim=16)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random unit vectors of dimension d."""
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
