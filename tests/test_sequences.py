import json
import os

import numpy as np
import pytest
from helpers import QUIET, SMALL
from hypothesis import given, settings
from hypothesis import strategies as st

from raytt.bank import load_bank, read_manifest, scan_bank, write_bank
from raytt.errors import GateError, ShardError
from raytt.sequences import PAD, SPLITS, BuildConfig, _ShardWriter, assign_splits, build_shards, import_npz, open_shards
from raytt.synthetic import SynthConfig, generate


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=200, unique=True),
    seed=st.integers(0, 2**32),
    train=st.floats(0.0, 1.0),
)
def test_split_is_a_deterministic_partition(names, seed, train):
    fractions = (train, (1 - train) / 2, (1 - train) / 2)
    split = assign_splits(names, fractions, seed)
    assert set(split.tolist()) <= {0, 1, 2}
    assert np.array_equal(split, assign_splits(list(reversed(names)), fractions, seed)[::-1])
    grown = assign_splits(names + ["zz-new-article"], fractions, seed)
    assert np.array_equal(grown[:-1], split), "adding an article must not move the others"


def test_split_shares_are_close_to_the_fractions():
    split = assign_splits([f"a{i}" for i in range(20_000)], (0.8, 0.1, 0.1), 7)
    assert np.allclose(np.bincount(split) / 20_000, (0.8, 0.1, 0.1), atol=0.01)


def test_rows_are_next_chunk_windows(synth_bank, synth_shards):
    bank, shards = load_bank(synth_bank), open_shards(synth_shards, read_manifest(synth_bank))
    k = shards.context_len
    total = 0
    for split in SPLITS:
        table = shards.read(split)
        ctx = np.stack(table.column("context_keys").to_numpy(zero_copy_only=False))
        ctx_len = table.column("context_len").to_numpy()
        target = table.column("target_key").to_numpy()
        pos = bank.positions[target]
        assert (pos >= 1).all() and np.array_equal(ctx_len, np.minimum(pos, k))
        # the synthetic bank stores articles contiguously in position order: context = the k keys before
        expected = target[:, None] - k + np.arange(k)[None, :]
        valid = np.arange(k)[None, :] >= k - ctx_len[:, None]
        assert np.array_equal(ctx, np.where(valid, expected, PAD))
        assert set(bank.article_of(target)) == set(shards.articles(split))
        total += len(target)
    n_articles = len(bank.article_names)
    assert total == bank.num_vectors - n_articles, "every chunk but the first of each article is a target"


def test_build_is_deterministic(synth_bank, tmp_path):
    meta = scan_bank(synth_bank)
    a = build_shards(meta, tmp_path / "a", BuildConfig(context_len=4, seed=3), progress=QUIET)
    b = build_shards(meta, tmp_path / "b", BuildConfig(context_len=4, seed=3), progress=QUIET)
    c = build_shards(meta, tmp_path / "c", BuildConfig(context_len=4, seed=4), progress=QUIET)
    for split in SPLITS:
        assert a.read(split).equals(b.read(split))
    assert a.articles("test") != c.articles("test")


