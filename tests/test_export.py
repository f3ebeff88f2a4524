"""`raytt export` and `raytt.Retriever`: the exported tower runs in plain PyTorch, search agrees with
`raytt eval`'s ranking, the ANN index is calibrated, and every bad input is refused by name."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import QUIET, fake_run

from raytt import cli
from raytt.bank import load_bank
from raytt.errors import RayttError
from raytt.evaluation import Model, evaluate, load_queries
from raytt.export import INDEX, export
from raytt.retriever import ExportError, Retriever
from raytt.sequences import open_shards

PLAIN = """
import sys, numpy as np, torch
program = torch.export.load(sys.argv[1] + "/query_tower.pt2").module()
bank = np.load(sys.argv[1] + "/index_vectors.npy")
keys = np.load(sys.argv[2])
with torch.no_grad():
    out = program(torch.as_tensor(bank[keys]), torch.full((len(keys),), keys.shape[1]))
np.save(sys.argv[3], out.numpy())
assert not [m for m in sys.modules if m.split(".")[0] == "raytt"], "raytt was imported"
"""


def test_the_exported_query_tower_runs_in_plain_pytorch(exported, tmp_path):
    _, folder = exported
    keys = np.arange(40, dtype=np.int64).reshape(10, 4)
    np.save(tmp_path / "keys.npy", keys)
    (tmp_path / "plain.py").write_text(PLAIN)
    subprocess.run(
        [sys.executable, str(tmp_path / "plain.py"), str(folder), str(tmp_path / "keys.npy"), str(tmp_path / "q.npy")],
        check=True,
        cwd=tmp_path,
    )
    ours = Retriever.load(folder).encode(keys)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), ours, atol=1e-5)
    config = json.loads((folder / "config.json").read_text())
    assert config["context_len"] == 4 and config["dim"] == 64 and config["bank"]["sha256"]


def test_search_agrees_with_eval_ranking(exported, synth_shards):
    run, folder = exported
    report = evaluate(synth_shards, "test", Model(run, run / "best", 256), max_queries=300, progress=QUIET)
    ranks = report["ranks"]["model"]
    queries = load_queries(open_shards(synth_shards), "test", 300)
    hits = Retriever.load(folder).search(list(map(list, queries.context)), k=10, exact=True)
    found = [list(row).index(t) + 1 if t in row else 11 for row, t in zip(hits.keys, queries.target)]
    assert np.array_equal(np.minimum(ranks, 11), found)
    assert 0 < (ranks <= 10).mean() < 1


def test_the_ann_index_is_calibrated_against_exact_search(exported, synth_shards):
    _, folder = exported
    retriever = Retriever.load(folder)
    index = retriever.config["index"]
    assert index["factory"] == "IVF16,Flat" and index["parameter"].startswith("nprobe=")
    assert index["recall_at_10"] >= 0.98
    queries = load_queries(open_shards(synth_shards), "test", 300)
    q = retriever.encode(queries.context)
    ann, exact = retriever.search_vectors(q, 10)[1], retriever.search_vectors(q, 10, exact=True)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ann, exact)])
    assert overlap >= 0.9


def test_hits_carry_the_keys_table(exported):
    _, folder = exported
    retriever = Retriever.load(folder)
    rows = retriever.search([[5, 6, 7]], k=3, exact=True).rows(0)
    assert len(rows) == 3 and rows[0]["score"] >= rows[-1]["score"]
    bank = load_bank(retriever.config["bank"]["path"])
    assert rows[0]["article_id"] == bank.article_of([rows[0]["key"]])[0]


def test_contexts_by_keys_vectors_and_padding_agree(exported):
    _, folder = exported
    retriever = Retriever.load(folder)
    by_keys = retriever.encode([[3, 4], [-1, -1, 8, 9]])
    by_vectors = retriever.encode(np.asarray(retriever.vectors)[[3, 4]])
    np.testing.assert_allclose(by_keys[0], by_vectors[0], atol=1e-6)
    np.testing.assert_allclose(by_keys[1], retriever.encode([8, 9])[0], atol=1e-6)


@pytest.mark.parametrize(
    "context, message",
    [
        (np.zeros((3, 5), np.float32), "must be \\[L, 64\\]"),
        ([[1, 2, 3, 4, 5]], "has 5 chunks: the tower reads 1 to 4"),
        ([[]], "has 0 chunks"),
        ([[1, 10**9]], "is not in the bank"),
        (["a chunk of text"], "no text encoder made its vectors"),
    ],
)
def test_bad_contexts_are_refused(exported, context, message):
    with pytest.raises(RayttError, match=message):
        Retriever.load(exported[1]).search(context, 5)


def test_a_bank_with_another_sha256_is_refused(exported, tmp_path):
    from helpers import SMALL

    from raytt.synthetic import generate

    other = tmp_path / "other"
    generate(SMALL.__class__(**{**SMALL.__dict__, "seed": SMALL.seed + 1}), other, progress=QUIET)
    with pytest.raises(ExportError, match="is not the bank this tower was exported against"):
        Retriever.load(exported[1], bank=other)


def test_missing_files_and_changed_vectors_are_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported[1], copy)
    (copy / INDEX).unlink()
    with pytest.raises(ExportError, match="missing index.faiss"):
        Retriever.load(copy)
    shutil.copy(exported[1] / INDEX, copy / INDEX)
    vectors = np.load(copy / "index_vectors.npy")
    vectors[0, 0] += 0.5
    np.save(copy / "index_vectors.npy", vectors)
    with pytest.raises(ExportError, match="sha256 differs"):
        Retriever.load(copy)


def test_export_refuses_an_existing_folder_and_a_bad_factory(exported, tmp_path):
    run, folder = exported
    with pytest.raises(RayttError, match="exists"):
        export(run, folder, progress=QUIET)
    with pytest.raises(RayttError, match="FAISS cannot build it"):
        export(run, tmp_path / "bad", factory="NoSuchIndex", progress=QUIET)
    assert not (tmp_path / "bad").exists()


def test_raytt_search_prints_the_top_k(exported, capsys):
    cli.run(["search", str(exported[1]), "--context-keys", "1,2,3", "--k", "4", "--exact"])
    out = capsys.readouterr().out
    assert "top 4 of 4,000 (exact)" in out and len([line for line in out.splitlines() if "score" in line]) == 4
    with pytest.raises(RayttError, match="not both or neither"):
        cli.run(["search", str(exported[1])])


def test_text_contexts_are_embedded_by_the_banks_encoder(tmp_path, monkeypatch):
    """A bank of MiniLM vectors: a context given as the chunks' texts retrieves what their keys retrieve."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from raytt.bank import scan_bank, write_bank
    from raytt.corpus.embed import load
    from raytt.sequences import BuildConfig, build_shards

    texts = [f"Article {a} on topic {a % 7}, part {p}: step {p} of procedure {a}." for a in range(24) for p in range(5)]
    vectors = load("all-MiniLM-L6-v2").encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    articles = [f"doc{a}" for a in range(24) for _ in range(5)]
    positions = np.tile(np.arange(5), 24)
    write_bank(tmp_path / "bank", vectors, articles, positions, "sentence-transformers/all-MiniLM-L6-v2", texts)
    shards = BuildConfig(context_len=2, min_train_pairs=0)
    build_shards(scan_bank(tmp_path / "bank"), tmp_path / "shards", shards, QUIET)
    run = fake_run(tmp_path, tmp_path / "shards", dim=384)
    retriever = Retriever.load(export(run, tmp_path / "export", progress=QUIET))
    by_text = retriever.search([texts[10], texts[11]], k=5, exact=True)
    by_keys = retriever.search([[10, 11]], k=5, exact=True)
    assert np.array_equal(by_text.keys, by_keys.keys)
    np.testing.assert_allclose(by_text.scores, by_keys.scores, atol=1e-4)
    assert by_text.rows(0)[0]["text"] in texts
