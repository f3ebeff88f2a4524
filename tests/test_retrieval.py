import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from raytt.retrieval import mrr_at, recall_at, truth_ranks


def brute_force(queries, truth, bank, exclude):
    scores = queries @ bank.T
    ranks = []
    for i, t in enumerate(truth):
        others = np.ones(len(bank), bool)
        others[t] = False
        others[[e for e in exclude[i] if e >= 0]] = False
        others[t] = False
        ranks.append(1 + int((scores[i, others] >= scores[i, t] - 1e-5).sum()))
    return np.array(ranks)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 120),
    q=st.integers(1, 30),
    dup=st.integers(0, 5),
    seed=st.integers(0, 99),
    chunk=st.integers(1, 50),
)
def test_ranks_match_brute_force_with_ties(n, q, dup, seed, chunk):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((n, 8)).astype(np.float32)
    bank[rng.integers(0, n, dup)] = bank[0]
    truth = rng.integers(0, n, q)
    queries = np.where(rng.random((q, 1)) < 0.3, bank[truth], rng.standard_normal((q, 8))).astype(np.float32)
    exclude = rng.integers(-1, n, (q, 3))
    for excl in (np.full((q, 1), -1), exclude):
        got = truth_ranks(queries, truth, bank, exclude=excl, bank_chunk=chunk, query_block=7)
        assert np.array_equal(got, brute_force(queries, truth, bank, excl))


def test_ties_count_against_the_model():
    bank = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    assert truth_ranks(bank[:1], np.array([0]), bank).tolist() == [2]


def test_recall_and_mrr():
    ranks = np.array([1, 2, 11, 100])
    assert recall_at(ranks, 10) == 0.5 and mrr_at(ranks, 10) == (1 + 0.5) / 4
