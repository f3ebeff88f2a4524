"""Numbers with their uncertainty: per-query values, paired bootstrap intervals, and `compare`'s interval table."""

import copy
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import QUIET

from raytt import report
from raytt.errors import RayttError
from raytt.evaluation import evaluate, metrics
from raytt.intervals import describe, paired_bootstrap, per_query


def test_per_query_hand_values_and_their_means_are_the_report_metrics():
    ranks = np.array([1, 2, 10, 11, 2000])
    assert per_query(ranks, "R@10").tolist() == [1, 1, 1, 0, 0]
    assert per_query(ranks, "R@1").tolist() == [1, 0, 0, 0, 0]
    assert per_query(ranks, "MRR@10") == pytest.approx([1, 0.5, 0.1, 0, 0])
    assert per_query(ranks, "NDCG@10") == pytest.approx([1, 1 / math.log2(3), 1 / math.log2(11), 0, 0])
    wide = np.random.default_rng(0).integers(1, 3000, 500)
    for metric in ("R@1", "R@10", "R@1000", "MRR@10", "NDCG@10"):
        assert per_query(wide, metric).mean() == pytest.approx(metrics(wide)[metric])
    for bad in ("P@10", "R@", "R@0", "MRR"):
        with pytest.raises(RayttError, match="metric must be"):
            per_query(ranks, bad)
    with pytest.raises(RayttError, match="1-based"):
        per_query(np.array([0, 1]), "R@10")


def test_identical_inputs_give_a_zero_interval():
    values = per_query(np.random.default_rng(1).integers(1, 50, 300), "MRR@10")
    assert paired_bootstrap(values, values) == (0.0, 0.0, 0.0)
    assert not describe(0.0, 0.0, 0.0).endswith("*")


def test_a_clear_shift_excludes_zero_and_covers_the_true_difference():
    rng = np.random.default_rng(2)
    a = (rng.random(2000) < 0.6).astype(float)  # true R@10 0.6
    b = (rng.random(2000) < 0.4).astype(float)  # true R@10 0.4
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert 0 < low < 0.2 < high and low < diff < high
    assert describe(diff, low, high).endswith(" *")
    _, low, high = paired_bootstrap(b, a)
    assert high < 0 and describe(-diff, low, high).startswith("-")


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(3)
    a, b = rng.random(400), rng.random(400)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)
    assert paired_bootstrap(a, b, seed=5) != paired_bootstrap(a, b, seed=6)


def test_resampling_in_chunks_gives_the_same_answer(monkeypatch):
    from raytt import intervals

    rng = np.random.default_rng(4)
    a, b = rng.random(300), rng.random(300)
    whole = paired_bootstrap(a, b, resamples=500)
    monkeypatch.setattr(intervals, "CHUNK_ELEMENTS", 300 * 7)  # 7 resamples per chunk: 72 chunks
    chunked = paired_bootstrap(a, b, resamples=500)
    assert chunked[0] == whole[0] and abs(chunked[1] - whole[1]) < 0.02 and abs(chunked[2] - whole[2]) < 0.02


def test_pairing_makes_the_interval_far_narrower_than_unpaired_resampling():
    """b is a with 4% of its hits lost: query difficulty is shared, so only the pairing sees the small gap."""
    rng = np.random.default_rng(5)
    ranks_a = rng.integers(1, 40, 3000)
    ranks_b = np.where(rng.random(3000) < 0.04, 5000, ranks_a)
    a, b = per_query(ranks_a, "R@10"), per_query(ranks_b, "R@10")
    _, low, high = paired_bootstrap(a, b)
    idx_a, idx_b = rng.integers(0, 3000, (2, 2000, 3000))
    unpaired = np.quantile(a[idx_a].mean(1) - b[idx_b].mean(1), [0.025, 0.975])
    assert low > 0 and unpaired[0] < 0  # only the paired interval tells the methods apart
    assert (high - low) < (unpaired[1] - unpaired[0]) / 3


