"""Text towers and their training: shapes and tying, the adapter's identity start, GradCache's gradients,
the differentiable cross-worker gather, mined negatives, and `text-train` / `text-eval --run` end to end."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from raytt import config
from raytt.cli import main
from raytt.corpus.embed import resolve
from raytt.errors import ConfigError, RayttError
from raytt.losses.objective import LossConfig
from raytt.text.beir import BeirSet, write_beir
from raytt.text.build import TextBuildConfig, build_text
from raytt.text.config import TextTrainConfig
from raytt.text.shards import open_text
from raytt.text.step import TextBatch, text_step
from raytt.text.tokens import load_tokenizer, tokenize
from raytt.text.towers import TextTowerConfig, build_text_tower
from raytt.training.config import OptimConfig
from raytt.training.setup import Trainee
from raytt.training.step import World

TOPICS = ["compress files into archives", "edit text in a terminal", "play chess against the computer", "read mail"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved locally (what `finetune` tests train);
    no dropout, so a chunked and a whole-batch pass draw no different masks."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).save_pretrained(folder)
    source = resolve("all-MiniLM-L6-v2")[0]
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{source}/{name}", folder / name)
    return str(folder)


def tiny_set(root, train: int = 96) -> str:
    """A built text set: 4 topics x 40 passages; query i names passage i's number and topic."""
    data = BeirSet()
    for i in range(160):
        data.passages[f"p{i}"] = ("", f"tool number {i} helps you {TOPICS[i % 4]} quickly")
    for i in range(train + 40):
        data.queries[f"q{i}"] = f"number {i} to {TOPICS[i % 4]}"
        split = "train" if i < train else "dev" if i < train + 20 else "test"
        data.qrels.setdefault(split, {})[f"q{i}"] = {f"p{i % 160}": 1}
    write_beir(root / "beir", data)
    build_text(root / "beir", root / "built", TextBuildConfig(min_train_queries=1), progress=lambda *_: None)
    return str(root / "built")


def _ids(texts, n=16):
    return torch.as_tensor(tokenize(load_tokenizer("all-MiniLM-L6-v2"), texts, n, special=False)).long()


def test_bag_towers_are_tied_or_untied_and_give_unit_vectors():
    tied = build_text_tower(TextTowerConfig(kind="bag", tied=True, projection_dim=48))
    untied = build_text_tower(TextTowerConfig(kind="bag", tied=False, projection_dim=48))
    assert tied.query_side is tied.passage_side
    assert untied.query_side is not untied.passage_side
    assert not set(map(id, untied.query_side.parameters())) & set(map(id, untied.passage_side.parameters()))
    q, p, n = tied(_ids(["a", "bb"]), _ids(["c d", "e"]), _ids(["x", "y", "z", "w"]).view(2, 2, -1))
    assert q.shape == p.shape == (2, 48) and n.shape == (2, 2, 48)
    assert torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_bag_starts_as_the_mean_of_the_encoders_token_embeddings():
    from raytt.text.tokens import token_embeddings

    model = build_text_tower(TextTowerConfig(kind="bag"))
    ids = _ids(["compress files"])
    table = token_embeddings("all-MiniLM-L6-v2")
    mean = table[ids[0][ids[0] > 0]].mean(0)
    assert torch.allclose(model.queries(ids)[0], mean / mean.norm(), atol=1e-5)
    random = build_text_tower(TextTowerConfig(kind="bag", init="random"))
    assert not torch.allclose(random.query_side.embed.weight, table)


def test_adapter_is_the_frozen_encoder_at_step_zero():
    model = build_text_tower(TextTowerConfig(kind="adapter"), width=24)
    x = torch.nn.functional.normalize(torch.randn(5, 24), dim=-1)
    assert torch.allclose(model.queries(x), x, atol=1e-6) and torch.allclose(model.passages(x), x, atol=1e-6)
    with torch.no_grad():
        model.query_side.gate.fill_(1.0)
    assert not torch.allclose(model.queries(x), x, atol=1e-3), "a gate away from 0 changes the query side only"
    assert torch.allclose(model.passages(x), x, atol=1e-6)