def test_streams_into_several_files(synth_bank, tmp_path):
    shards = build_shards(scan_bank(synth_bank), tmp_path / "s", BuildConfig(rows_per_file=500), progress=QUIET)
    assert len(shards.files("train")) == -(-shards.rows("train") // 500)


def test_leaked_splits_refused_on_load(synth_shards, tmp_path):
    leaked = tmp_path / "leaked"
    os.system(f"cp -r {synth_shards} {leaked}")
    manifest = json.loads((leaked / "manifest.json").read_text())
    manifest["splits"]["test"]["articles"] += manifest["splits"]["train"]["articles"][:3]
    (leaked / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GateError, match="3 article\\(s\\) are in both train and test"):
        open_shards(leaked)


def test_shards_of_another_bank_refused(synth_shards, tmp_path):
    other = tmp_path / "other"
    generate(SynthConfig(num_vectors=SMALL.num_vectors, dim=SMALL.dim, latent_dim=16, seed=99), other, progress=QUIET)
    with pytest.raises(ShardError, match="built with embedder .*seed=0.*this bank is .*seed=99"):
        open_shards(synth_shards, read_manifest(other))


def test_sha_mismatch_with_same_embedder_refused(synth_bank, synth_shards, tmp_path):
    bank = load_bank(synth_bank)
    vectors = bank.vectors.copy()
    vectors[[0, 1]] = vectors[[1, 0]]
    write_bank(
        tmp_path / "b2",
        vectors,
        list(bank.article_of(np.arange(bank.num_vectors))),
        bank.positions,
        bank.manifest.embedder_id,
    )
    with pytest.raises(ShardError, match="built against bank sha256 .* rebuild the shards"):
        open_shards(synth_shards, read_manifest(tmp_path / "b2"))


def test_too_little_data_refused_before_writing(synth_bank, tmp_path):
    meta = scan_bank(synth_bank)
    with pytest.raises(
        GateError,
        match=r"too little data: \d+ training pairs against a bank of 4000 vectors "
        r"\(minimum 100000\).*--min-train-pairs",
    ):
        build_shards(meta, tmp_path / "s", BuildConfig(min_train_pairs=100_000), progress=QUIET)
    assert not (tmp_path / "s").exists()


def test_failure_mid_write_leaves_nothing(synth_bank, tmp_path, monkeypatch):
    calls = []
    original = _ShardWriter.write

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, *args)

    monkeypatch.setattr(_ShardWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        build_shards(scan_bank(synth_bank), tmp_path / "s", BuildConfig(), progress=QUIET)
    assert list(tmp_path.iterdir()) == [], "no partial shards and no temp directory left behind"


def loose_npz(path, bank, rows, encode=lambda v: v):
    """An .npz of loose vectors for `rows` windows of the bank, optionally re-encoded."""
    k = 3
    target = rows
    ctx = target[:, None] - k + np.arange(k)[None, :]
    same = bank.article_codes[np.clip(ctx, 0, None)] == bank.article_codes[target][:, None]
    ctx = np.where(same & (ctx >= 0), ctx, -1)
    vecs = np.where((ctx >= 0)[..., None], encode(bank.vectors[np.clip(ctx, 0, None)]), 0.0)
    np.savez(path, context_sequences=vecs.astype(np.float32), target_vectors=encode(bank.vectors[target]))
    return ctx, target


def test_import_aligns_loose_vectors_to_bank_keys(synth_bank, tmp_path):
    bank = load_bank(synth_bank)
    rows = np.flatnonzero(bank.positions >= 1)
    noise = np.random.default_rng(0).standard_normal
    ctx, target = loose_npz(
        tmp_path / "x.npz", bank, rows, encode=lambda v: v + 0.002 * noise(v.shape).astype(np.float32)
    )
    shards = import_npz(tmp_path / "x.npz", bank, tmp_path / "s", BuildConfig(min_train_pairs=100), progress=QUIET)
    got = {}
    for split in SPLITS:
        table = shards.read(split)
        for c, t in zip(table.column("context_keys").to_pylist(), table.column("target_key").to_pylist()):
            got[t] = c
    assert set(got) == set(target.tolist())
    assert all(got[t] == c.tolist() for c, t in zip(ctx, target))
    assert shards.manifest["imported_from"]["mean_cosine"] > 0.99
    open_shards(tmp_path / "s", bank.manifest)


def test_import_from_another_encoder_refused(synth_bank, tmp_path, capsys):
    bank = load_bank(synth_bank)
    rotation = np.linalg.qr(np.random.default_rng(1).standard_normal((bank.dim, bank.dim)))[0].astype(np.float32)
    loose_npz(tmp_path / "x.npz", bank, np.flatnonzero(bank.positions >= 1), encode=lambda v: v @ rotation)
    with pytest.raises(GateError, match=r"mean alignment cosine 0\.\d+ \(need >= 0\.99\), coverage \d+\.\d+%"):
        import_npz(tmp_path / "x.npz", bank, tmp_path / "s", BuildConfig(), progress=print)
    assert "coverage" in capsys.readouterr().out
    assert not (tmp_path / "s").exists()


def test_import_rejects_malformed_npz(synth_bank, tmp_path):
    bank = load_bank(synth_bank)
    np.savez(tmp_path / "a.npz", context_sequences=np.zeros((4, 3, bank.dim), np.float32))
    with pytest.raises(GateError, match="a.npz: missing array 'target_vectors'"):
        import_npz(tmp_path / "a.npz", bank, tmp_path / "s", BuildConfig())
    np.savez(
        tmp_path / "b.npz",
        context_sequences=np.zeros((4, 3, 5), np.float32),
        target_vectors=np.zeros((4, 5), np.float32),
    )
    with pytest.raises(GateError, match="b.npz: vectors have dim 5, the bank has dim 64"):
        import_npz(tmp_path / "b.npz", bank, tmp_path / "s", BuildConfig())


def test_wrong_shard_format_refused(synth_shards, tmp_path):
    other = tmp_path / "s"
    os.system(f"cp -r {synth_shards} {other}")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["format"] = "something/9"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="format 'something/9' is not 'raytt.shards/1'"):
        open_shards(other)


def test_empty_split_refused(tmp_path):
    generate(SynthConfig(num_vectors=300, dim=16, latent_dim=8), tmp_path / "b", progress=QUIET)
    with pytest.raises(GateError, match="split 'val' gets no rows"):
        build_shards(
            scan_bank(tmp_path / "b"),
            tmp_path / "s",
            BuildConfig(split=(0.9995, 0.0005, 0.0), min_train_pairs=0),
            progress=QUIET,
        )
    assert not (tmp_path / "s").exists()


def test_import_rejects_nan_and_bad_article_ids(synth_bank, tmp_path):
    bank = load_bank(synth_bank)
    ctx = np.zeros((4, 3, bank.dim), np.float32)
    tgt = bank.vectors[:4].copy()
    tgt[1, 0] = np.nan
    np.savez(tmp_path / "n.npz", context_sequences=ctx, target_vectors=tgt)
    with pytest.raises(GateError, match="n.npz: NaN or Inf"):
        import_npz(tmp_path / "n.npz", bank, tmp_path / "s", BuildConfig())
    np.savez(
        tmp_path / "i.npz", context_sequences=ctx, target_vectors=bank.vectors[:4], article_ids=np.array(["a", "b"])
    )
    with pytest.raises(GateError, match=r"i.npz: article_ids must have shape \[4\]"):
        import_npz(tmp_path / "i.npz", bank, tmp_path / "s", BuildConfig())
    assert not (tmp_path / "s").exists()
