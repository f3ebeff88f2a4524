"""Mining: indexes and miners agree with brute force, filters hold, schedules parse, and no miner failure
stops a run."""

import numpy as np
import pytest
from helpers import QUIET, unit_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from raytt import config
from raytt.bank import load_bank
from raytt.errors import ConfigError
from raytt.mining.article import ArticleNegatives
from raytt.mining.config import MiningConfig
from raytt.mining.index import Index, IndexSpec
from raytt.mining.messages import IndexOffer, MineAnswer, MineRequest
from raytt.mining.schedule import Stage, parse
from raytt.mining.select import BankLayout, FilterConfig, select
from raytt.rundir import RunDir
from raytt.towers import TowerConfig
from raytt.training.config import TrainConfig
from raytt.training.driver import train


def _brute(queries, vectors, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("kind, exact", [("flat", True), ("ivf", True), ("hnsw", False)])
def test_index_finds_the_brute_force_neighbours(kind, exact):
    rng = np.random.default_rng(0)
    vectors, queries = unit_rows(rng, 3000, 32), unit_rows(rng, 40, 32)
    spec = IndexSpec(kind, "cpu", nlist=16, nprobe=16, ef_search=256)  # ivf probing every list is exact
    scores, keys = Index(vectors, spec).search(queries, 20)
    want_scores, want_keys = _brute(queries, vectors, 20)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(keys, want_keys)])
    if exact:
        assert overlap == 1.0
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    else:
        assert overlap >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "best first"


@pytest.mark.parametrize("factory, overlap_min", [("IVF16,SQ8", 0.9), ("IVF16,PQ8x4", 0.3), ("HNSW16,SQ8", 0.8)])
def test_factory_indexes_quantise_and_still_find_neighbours(factory, overlap_min):
    """index_factory strings: scalar/product quantisation holds far fewer private bytes than the vectors."""
    rng = np.random.default_rng(0)
    vectors, queries = unit_rows(rng, 3000, 32), unit_rows(rng, 40, 32)
    index = Index(vectors, IndexSpec("factory", "cpu", nprobe=16, ef_search=128, factory=factory))
    _, keys = index.search(queries, 20)
    _, want = _brute(queries, vectors, 20)
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(keys, want)])
    assert overlap >= overlap_min, f"{factory}: overlap with the exact neighbours {overlap:.2f}"
    assert index.private_bytes < (0.7 if "HNSW" not in factory else 1.5) * vectors.nbytes
    assert factory in index.engine


def test_a_factory_string_faiss_cannot_build_is_refused_with_the_dimension():
    from raytt.mining.index import check_factory

    check_factory("IVF64,PQ8", 64)
    with pytest.raises(ConfigError, match=r"mining.factory 'IVF64,PQ7': FAISS cannot build it for dim 64"):
        check_factory("IVF64,PQ7", 64)
    with pytest.raises(ConfigError, match=r"mining.factory 'Bogus9': FAISS cannot build it"):
        check_factory("Bogus9", 64)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_device_auto_falls_back_to_cpu(kind):
    """The CPU fallback of the miners' GPU branch: `device: auto` without CUDA builds a CPU index; `cuda` is refused."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: test_gpu_index_finds_the_same_neighbours covers this machine")
    vectors = unit_rows(np.random.default_rng(0), 500, 16)
    index = Index(vectors, IndexSpec(kind, "auto", nlist=4, nprobe=4))
    assert index.device == "cpu" and "cuda" not in index.engine and "gpu" not in index.engine.split()[0]
    with pytest.raises(ConfigError, match="mining.device 'cuda' asked for, but torch sees no GPU"):
        Index(vectors, IndexSpec(kind, "cuda", nlist=4, nprobe=4))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_index_finds_the_same_neighbours(kind):
    """GPU twin of the brute-force test: `device: auto` picks CUDA (faiss-gpu when installed)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    vectors, queries = unit_rows(rng, 3000, 32), unit_rows(rng, 40, 32)
    index = Index(vectors, IndexSpec(kind, "auto", nlist=16, nprobe=16))
    assert index.device == "cuda" or (kind == "ivf" and "faiss-gpu is not installed" in index.engine)
    _, keys = index.search(queries, 20)
    _, want = _brute(queries, vectors, 20)
    assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(keys, want)]) >= 0.99