def test_finetune_tower_reads_a_local_model(tiny_bert):
    model = build_text_tower(TextTowerConfig(kind="finetune", encoder=tiny_bert, projection_dim=8))
    assert model.dim == 8 and model(_ids(["a b"]), _ids(["c"]))[0].shape == (1, 8)
    with pytest.raises(ConfigError, match="cannot load"):
        build_text_tower(TextTowerConfig(kind="finetune", encoder="/nonexistent/model"))


def _trainee(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return Trainee(model, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), None)


def _grads(model, cfg, batch):
    text_step(_trainee(model), batch, cfg, World(0, 1, torch.device("cpu")))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["bag", "finetune"])
def test_grad_cache_gives_the_full_batch_gradients(kind, tiny_bert):
    tower = TextTowerConfig(
        kind=kind, encoder=tiny_bert if kind == "finetune" else "all-MiniLM-L6-v2", projection_dim=16
    )
    texts = [f"item {i} about {TOPICS[i % 4]}" for i in range(12)]
    batch = TextBatch(
        _ids(texts),
        _ids(texts[::-1]),
        torch.arange(12),
        _ids(texts[3:] + texts[:3]).view(12, 1, -1),
        torch.arange(12).roll(3)[:, None] + 100,
    )
    full_cfg = TextTrainConfig(tower=tower, loss=LossConfig(tau=0.1), optim=OptimConfig(grad_clip=0))
    torch.manual_seed(0)
    model = build_text_tower(tower)
    full = _grads(model, full_cfg, batch)
    torch.manual_seed(0)
    model = build_text_tower(tower)
    cached = _grads(model, config.from_dict(TextTrainConfig, {**config.to_dict(full_cfg), "grad_cache": 5}), batch)
    assert full.keys() == cached.keys() and full
    for name in full:
        assert torch.allclose(full[name], cached[name], atol=1e-5, rtol=1e-4), name


def _gather_worker(rank: int, port: int, out) -> None:
    """One of two gloo processes: half the batch, its loss through the differentiable gather, gradients averaged."""
    import torch.distributed as dist

    from raytt.text.step import average_gradients, scored

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 6))
    q_in, p_in = (
        torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),
        torch.randn(8, 6, generator=torch.Generator().manual_seed(2)),
    )
    half = slice(4 * rank, 4 * rank + 4)
    world = World(rank, 2, torch.device("cpu"))
    q, p = (
        torch.nn.functional.normalize(q_in[half] @ weight, dim=-1),
        torch.nn.functional.normalize(p_in[half] @ weight, dim=-1),
    )
    batch = TextBatch(q_in[half], p_in[half], torch.arange(8)[half], None, None)
    from raytt.losses.objective import objective

    view = scored(q, p, None, batch, world)
    objective(LossConfig(tau=0.1), view).backward()
    model = torch.nn.Module()
    model.weight = weight
    average_gradients(model, world)
    out[rank] = (len(view.candidate_keys), weight.grad.numpy().copy())
    dist.destroy_process_group()


def test_two_workers_score_every_workers_positives_with_the_full_batch_gradient():
    from raytt.losses.objective import Batch, objective

    manager = mp.Manager()
    out = manager.dict()
    port = 29000 + np.random.default_rng().integers(0, 2000)
    mp.spawn(_gather_worker, args=(int(port), out), nprocs=2, join=True)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 6))
    q_in, p_in = (
        torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),
        torch.randn(8, 6, generator=torch.Generator().manual_seed(2)),
    )
    q, p = torch.nn.functional.normalize(q_in @ weight, dim=-1), torch.nn.functional.normalize(p_in @ weight, dim=-1)
    objective(LossConfig(tau=0.1), Batch(q, p, torch.arange(8), p, torch.arange(8), 0)).backward()
    for rank in (0, 1):
        candidates, grad = out[rank]
        assert candidates == 8, "each worker scores its queries against both workers' positives"
        np.testing.assert_allclose(grad, weight.grad.numpy(), atol=1e-5)


