"""Evaluation: metrics against brute force, both views, the oracle check, reports and comparison."""

import json
import math

import numpy as np
import pytest
from helpers import QUIET
from hypothesis import given, settings
from hypothesis import strategies as st

from raytt import report
from raytt.bank import scan_bank
from raytt.evaluation import EvalError, evaluate, histogram, in_batch_accuracy, metrics
from raytt.retrieval import TIE_EPS, scan
from raytt.sequences import BuildConfig, build_shards
from raytt.synthetic import SynthConfig, generate


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 100),
    q=st.integers(1, 25),
    dup=st.integers(0, 5),
    seed=st.integers(0, 999),
    chunk=st.integers(1, 40),
)
def test_scan_matches_brute_force_in_both_views(n, q, dup, seed, chunk):
    rng = np.random.default_rng(seed)
    bank = np.round(rng.standard_normal((n, 6)), 1).astype(np.float32)  # rounding makes exact ties common
    bank[rng.integers(0, n, dup)] = bank[0]
    truth = rng.integers(0, n, q)
    queries = np.where(rng.random((q, 1)) < 0.3, bank[truth], np.round(rng.standard_normal((q, 6)), 1)).astype(
        np.float32
    )
    context = rng.integers(-1, n, (q, 4))
    got = scan(queries, truth, bank, context=context, bank_chunk=chunk, query_block=6, device="cpu")
    scores = queries.astype(np.float64) @ bank.T.astype(np.float64)
    for i, t in enumerate(truth):
        others = np.ones(n, bool)
        others[t] = False
        ahead = others & (scores[i] >= scores[i, t] - TIE_EPS)
        assert got.ranks[i] == 1 + ahead.sum()
        ctx = {int(c) for c in context[i] if c >= 0 and c != t}
        assert got.ranks[i] - got.ranks_excl[i] == sum(ahead[c] for c in ctx)
        assert got.impostor_key[i] != t and got.impostor_score[i] == pytest.approx(scores[i, others].max(), abs=1e-4)
        others[list(ctx)] = False
        if others.any():
            assert got.impostor_key_excl[i] not in ctx | {t}
            assert got.impostor_score_excl[i] == pytest.approx(scores[i, others].max(), abs=1e-4)


def test_metrics_hand_values():
    ranks = np.array([1, 2, 11, 2000])
    out = metrics(ranks)
    assert out["R@1"] == 0.25 and out["R@10"] == 0.5 and out["R@1000"] == 0.75
    assert out["MRR@10"] == pytest.approx((1 + 0.5) / 4)
    assert out["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert out["median_rank"] == 6.5 and out["mean_rank"] == pytest.approx(2014 / 4)
    assert histogram(ranks) == {
        "1": 1,
        "2-5": 1,
        "6-10": 0,
        "11-50": 1,
        "51-100": 0,
        "101-500": 0,
        "501-1000": 0,
        ">1000": 1,
    }


def test_in_batch_accuracy_can_be_perfect_while_full_bank_fails():
    # 4 queries whose positives are mutually far apart: in-batch is easy, whatever the bank holds
    positives = np.eye(4, dtype=np.float32)
    queries = positives * 0.9 + 0.1
    assert in_batch_accuracy(queries, positives, np.arange(4), batch=4) == 1.0


def test_baselines_only_report(synth_shards, tmp_path):
    rep = evaluate(synth_shards, "test", max_queries=300, progress=QUIET)
    assert rep["oracle_check"]["recall@1"] == 1.0
    for view in ("all", "context_excluded"):
        assert set(rep["views"][view]) == {"last", "mean", "exp0.1", "exp0.3", "exp0.5", "exp0.7", "oracle"}
    for name, row in rep["views"]["all"].items():
        excl = rep["views"]["context_excluded"][name]
        assert excl["mean_rank"] <= row["mean_rank"]
    assert rep["views"]["all"]["oracle"]["R@10"] > rep["views"]["all"]["last"]["R@10"]
    assert sum(rep["histogram"]["last"].values()) == 300
    src = rep["diagnostics"]["last"]["top_impostor_from"]
    assert sum(src.values()) == pytest.approx(1.0)
    out = report.write(rep, tmp_path / "eval")
    saved = json.loads((out / "report.json").read_text())
    assert saved["views"] == rep["views"] and "ranks" not in saved
    assert {"report.md", "recall_at_k.png", "rank_histogram.png"} <= {p.name for p in out.iterdir()}
    assert "context excluded" in (out / "report.md").read_text()
    table = report.compare([out])
    assert "oracle" in table and "*" in table.splitlines()[-1]


def test_heuristics_search_the_bank_even_when_the_model_has_a_doc_tower(synth_shards, tmp_path):
    """A trained doc tower's index is the model's own: the baselines' figures must not depend on it."""
    from helpers import fake_run

    from raytt.evaluation import Model

    run = fake_run(tmp_path, synth_shards, doc="mlp")
    alone = evaluate(synth_shards, "test", max_queries=300, progress=QUIET)
    with_model = evaluate(synth_shards, "test", Model(run, run / "best", 64), max_queries=300, progress=QUIET)
    for view in ("all", "context_excluded"):
        for name, row in alone["views"][view].items():
            assert with_model["views"][view][name] == row, (view, name)
    assert with_model["views"]["all"]["model"] != with_model["views"]["all"]["last"]


def test_oracle_check_refuses_shards_of_another_bank(synth_bank, tmp_path):
    other = tmp_path / "other_bank"
    generate(SynthConfig(num_vectors=4000, dim=64, latent_dim=16, seed=7), other, progress=QUIET)
    shards = tmp_path / "shards"
    build_shards(scan_bank(other), shards, BuildConfig(context_len=4), progress=QUIET)
    with pytest.raises(EvalError, match="not this bank's vectors"):
        evaluate(shards, "test", bank_path=synth_bank, max_queries=100, progress=QUIET)


def test_compare_marks_the_best_per_column():
    rows = {"a": {"R@10": 0.5, "median_rank": 3.0}, "b": {"R@10": 0.7, "median_rank": 9.0}}
    lines = report.table(rows, ("R@10", "median_rank")).splitlines()
    assert "0.700*" in lines[2] and "3*" in lines[1] and "0.500*" not in lines[1]


@pytest.mark.gpu
def test_scan_on_gpu_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device; test_scan_matches_brute_force_in_both_views is the CPU twin")
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((5000, 32)).astype(np.float32)
    truth = rng.integers(0, 5000, 300)
    queries = bank[truth] + rng.standard_normal((300, 32)).astype(np.float32)
    context = rng.integers(-1, 5000, (300, 5))
    cpu = scan(queries, truth, bank, context=context, device="cpu")
    gpu = scan(queries, truth, bank, context=context, device="cuda")
    # GEMM order differs between devices: allow a rare off-by-a-tie rank, nothing more
    assert np.mean(cpu.ranks == gpu.ranks) > 0.99 and np.abs(cpu.ranks - gpu.ranks).max() <= 2
    assert np.mean(cpu.ranks_excl == gpu.ranks_excl) > 0.99


def test_device_choice_falls_back_to_cpu_and_refuses_a_missing_gpu():
    import torch

    from raytt.devices import resolve_device
    from raytt.errors import RayttError

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu") == resolve_device(None)
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(RayttError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RayttError, match="no GPU"):
            resolve_device("cuda")