def test_flat_index_searches_the_shared_array_in_place():
    vectors = unit_rows(np.random.default_rng(1), 500, 16)
    vectors.flags.writeable = False  # as ray.get hands it out
    index = Index(vectors, IndexSpec("flat", "cpu"))
    assert index.private_bytes == 0 and np.shares_memory(index.table.numpy(), vectors)
    _scores, keys = index.search(vectors[:3], 600)  # k beyond the bank pads with -1
    assert (keys[:, 500:] == -1).all() and (keys[:, 0] == np.arange(3)).all()


def _layout_bank(rng, articles=30, length=20, dim=24):
    """Articles of consecutive chunks, plus near-copies of some chunks planted in other articles."""
    vectors = unit_rows(rng, articles * length, dim)
    codes = np.repeat(np.arange(articles), length)
    positions = np.tile(np.arange(length), articles)
    copies = rng.choice(len(vectors), 60, replace=False)
    sources = rng.choice(len(vectors), 60, replace=False)
    noisy = vectors[sources] + 0.02 * rng.standard_normal((60, dim)).astype(np.float32)
    vectors[copies] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return vectors, BankLayout(codes, positions)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    window=st.integers(0, 3),
    count=st.integers(1, 8),
    lo=st.floats(-1.0, 0.5),
    sampling=st.sampled_from(["top", "random"]),
    by_target=st.booleans(),
)
def test_filters_never_let_a_false_negative_through(seed, window, count, lo, sampling, by_target):
    rng = np.random.default_rng(seed)
    vectors, layout = _layout_bank(rng)
    target = rng.integers(5, len(vectors), 32)
    target = target[layout.positions[target] >= 4]
    context_len = np.full(len(target), 4)
    queries = vectors[target] if by_target else unit_rows(rng, len(target), vectors.shape[1])
    scores, keys = _brute(queries, vectors, 64)
    cfg = FilterConfig(window=window, fn_threshold=0.9, sampling=sampling)
    stage = Stage(0, 0, count, lo, 0.999)
    picked, stats = select(scores, keys, target, context_len, layout, vectors, stage, cfg, rng)
    assert picked.shape == (len(target), count)
    for row, t in zip(picked, target):
        got = row[row >= 0]
        assert t not in got
        assert len(set(got.tolist())) == len(got)
        offset = layout.positions[got] - layout.positions[t]
        near = (layout.articles[got] == layout.articles[t]) & (np.abs(offset) <= window)
        in_context = (offset < 0) & (offset >= -4)
        assert not np.any(near & ~in_context), "same-article neighbours of the target must be dropped"
        assert np.all(vectors[got] @ vectors[t] < 0.9), "near-copies of the target must be dropped"
        gram = vectors[got] @ vectors[got].T
        assert not np.any(np.triu(gram, 1) >= 0.9), "negatives must not be near-copies of each other"
    query_cos = np.einsum("bd,bnd->bn", queries, vectors[np.maximum(picked, 0)])
    assert np.all((query_cos >= lo - 1e-6)[picked >= 0]) and np.all((query_cos <= 0.999 + 1e-6)[picked >= 0])
    assert stats["kept"] == int((picked >= 0).sum())
    dropped = [stats[f] for f in ("target", "window", "band", "false_negative", "duplicate")]
    assert min(dropped) >= 0 and stats["kept"] + sum(dropped) <= stats["candidates"]
    assert stats["target"] == int(np.isin(keys, target[:, None]).sum() and (keys == target[:, None]).sum())


def test_context_chunks_stay_allowed_as_negatives():
    rng = np.random.default_rng(3)
    vectors, layout = _layout_bank(rng)
    target = np.array([10])  # article 0, position 10; context = positions 6..9
    scores, keys = _brute(vectors[[9]], vectors, 64)  # query = the last context chunk: itself ranks first
    picked, _ = select(
        scores,
        keys,
        target,
        np.array([4]),
        layout,
        vectors,
        Stage(0, 0, 4, -1.0, 1.0),
        FilterConfig(window=2, fn_threshold=0.99),
        rng,
    )
    assert 9 in picked[0] and 11 not in picked[0] and 12 not in picked[0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.integers(0, 3), count=st.integers(1, 12))
def test_article_negatives_come_from_the_targets_article_and_skip_its_neighbours(seed, window, count):
    rng = np.random.default_rng(seed)
    _, layout = _layout_bank(rng)
    shuffled = rng.permutation(len(layout.articles))  # keys need not be grouped by article
    layout = BankLayout(layout.articles[shuffled], layout.positions[shuffled])
    target = rng.integers(0, len(shuffled), 64)
    context_len = np.minimum(layout.positions[target], rng.integers(1, 5, 64))
    picked = ArticleNegatives(layout, window).sample(target, context_len, count, rng)
    assert picked.shape == (64, count)
    for row, t, k in zip(picked, target, context_len):
        got = row[row >= 0]
        assert len(set(got.tolist())) == len(got) and t not in got
        assert np.all(layout.articles[got] == layout.articles[t])
        offset = layout.positions[got] - layout.positions[t]
        assert not np.any((np.abs(offset) <= window) & ~((offset < 0) & (offset >= -k)))