def test_mined_negatives_skip_judged_and_near_tie_passages(tmp_path):
    from raytt.text.encode import Encoded
    from raytt.text.mine import mine_from_frozen

    built = tiny_set(tmp_path, train=4)
    shards = open_text(built)
    passages = np.eye(8, dtype=np.float32)[np.arange(160) % 8]  # passage k points along axis k % 8
    queries = np.eye(8, dtype=np.float32)[:4] * 0.8 + np.eye(8, dtype=np.float32)[0] * 0.6
    queries[0] = np.eye(8)[0]  # query i's positive (key i) scores 0.8, axis-0 passages 0.6; query 0's scores 1
    cache = tmp_path / "cache"
    (cache / "queries").mkdir(parents=True)
    np.save(cache / "passages.npy", passages), np.save(cache / "queries" / "train.npy", queries)
    cfg = config.from_dict(
        TextTrainConfig, {"data": {"built": built, "mined_negatives": 3, "mine_depth": 40, "mine_relative": 0.9}}
    )
    mined = mine_from_frozen(cfg, shards, Encoded(cache, {"embedder_id": "test"}), lambda *_: None)
    assert mined.shape == (4, 3)
    assert (mined[0] >= 0).all() and (mined[0] % 8 != 0).all(), "ties with query 0's positive (score 1) are dropped"
    for i in (1, 2, 3):
        assert (mined[i] >= 0).all() and (mined[i] % 8 == 0).all(), (
            "passages scoring as high as the positive (0.8 > 0.9 x 0.8) are dropped; 0.6 ones stay"
        )


def test_text_train_refuses_what_it_cannot_run(tmp_path, capsys):
    built = tiny_set(tmp_path)
    cases = [
        ([], "data.built not set"),
        (["--set", f"data.built={built}", "--set", "tower.kind=adapter"], "raytt text-encode"),
        (["--set", f"data.built={built}", "--set", "mining.article_negatives=2"], "text passages have no articles"),
        (["--set", f"data.built={built}", "--set", "data.batch_size=512"], "fewer than one step"),
    ]
    for flags, problem in cases:
        with pytest.raises(SystemExit) as ended:
            main(["text-train", "--storage", str(tmp_path / "runs"), *flags])
        assert ended.value.code == 2, flags
        assert problem in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "built" / "bank" / "manifest.json").write_text(
        json.dumps({"kind": "text", "passages": 160, "sha256": "0" * 64})
    )
    with pytest.raises(RayttError, match="rebuild with raytt text-build"):
        open_text(built)


def test_text_train_on_two_workers_then_text_eval_ranks_it_beside_the_baselines(ray_local, tmp_path, capsys):
    built = tiny_set(tmp_path)
    main_args = [
        "text-train",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "bag",
        "--workers",
        "2",
        "--set",
        f"data.built={built}",
    ]
    sets = [
        "data.batch_size=16",
        "optim.epochs=2",
        "optim.lr=0.003",
        "optim.warmup_steps=2",
        "log_every=1",
        "tower.projection_dim=32",
        "tracking=[]",
        "mining.schedule=0-0:none;1-1:4@-1.0-1.0",  # the miner pool serves the second epoch
        "mining.relative=0.99",
        "mining.timeout_s=120",  # a step waits for its negatives: the test counts them, never the clock
    ]
    with pytest.raises(SystemExit) as ended:
        main([*main_args, *[a for s in sets for a in ("--set", s)], "--eval", "test"])
    assert ended.value.code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "bag"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert steps and all(r["train/candidates"] == 32 for r in steps), "16 queries x 2 workers' positives"
    assert {r["train/negatives_per_query"] > 0 for r in steps} == {False, True}, "mined in epoch 1 only"
    epochs = [r for r in rows if "val/NDCG@10" in r]
    assert len(epochs) == 2 and (run / "best" / "model.pt").is_file()
    mined = epochs[1]
    assert mined["mining/requests"] > 0 and mined["mining/fallback_rate"] == 0 and mined["mining/kept"] > 0
    assert mined["mining/refreshes"] == 1, "rank 0 offered epoch 0's passage vectors as the next index"
    report = json.loads((run / "eval" / "test" / "report.json").read_text())
    assert set(report["methods"]) == {"bm25", "frozen", "bag", "bag@init"}
    assert {"bag - bm25", "bag - frozen"} <= set(report["intervals"])
    assert report["queries"] == 20 and report["passages"] == 160
    assert all(0.0 <= r["val/NDCG@10"] <= 1.0 for r in epochs)
    assert "bag - frozen: R@1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:
        main(["text-eval", built, "--run", str(run), "--encode-actors", "1", "--out", str(tmp_path / "pooled")])
    assert ended.value.code == 0
    pooled = json.loads((tmp_path / "pooled" / "report.json").read_text())["methods"]
    for metric, value in report["methods"]["bag"].items():  # the same vectors, summed in another thread count
        assert abs(pooled["bag"][metric] - value) <= 1 / 20 + 1e-9, "at most one of 20 queries may flip a near-tie"


