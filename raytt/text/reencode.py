"""The corpus re-encoded by a text tower's passage side with a Ray Data actor pool (ingest's pattern), for
validation and `text-eval --run` when the passage side trains: each actor holds one copy of the tower and reads
the passage table from the object store, so the work spreads over the cluster instead of one worker.
"""

from __future__ import annotations

import numpy as np
import torch

from raytt.mining.pool import model_state
from raytt.text.ranking import ENCODE_BATCH, encode_side
from raytt.text.towers import TextTowerConfig, TextTwoTower, build_text_tower


class PassageEncoder:
    """Ray Data actor: the passage side of one text tower (config and weights from the object store)."""

    def __init__(self, tower: TextTowerConfig, width: int, state: list, table: list, threads: float) -> None:
        import ray

        def fetched(box: list):  # Ray Data may already have resolved the ObjectRef in the list
            return ray.get(box[0]) if isinstance(box[0], ray.ObjectRef) else box[0]

        torch.set_num_threads(max(1, int(threads)))
        self.model = build_text_tower(tower, width)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in fetched(state).items()})
        self.table = fetched(table)

    def __call__(self, batch: dict) -> dict:
        batch["vector"] = list(encode_side(self.model, self.table[batch["data"]], "passage", "cpu"))
        return batch


def corpus_vectors(
    model: TextTwoTower, tower: TextTowerConfig, width: int, table, table_ref, actors: int, cpus: int, device="cpu"
) -> np.ndarray:
    """Every passage by `model`'s passage side: in-process when `actors` is 0, else by a Ray Data actor pool."""
    if not actors:
        return encode_side(model, table, "passage", device)
    return pool_encode(model, tower, width, table_ref, len(table), actors, cpus)


def pool_encode(
    model: TextTwoTower, tower: TextTowerConfig, width: int, table_ref, rows: int, actors: int, cpus: float
):
    """Unit vectors [rows, D] of every passage, in key order, by `actors` Ray Data actors of `cpus` CPUs each."""
    import ray

    state = ray.put(model_state(model))
    blocks = np.array_split(np.arange(rows, dtype=np.int64), max(1, min(rows // ENCODE_BATCH, 8 * actors)))
    ds = ray.data.from_numpy(blocks).map_batches(  # blocks made here: no read task needs a CPU the workers hold
        PassageEncoder,
        fn_constructor_kwargs={"tower": tower, "width": width, "state": [state], "table": [table_ref], "threads": cpus},
        batch_size=ENCODE_BATCH,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
    )
    out = np.zeros((rows, model.dim), np.float32)
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out[batch["data"]] = np.stack(batch["vector"])
        done += len(batch["data"])
    if done != rows:
        raise RuntimeError(f"passage re-encoding: {done} of {rows} passages came back from the encoder actors")
    return out
