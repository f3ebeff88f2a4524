"""How close a trained tower is to what its context can reveal, on a synthetic bank, by context length.

Three predictors are ranked against the full bank on the run's test rows:
- the run's tower (its `best/` checkpoint);
- the generator's oracle: it knows each article's centre, plane, speed and the phase up to the
  previous chunk (the ceiling the demo's bar is measured against);
- a context oracle (`raytt.synthetic.context_oracle`): the same, except that it estimates the rotation
  speed from the context's own (noise-free) phases, as any model must. One context chunk shows no
  speed; it then guesses a direction, right half of the time.
The context oracle's ratio to the oracle is what the context can reveal at most; the tower's ratio
is printed beside it, per context length and overall. Measured in one run, on the same rows.

    python bench/demo_ceiling.py [--run runs/demo/mix]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from raytt import config
from raytt.bank import load_bank
from raytt.checkpoints import load_model
from raytt.evaluation import load_queries
from raytt.retrieval import recall_at, truth_ranks
from raytt.sequences import open_shards
from raytt.synthetic import OraclePredictor, context_oracle
from raytt.towers import index_vectors, query_vectors
from raytt.training.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo/mix", help="a trained run on a synthetic bank (make demo)")
    args = parser.parse_args()
    run = Path(args.run)
    cfg = config.load(TrainConfig, run / "config.yaml")
    bank_dir = Path(cfg.data.bank)
    bank = load_bank(bank_dir)
    queries = load_queries(open_shards(cfg.data.shards), "test")
    model, _ = load_model(run / "best")
    predictors = {
        "model": query_vectors(model, bank.vectors, queries.context, queries.lengths),
        "oracle": OraclePredictor(bank_dir).predict(queries.target),
        "context oracle": context_oracle(bank_dir, queries.target, queries.lengths),
    }
    index = {"model": index_vectors(model, bank.vectors)}  # the model ranks in its doc tower's space, as in eval
    ranks = {name: truth_ranks(q, queries.target, index.get(name, bank.vectors)) for name, q in predictors.items()}
    print(
        f"{run}: {len(queries.target):,} test queries, full bank of {len(bank.vectors):,}; "
        "R@10 and its ratio to the oracle's"
    )
    print(f"{'context':>8} {'queries':>8} {'oracle':>8} {'context oracle':>16} {'model':>14}")
    groups = [(str(n), queries.lengths == n) for n in np.unique(queries.lengths)]
    for label, rows in groups + [("all", np.ones(len(queries.target), dtype=bool))]:
        r = {name: recall_at(ranks[name][rows], 10) for name in ranks}
        print(
            f"{label:>8} {int(rows.sum()):>8,} {r['oracle']:>8.3f} "
            f"{r['context oracle']:>7.3f} ({r['context oracle'] / r['oracle']:.3f}x) "
            f"{r['model']:>5.3f} ({r['model'] / r['oracle']:.3f}x)"
        )


if __name__ == "__main__":
    main()