def test_article_negatives_cover_the_whole_article_and_pad_short_ones():
    layout = BankLayout(np.repeat([0, 1], [40, 2]), np.concatenate([np.arange(40), np.arange(2)]))
    sampler, rng = ArticleNegatives(layout, window=1), np.random.default_rng(0)
    seen = np.concatenate([sampler.sample(np.array([20]), np.array([3]), 8, rng)[0] for _ in range(200)])
    assert set(seen.tolist()) == set(range(40)) - {20, 21}, "every eligible chunk must be drawn, uniformly placed"
    short = sampler.sample(np.array([40]), np.array([0]), 8, rng)
    assert short.tolist() == [[-1] * 8], "a two-chunk article has no chunk outside the window"


@pytest.mark.parametrize(
    "text, count",
    [("", 0), ("0-5:none", 0), ("0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96", 16), (" 0:4@-0.5-0.9 ; 1-3:none; ", 4)],
)
def test_schedule_parses(text, count):
    curriculum = parse(text)
    assert curriculum.max_count == count
    if text.startswith("0-5:none;6"):
        assert curriculum.at(5).count == 0 and curriculum.at(6) == Stage(6, 10, 8, 0.82, 0.92)
        assert curriculum.at(30).hi == 0.96 and curriculum.at(31).count == 0


@pytest.mark.parametrize(
    "text, problem",
    [
        ("0-5:none;7-10:8@0.8-0.9", "segment 2 '7-10:8@0.8-0.9': gap, epochs 6-6"),
        ("0-5:none;5-10:8@0.8-0.9", "segment 2 '5-10:8@0.8-0.9': overlaps"),
        ("0-5:8@0.9-0.8", "segment 1 '0-5:8@0.9-0.8': the cosine band needs -1 <= lo < hi <= 1"),
        ("0-5:8@0.9-0.9", "lo=0.9 hi=0.9"),
        ("0-5:0@0.1-0.9", "count must be >= 1"),
        ("0-5:eight@0.1-0.9", "segment 1 '0-5:eight@0.1-0.9': expected"),
        ("0-5:8@0.1-1.5", "hi=1.5"),
        ("5-2:none", "runs backwards"),
        ("1-5:none", "gap, epochs 0-0"),
        ("0-5:8@0.1.2-0.9", "bounds must be numbers"),
    ],
)
def test_schedule_refuses_bad_segments(text, problem):
    with pytest.raises(ConfigError, match="mining.schedule " + _escape(problem)):
        parse(text)


def _escape(text):
    import re

    return ".*" + re.escape(text)


def test_schedule_errors_surface_through_the_run_config():
    with pytest.raises(ConfigError, match="overrides: .*segment 2"):
        config.load(TrainConfig, None, ["mining.schedule=0-1:none;3-4:8@0.1-0.9"])
    deep = config.load(TrainConfig, None, ["mining.schedule=0-1:32@0.1-0.9", "mining.search_k=64"]).mining
    assert deep.spec(deep.curriculum.at(0)).search_k == 128, "the filters always get 4 x count neighbours"
    assert config.load(MiningConfig, None, ["schedule=0:none;1-2:8@0.1-0.9", "negatives=4"]).curriculum.at(1).count == 4
    cfg = config.load(TrainConfig, None, ["mining.schedule=0-1:8@0.1-0.9", "optim.epochs=4"])
    with pytest.raises(ConfigError, match="covers epochs 0-1, but the run has 4 epochs"):
        cfg.mining.curriculum.check_covers(cfg.optim.epochs)


def test_pool_miner_agrees_with_numpy(ray_local, synth_bank):
    """A miner mining by the targets' own vectors, with every filter off, returns the brute-force neighbours."""
    from raytt.mining.pool import MinerPool

    bank = load_bank(synth_bank)
    cfg = config.load(
        MiningConfig,
        None,
        ["schedule=0:16@-1.0-1.0", "mine_by=target", "window=0", "fn_threshold=1.0", "actor_cpus=0.5"],
    )
    pool = MinerPool(ray_local.put(bank), cfg, progress=QUIET)
    try:
        target = np.arange(100, 4000, 97)
        request = MineRequest(
            np.zeros((len(target), 1), np.int64),
            np.zeros(len(target), np.int64),
            target,
            cfg.spec(cfg.curriculum.at(0)),
            step=0,
        )
        answer = ray_local.get(pool.submit(request, 0))
    finally:
        pool.shutdown()
    _, want = _brute(bank.vectors[target], bank.vectors, 17)
    want = np.array([[k for k in row if k != t][:16] for row, t in zip(want, target)])
    assert np.array_equal(answer.keys, want)