def test_a_finetuned_query_side_over_cached_passages_starts_as_the_frozen_encoder():
    from raytt.corpus.embed import load

    frozen = load("all-MiniLM-L6-v2")
    texts = ["compress files into archives", "a chess engine"]
    expected = torch.as_tensor(frozen.encode(texts, normalize_embeddings=True))
    model = build_text_tower(TextTowerConfig(kind="finetune", passage="cached", max_query_tokens=32), width=384)
    tokens = torch.as_tensor(tokenize(load_tokenizer("all-MiniLM-L6-v2"), texts, 32, special=True)).long()
    assert torch.allclose(model.eval().queries(tokens), expected, atol=1e-5)
    assert torch.allclose(model.passages(expected), expected, atol=1e-6), "the cached side's gate starts at 0"
    with pytest.raises(ValueError, match="untied tower of kind bag or finetune"):
        TextTowerConfig(kind="finetune", passage="cached", tied=True)


def test_validation_can_encode_the_corpus_with_a_ray_data_actor_pool(ray_local, tmp_path, capsys):
    built = tiny_set(tmp_path)
    sets = ["data.batch_size=16", "optim.epochs=1", "tower.projection_dim=16", "tracking=[]", "encode_actors=1"]
    args = ["text-train", "--storage", str(tmp_path / "runs"), "--name", "pooled", "--workers", "1"]
    with pytest.raises(SystemExit) as ended:
        main([*args, "--set", f"data.built={built}", *[a for s in sets for a in ("--set", s)]])
    assert ended.value.code == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "pooled"
    assert "160 passages encoded by 1 Ray Data actor(s)" in (run / "train.log").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if 0.0 <= r.get("val/NDCG@10", -1) <= 1.0]


def test_tune_searches_text_runs_on_full_corpus_ndcg(ray_local, tmp_path):
    import yaml

    from raytt.tuning import SearchConfig, tune

    built = tiny_set(tmp_path)
    base = tmp_path / "text.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "workers": 1,
                "tracking": [],
                "checkpoint_every": 1000,
                "data": {"built": built, "batch_size": 16},
                "tower": {"kind": "bag", "projection_dim": 16},
                "optim": {"epochs": 1, "warmup_steps": 1},
            }
        )
    )
    search = config.from_dict(
        SearchConfig,
        {
            "name": "text",
            "storage": str(tmp_path / "tune"),
            "train": str(base),
            "search": "grid",
            "num_samples": 1,
            "scheduler": "fifo",
            "metric": "val/NDCG@10",
            "space": {"loss.kind": {"kind": "grid", "values": ["infonce", "triplet"]}},
        },
    )
    rows = tune(search, progress=lambda *_: None)
    assert sorted(r["params"]["loss.kind"] for r in rows) == ["infonce", "triplet"]
    assert all(r["epochs"] == 1 and 0.0 <= r["best"] <= 1.0 and not r["error"] for r in rows)
    best = config.load(TextTrainConfig, search.run_dir / "best.yaml")
    assert best.data.built == built and best.tower.kind == "bag"
    search = dataclasses.replace(search, name="mined", space={"mining.schedule": search.space["loss.kind"]})
    search.space["mining.schedule"] = dataclasses.replace(search.space["mining.schedule"], values=["0-0:4@0.0-1.0"])
    with pytest.raises(ConfigError, match="text trials cannot share a miner pool"):
        tune(search, progress=lambda *_: None)
    assert not (tmp_path / "tune" / "mined").exists()


