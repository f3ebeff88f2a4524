"""Checkpoint layout of a run: what is saved, how it is found again, and how a model is rebuilt from it.

A checkpoint directory holds `model.pt` (the model's state dict), `train_state.pt` (optimizer,
scheduler, RNG, data position) and `meta.json` (step, epoch, metrics, tower config, dim, the bank's
embedder). Everything loads with `torch.load(weights_only=True)`: no pickled code runs on load.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from raytt import config
from raytt.errors import RayttError
from raytt.progress import say
from raytt.rundir import CHECKPOINT_PREFIX as PREFIX
from raytt.storage import download, list_dirs, read_json, write_json
from raytt.towers import TowerConfig, TwoTower

MODEL, STATE, META = "model.pt", "train_state.pt", "meta.json"


class CheckpointError(RayttError):
    """A checkpoint cannot be read back, or cannot be written."""


def name(step: int) -> str:
    """The directory name of the checkpoint taken at `step` (zero-padded: names sort by step)."""
    return f"{PREFIX}{step:09d}"


def save(folder: Path, model: torch.nn.Module, state: dict, meta: dict, dest: str | Path | None = None) -> None:
    """Write one checkpoint into an existing (temporary) folder that becomes `dest`.

    A failed write (a full disk) is a CheckpointError naming `dest`; the caller's temporary folder is
    discarded, so the checkpoints already there stay as they were.
    """
    try:
        torch.save(model.state_dict(), folder / MODEL)
        torch.save(state, folder / STATE)
        write_json(folder / META, meta)
    except OSError as exc:
        raise CheckpointError(
            f"{dest or folder}: cannot write the checkpoint of step {meta.get('step')} "
            f"({exc.strerror or exc}); the checkpoints written before it are intact"
        ) from exc


def read(folder: Path, device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """(weights, train state, meta) of a checkpoint, or a CheckpointError saying which file is unreadable."""
    folder = Path(folder)
    loaded = []
    for file in (MODEL, STATE):
        try:
            loaded.append(torch.load(folder / file, weights_only=True, map_location=device))
        except FileNotFoundError:
            raise CheckpointError(f"{folder.name}: {file} is missing") from None
        except Exception as exc:
            raise CheckpointError(
                f"{folder.name}: {file} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            ) from None
    meta = read_meta(folder)
    if not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{folder.name}: {META} has no step")
    return loaded[0], loaded[1], meta


def newest_first(folders: list[Path]) -> list[Path]:
    return sorted(folders, key=lambda p: p.name, reverse=True)


def found(run_dir: Path) -> list[Path]:
    """The checkpoint directories of a run, newest first (complete or not: see `first_readable`)."""
    return newest_first([p for p in Path(run_dir).glob(f"{PREFIX}*") if p.is_dir()])


def first_readable(
    folders: Iterator[Path], warn: Callable[[str], None] = say, device: str | torch.device = "cpu"
) -> tuple[Path, tuple[dict, dict, dict]] | None:
    """The first checkpoint of `folders` that reads back, with its contents; None when there is none.

    Unreadable ones (truncated, corrupt, half-written) are skipped with a warning that names them and
    the one used instead. When every one is unreadable, a CheckpointError lists them all.
    """
    bad: list[str] = []
    for folder in folders:
        try:
            contents = read(folder, device)
        except RayttError as exc:
            bad.append(str(exc))
            continue
        if bad:
            warn(f"checkpoints: skipping unreadable {'; '.join(bad)}; resuming from {folder.name} instead")
        return folder, contents
    if bad:
        raise CheckpointError(
            f"no checkpoint of this run can be read ({'; '.join(bad)}); delete them (or the run "
            f"directory) to start over"
        )
    return None


def rng_state() -> dict:
    """torch, numpy and python RNG states as plain tensors, lists and numbers (loadable with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }


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
    model.load_state_dict(load_weights(folder, device))
    return model.to(device).eval(), meta


def load_weights(folder: str | Path, device: str | torch.device = "cpu") -> dict:
    """The model's state dict alone (no optimizer state): what evaluation and fine-tuning need."""
    return torch.load(Path(folder) / MODEL, weights_only=True, map_location=device)


def init_folder(path: str | Path) -> Path:
    """The checkpoint a fine-tuning run starts from: `path` itself, or the `best/` of the run at `path`."""
    path = Path(path)
    for folder in (path, path / "best"):
        if (folder / MODEL).is_file() and (folder / META).is_file():
            return folder
    raise RayttError(f"init_from {path}: no checkpoint there (neither {path}/{MODEL} nor {path}/best/{MODEL})")


def check_embedder(meta: dict, embedder_id: str, where: str) -> None:
    """Refuse a tower trained on another embedder's vectors: same width, other space, meaningless scores.

    Checkpoints written before the meta recorded `embedder_id` pass: there is nothing to compare."""
    trained = meta.get("embedder_id")
    if trained and trained != embedder_id:
        raise RayttError(
            f"{where}: the tower was trained on vectors from {trained!r}, this bank's are from {embedder_id!r}; "
            "a tower reads only its own embedder's space (embed the corpus with that model, or train on this bank)"
        )


def check_init(path: str | Path, tower: TowerConfig, dim: int, embedder_id: str = "") -> Path:
    """Refuse a starting checkpoint whose parameters do not fit this run's tower, dim and embedder; its folder if
    they do."""
    folder = init_folder(path)
    meta = read_meta(folder)
    if int(meta.get("dim", -1)) != dim:
        raise RayttError(f"init_from {folder}: weights for {meta.get('dim')}-d vectors, this bank is {dim}-d")
    check_embedder(meta, embedder_id, f"init_from {folder}")
    want = {k: tuple(v.shape) for k, v in TwoTower(tower, dim).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in load_weights(folder).items()}
    wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if wrong:
        theirs = config.to_dict(config.from_dict(TowerConfig, meta["tower"], str(folder / META), "tower"))
        differ = sorted(k for k, v in config.to_dict(tower).items() if theirs.get(k) != v)
        raise RayttError(
            f"init_from {folder}: its tower does not fit this run's ({len(wrong)} parameter(s) differ, e.g. "
            f"{', '.join(wrong[:3])}; tower settings that differ: {', '.join(differ) or 'none'})"
        )
    return folder


def remote_newest_first(remote: str, run_dir: Path) -> Iterator[Path]:
    """A URI run's checkpoints, newest first, each downloaded into the local mirror `run_dir` when tried."""
    for name in sorted((n for n in list_dirs(remote) if n.startswith(PREFIX)), reverse=True):
        download(f"{remote}/{name}", Path(run_dir) / name)
        yield Path(run_dir) / name


def latest(run_dir: Path, warn: Callable[[str], None] = say) -> Path | None:
    """The newest checkpoint of a run directory that reads back (see `first_readable`), or None."""
    readable = first_readable(iter(found(run_dir)), warn)
    return readable[0] if readable else None


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