def _mining_cfg(bank, shards, storage, **over):
    base = [
        f"data.bank={bank}",
        f"data.shards={shards}",
        f"storage={storage}",
        "data.batch_size=64",
        "data.shuffle_buffer=2000",
        "data.cache=true",
        "tower.hidden=64",
        "tower.residual=false",
        "loss.tau=0.1",
        "optim.lr=5e-3",
        "optim.warmup_steps=5",
        "log_every=10",
        "val_queries=300",
        "optim.epochs=3",
        "mining.schedule=0-2:8@0.0-0.99",
        "mining.actor_cpus=0.5",
        "mining.timeout_s=2.0",
    ]
    return config.load(TrainConfig, None, base + [f"{k}={v}" for k, v in over.items()])


def _epochs(run_dir):
    return [r for r in RunDir(run_dir).rows("epoch") if "mining/requests" in r]


@pytest.mark.parametrize("fault, reason, workers", [("kill@12", "actor_died", 2), ("raise@15-25", "error", 0)])
def test_a_failing_miner_never_stops_the_run(ray_local, synth_bank, synth_shards, tmp_path, fault, reason, workers):
    cfg = _mining_cfg(
        synth_bank, synth_shards, tmp_path, name=f"fault-{reason}", workers=workers, **{"mining.fault": fault}
    )
    summary = train(cfg, progress=QUIET)
    assert summary["epochs"] == 3
    epochs = _epochs(cfg.run_dir)
    assert len(epochs) == 3
    hit = epochs[0]  # the fault lands in epoch 0 (45 steps an epoch with 1 worker, 22 with 2)
    assert hit["mining/fallback_rate"] > 0 and hit[f"mining/fallback_{reason}"] > 0
    last = epochs[-1]
    assert last["mining/fallback_rate"] < 0.1 and last["mining/kept"] > 0, "mining must resume after the fault"


def test_trainable_doc_tower_trains_with_refreshes(ray_local, synth_bank, synth_shards, tmp_path):
    cfg = _mining_cfg(
        synth_bank,
        synth_shards,
        tmp_path,
        name="refresh",
        workers=0,
        **{"tower.doc": "mlp", "mining.refresh_every": 20, "optim.epochs": 2, "mining.schedule": "0-1:8@0.0-0.99"},
    )
    assert train(cfg, progress=QUIET)["epochs"] == 2
    epochs = _epochs(cfg.run_dir)
    assert sum(e["mining/refreshes"] for e in epochs) >= 4 and epochs[-1]["mining/kept"] > 0


def test_miner_swaps_in_a_refreshed_index_while_serving(ray_local, synth_bank):
    """The old index answers until the re-encoded one is built; then answers come from the new space."""
    import time

    import torch

    from raytt.mining.pool import MinerPool, model_state
    from raytt.towers import TowerConfig, TwoTower, index_vectors

    bank = load_bank(synth_bank)
    tower = TowerConfig(doc="mlp", hidden=32)
    cfg = config.load(
        MiningConfig,
        None,
        ["schedule=0:8@-1.0-1.0", "mine_by=target", "window=0", "fn_threshold=1.0", "actor_cpus=0.5"],
    )
    torch.manual_seed(0)
    model = TwoTower(tower, bank.dim)
    torch.nn.init.normal_(model.doc.mlp[2].weight, std=1.0)  # a doc tower far from the identity
    pool = MinerPool(ray_local.put(bank), cfg, progress=QUIET)
    target = np.arange(50, 4000, 131)
    offer = IndexOffer(time.time(), 7, pool.encode(ray_local.put(model_state(model)), tower))
    request = MineRequest(
        np.zeros((len(target), 1), np.int64),
        np.zeros(len(target), np.int64),
        target,
        cfg.spec(cfg.curriculum.at(0)),
        step=7,
        index=offer,
    )
    versions, deadline = [], time.time() + 120
    try:
        while time.time() < deadline and (not versions or versions[-1] == 0):
            answer = ray_local.get(pool.submit(request, 0))
            versions.append(answer.index_version)
    finally:
        pool.shutdown()
    assert versions[-1] == 8, f"the refreshed index (weights of step 7) never swapped in: {versions}"
    index = index_vectors(model, bank.vectors)
    _, want = _brute(index[target], index, 9)
    assert np.array_equal(answer.keys, np.array([[k for k in row if k != t][:8] for row, t in zip(want, target)]))