def test_hybrid_starts_ranking_as_the_frozen_encoder_and_shares_its_lexical_bag():
    model = build_text_tower(TextTowerConfig(kind="hybrid"), width=384)
    assert model.query_side.bag is model.passage_side.bag and model.passage_side.gate is None
    vectors = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    ids = _ids(["compress files", "edit text", "chess"], 8).float()
    q, p = model.queries(torch.cat([vectors, ids], 1)), model.passages(torch.cat([vectors, ids], 1))
    assert q.shape == p.shape == (3, 768)
    assert torch.allclose((q @ p.T) * 2**0.5, vectors @ vectors.T, atol=1e-5), "gate 0: the frozen encoder's scores"
    with torch.no_grad():
        model.query_side.gate.fill_(1.0)
    lexical = model.query_side.bag(ids.long())
    q = model.queries(torch.cat([vectors, ids], 1))
    assert torch.allclose((q @ p.T) * 2, vectors @ vectors.T + lexical @ lexical.T, atol=1e-5)


def test_a_stale_or_mismatched_vector_cache_is_refused(tmp_path):
    from raytt.storage import write_json
    from raytt.text.encode import EncodeConfig, open_encoded

    built = tiny_set(tmp_path)
    shards = open_text(built)
    cache = tmp_path / "cache"
    cache.mkdir()
    rows = {"passages": shards.passages, **{s: shards.rows(s) for s in shards.splits}}
    write_json(cache / "manifest.json", {"embedder_id": "x", "bank_sha256": "0" * 64, "rows": rows})
    with pytest.raises(RayttError, match="encoded from a bank with sha256 000000000000"):
        open_encoded(cache, shards)
    write_json(
        cache / "manifest.json", {"embedder_id": "x", "bank_sha256": shards.bank_sha256, "rows": {**rows, "dev": 1}}
    )
    with pytest.raises(RayttError, match="row counts"):
        open_encoded(cache, shards)
    with pytest.raises(RayttError, match="--max-seq-length >= 8"):
        EncodeConfig(max_seq_length=4)
    with pytest.raises(RayttError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        EncodeConfig(precision="fp16")


def test_bad_encode_pool_and_relative_filter_settings_are_refused(tmp_path, capsys):
    built = tiny_set(tmp_path)
    for key, value, problem in (
        ("encode_cpus", 0, "encode_cpus >= 1"),
        ("encode_actors", -1, "encode_actors must be >= 0"),
        ("mining", {"relative": -0.5}, "mining.relative must be >= 0 (0 = off), got -0.5"),
    ):
        with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            config.from_dict(TextTrainConfig, {"data": {"built": built}, key: value})
    with pytest.raises(SystemExit) as ended:
        main(["text-eval", built, "--encode-actors", "-1", "--out", str(tmp_path / "ev")])
    assert ended.value.code == 2 and "--encode-actors must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_bf16_encoder_vectors_match_fp32():
    """What `--precision bf16` (auto on a CPU with native bf16) caches is the fp32 encoder's vectors to 1e-3."""
    from raytt.corpus.embed import Encoder, resolved_precision

    texts = {"text": np.array(["a tool to compress files", "the Linux kernel's documentation in HTML"] * 4)}
    fp32 = np.stack(Encoder("all-MiniLM-L6-v2", "cpu", 4, 1, 64, "fp32")(dict(texts))["vector"])
    bf16 = np.stack(Encoder("all-MiniLM-L6-v2", "cpu", 4, 1, 64, "bf16")(dict(texts))["vector"])
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-3)
    assert (fp32 * bf16).sum(1).min() > 0.999
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert resolved_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolved_precision("int8", "cpu")


def test_train_layers_beyond_the_encoder_and_runs_on_a_beir_folder_are_refused(tiny_bert, tmp_path, capsys):
    with pytest.raises(ValueError, match="the encoder has 2 layers"):
        build_text_tower(TextTowerConfig(kind="finetune", encoder=tiny_bert, train_layers=3))
    model = build_text_tower(TextTowerConfig(kind="finetune", encoder=tiny_bert, train_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("encoder.layer.1." in n for n in trained), "only the top layer trains"
    tiny_set(tmp_path)
    with pytest.raises(SystemExit) as ended:
        main(["text-eval", str(tmp_path / "beir"), "--out", str(tmp_path / "e"), "--run", str(tmp_path / "r")])
    assert ended.value.code == 2 and "needs a set built by raytt text-build" in capsys.readouterr().err
