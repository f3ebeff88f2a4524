"""Checkpoint layout of a run: what is saved, how it is found again, and how a model is rebuilt from it.

A checkpoint directory holds `model.pt` (the model's state dict), `train_state.pt` (optimizer,
scheduler, RNG, data position) and `meta.json` (step, epoch, metrics, tower config, dim). Everything
loads with `torch.load(weights_only=True)`: no pickled code runs on load.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from raytt import config
from raytt.errors import RayttError
from raytt.storage import download, read_json, upload, write_json
from raytt.towers import TowerConfig, TwoTower

MODEL, STATE, META = "model.pt", "train_state.pt", "meta.json"
PREFIX = "checkpoint_"


def save(folder: Path, model: torch.nn.Module, state: dict, meta: dict) -> None:
    """Write one checkpoint into an existing (temporary) folder."""
    torch.save(model.state_dict(), folder / MODEL)
    torch.save(state, folder / STATE)
    write_json(folder / META, meta)


def rng_state() -> dict:
    """torch, numpy and python RNG states as plain tensors, lists and numbers (loadable with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def load_state(folder: Path) -> dict:
    return torch.load(Path(folder) / STATE, weights_only=True)


def read_meta(folder: Path) -> dict:
    return read_json(Path(folder) / META, "checkpoint meta", RayttError)


def load_model(folder: str | Path, device: str = "cpu") -> tuple[TwoTower, dict]:
    """Rebuild the model a checkpoint (or `best/`) holds; returns (model, meta)."""
    folder = Path(folder)
    if not (folder / MODEL).is_file():
        raise RayttError(f"{folder}: not a checkpoint (no {MODEL})")
    meta = read_meta(folder)
    model = TwoTower(config.from_dict(TowerConfig, meta["tower"], str(folder / META), "tower"), int(meta["dim"]))
    model.load_state_dict(torch.load(folder / MODEL, weights_only=True, map_location=device))
    return model.to(device).eval(), meta


def pull(remote: str | None, run_dir: Path, with_checkpoints: bool = False) -> None:
    """Refresh a run's local mirror from its storage URI (no-op for path storage)."""
    if remote:
        download(remote, run_dir, skip=() if with_checkpoints else (PREFIX,))


def push(run_dir: Path, remote: str | None) -> None:
    """Upload a run's own files (config, metrics, best/, summary, reports) to its storage URI; Ray Train uploads checkpoints."""
    if remote:
        upload(run_dir, remote, skip=(PREFIX,))


def latest(run_dir: Path) -> Path | None:
    """The checkpoint with the highest step in a run directory, or None."""
    found = [(read_meta(p)["step"], p) for p in Path(run_dir).glob(f"{PREFIX}*") if (p / META).is_file()]
    return max(found)[1] if found else None


def resolve(run_dir: Path, which: str) -> Path:
    """`best`, `latest` or a path -> the checkpoint folder, with an error naming what is missing."""
    run_dir = Path(run_dir)
    if which == "best":
        folder = run_dir / "best"
    elif which == "latest":
        folder = latest(run_dir)
        if folder is None:
            raise RayttError(f"{run_dir}: no checkpoints yet")
    else:
        folder = Path(which)
    if not (folder / MODEL).is_file():
        raise RayttError(f"{folder}: no checkpoint there (expected {MODEL} and {META})")
    return folder