def test_refuses_mismatched_or_empty_inputs():
    with pytest.raises(RayttError, match="same queries"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(RayttError, match="no queries"):
        paired_bootstrap(np.zeros(0), np.zeros(0))


def _as_model(rep: dict, method: str, run: str) -> dict:
    """A copy of a baselines-only report in which `method` plays the trained model of run `run`."""
    rep = copy.deepcopy(rep)
    for per_method in (*rep["views"].values(), rep["histogram"], rep["diagnostics"], rep["in_batch"]):
        per_method["model"] = per_method.pop(method)
    for per_method in (rep["ranks"], rep["ranks_excl"]):
        per_method["model"] = per_method.pop(method)
    rep["run"], rep["checkpoint"] = run, f"{run}/checkpoints/best"
    return rep


@pytest.fixture(scope="module")
def baselines_report(synth_shards):
    return evaluate(synth_shards, "test", max_queries=300, progress=QUIET)


def test_write_keeps_per_query_ranks_of_both_views(baselines_report, tmp_path):
    rep = copy.deepcopy(baselines_report)
    out = report.write(rep, tmp_path / "eval")
    assert not {"ranks", "ranks_excl", "target_key"} & set(report.load(out))
    ranks = pq.read_table(out / "ranks.parquet")
    methods = list(baselines_report["views"]["all"])
    assert ranks.column_names == ["query", "target_key", *methods, *(f"{m}@excl" for m in methods)]
    assert all(ranks.schema.field(c).type == pa.int64() for c in ranks.column_names)
    assert ranks.column("query").to_pylist() == list(range(300))
    for m in methods:
        all_view, excl = ranks.column(m).to_numpy(), ranks.column(f"{m}@excl").to_numpy()
        assert metrics(all_view)["R@10"] == baselines_report["views"]["all"][m]["R@10"]
        assert metrics(excl)["R@10"] == baselines_report["views"]["context_excluded"][m]["R@10"]
        assert (excl <= all_view).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, nothing left over


def test_compare_shows_paired_intervals_of_the_first_model(baselines_report, tmp_path):
    alpha = report.write(_as_model(baselines_report, "oracle", "runs/alpha"), tmp_path / "alpha")
    beta = report.write(_as_model(baselines_report, "exp0.5", "runs/beta"), tmp_path / "beta")
    for view, suffix in (("all", ""), ("context_excluded", "@excl")):
        text = report.compare([alpha, beta], view)
        table, intervals = text.split("\n\n")
        assert table.splitlines()[2].startswith("alpha") and "beta" in table
        lines = intervals.splitlines()
        assert lines[0].startswith("alpha minus each row") and "95% paired bootstrap over 300 queries" in lines[0]
        rows = ["beta", "last", "mean", "exp0.1", "exp0.3", "exp0.5", "exp0.7"]
        assert [line.split()[0] for line in lines[2:]] == rows
        assert all(line.count("*") == 2 for line in lines[2:])  # the oracle beats every baseline, clearly
        last = baselines_report["views"][view]
        r10 = last["oracle"]["R@10"] - last["last"]["R@10"]
        assert f"{r10:+.3f} [" in lines[3]
        ranks = pq.read_table(alpha / "ranks.parquet").column(f"model{suffix}").to_numpy()
        assert metrics(ranks)["R@10"] == last["oracle"]["R@10"]


def test_compare_says_why_intervals_are_not_shown(baselines_report, tmp_path):
    first = report.write(copy.deepcopy(baselines_report), tmp_path / "first")
    shown = report.compare([first])
    assert shown.splitlines()[-8].startswith("last minus each row") and "oracle" in shown.splitlines()[-1]
    other = report.write(copy.deepcopy(baselines_report), tmp_path / "other")
    table = pq.read_table(other / "ranks.parquet")
    keys = table.column("target_key").to_numpy()[::-1].copy()
    pq.write_table(table.set_column(1, "target_key", pa.array(keys)), other / "ranks.parquet")
    assert report.compare([first, other]).splitlines()[-1] == (
        f"intervals not shown: {first} and {other} rank different queries (their target keys differ)"
    )
    pq.write_table(table.slice(0, 200), other / "ranks.parquet")
    assert report.compare([first, other]).splitlines()[-1] == (
        f"intervals not shown: {first} ranks 300 queries and {other} 200"
    )
    (other / "ranks.parquet").unlink()
    assert (
        report.compare([first, other]).splitlines()[-1].startswith(f"intervals not shown: {other} has no ranks.parquet")
    )


def test_compare_shows_intervals_on_the_metrics_asked_for(baselines_report, tmp_path):
    alpha = report.write(_as_model(baselines_report, "oracle", "runs/alpha"), tmp_path / "alpha")
    intervals = report.compare([alpha], "all", ("R@100", "NDCG@10")).split("\n\n")[1].splitlines()
    assert intervals[1].split() == ["vs", "R@100", "NDCG@10"]
    views = baselines_report["views"]["all"]
    r100 = views["oracle"]["R@100"] - views["last"]["R@100"]
    assert intervals[2].split()[0] == "last" and f"{r100:+.3f} [" in intervals[2]
    with pytest.raises(RayttError, match="R@K, MRR@K or NDCG@K"):
        report.compare([alpha], "all", ("P@10",))