def test_client_bounds_requests_in_flight_and_falls_back(ray_local):
    """Backpressure: never more than max_in_flight outstanding; slow answers cost the batch, not the step."""
    import time

    import torch

    from raytt.mining.client import MiningClient

    @ray_local.remote(num_cpus=0)
    def slow_answer(seconds):
        time.sleep(seconds)
        return MineAnswer(np.zeros((2, 8), np.int64), {"kept": 16}, 0, -1, time.time(), time.time(), 0)

    class SlowPool:
        def submit(self, request, slot):
            return slow_answer.remote(1.0)

    cfg = config.load(
        MiningConfig, None, ["schedule=0:8@0.0-0.9", "max_in_flight=2", "timeout_s=0.05", "mine_by=target"]
    )
    client = MiningClient(SlowPool(), cfg, rank=0, tower=TowerConfig())
    batch = (torch.zeros((2, 3), dtype=torch.int64), torch.ones(2, dtype=torch.int64), torch.arange(2))
    tickets = [client.submit(cfg.curriculum.at(0), i, *batch) for i in range(4)]
    assert [t.ref is not None for t in tickets] == [True, True, False, False]
    started = time.perf_counter()
    assert all(client.collect(t, i) is None for i, t in enumerate(tickets))
    assert time.perf_counter() - started < 1.0, "a step waits at most timeout_s"
    metrics = client.epoch_metrics(lambda values: values)
    assert metrics["mining/fallback_rate"] == 1.0
    assert metrics["mining/fallback_busy"] == 2 and metrics["mining/fallback_timeout"] == 2
    assert client.collect(None, 0) is None and client.epoch_metrics(lambda v: v)["mining/requests"] == 0


@pytest.mark.parametrize(
    "override, problem",
    [
        ("actors=0", "mining.actors must be >= 1"),
        ("actor_cpus=0", "mining.actor_cpus > 0"),
        ("window=-1", "mining.window >= 0"),
        ("fn_threshold=1.5", "fn_threshold in"),
        ("max_in_flight=0", "max_in_flight"),
        ("negatives=-2", "mining.negatives must be >= 0"),
        ("article_negatives=-1", "mining.article_negatives must be >= 0"),
        ("fault=explode@3", "expected kill@STEP or raise@FIRST-LAST"),
        ("fault=kill@soon", "expected kill@STEP or raise@FIRST-LAST"),
        ("index=annoy", "mining.index must be one of"),
        ("index=factory", "give both or neither"),
        ("factory=IVF64,SQ8", "give both or neither"),
    ],
)
def test_mining_config_refuses_bad_values(override, problem):
    with pytest.raises(ConfigError, match=_escape(problem)):
        config.load(TrainConfig, None, [f"mining.{override}"])


def test_excluded_keys_and_near_ties_with_the_positive_are_dropped():
    """A text query's other judged passages never come back, nor candidates above relative x its positive's score."""
    rng = np.random.default_rng(4)
    vectors = unit_rows(rng, 200, 16)
    layout = BankLayout(np.arange(200), np.zeros(200, dtype=np.int64))  # each passage its own article
    target, queries = np.array([3, 7]), vectors[[3, 7]] * 0.6 + unit_rows(rng, 2, 16) * 0.8
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, keys = _brute(queries, vectors, 64)
    exclude = np.stack([keys[0, :5], np.r_[keys[1, :2], -1, -1, -1]])  # the top candidates are "judged"
    ceiling = 0.9 * np.einsum("bd,bd->b", queries, vectors[target])
    cfg, stage = FilterConfig(fn_threshold=0.99, relative=0.9), Stage(0, 0, 8, -1.0, 1.0)
    picked, stats = select(
        scores, keys, target, np.zeros(2, np.int64), layout, vectors, stage, cfg, rng, exclude, ceiling
    )
    for row, (got, ex) in enumerate(zip(picked, exclude)):
        got = got[got >= 0]
        assert len(got) and not set(got.tolist()) & set(ex[ex >= 0].tolist()) and target[row] not in got
        assert np.all(vectors[got] @ queries[row] <= ceiling[row] + 1e-6), "near-ties with the positive are dropped"
    assert stats["target"] >= 5 + 2 and stats["relative"] > 0
