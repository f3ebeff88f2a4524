import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import unit_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raytt.bank import BankWriter, load_bank, read_manifest, scan_bank, share_bank, write_bank, write_bank_blocks
from raytt.errors import BankError, RayttError


def small(rng, n=50, d=8, per_article=5):
    return unit_rows(rng, n, d), [f"a{i // per_article}" for i in range(n)], np.arange(n) % per_article


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 300), d=st.sampled_from([1, 3, 16, 384]), per=st.integers(1, 9), seed=st.integers(0, 9))
def test_round_trip(tmp_path_factory, n, d, per, seed):
    rng = np.random.default_rng(seed)
    vectors, ids, pos = small(rng, n, d, per)
    texts = [f"chunk {i}" for i in range(n)]
    dest = tmp_path_factory.mktemp("rt") / "bank"
    manifest = write_bank(dest, vectors, ids, pos, "emb-x", texts=texts)
    bank = load_bank(dest)
    assert np.array_equal(bank.vectors, vectors) and bank.vectors.flags.c_contiguous
    assert list(bank.article_of(np.arange(n))) == ids
    assert np.array_equal(bank.positions, pos)
    assert manifest == read_manifest(dest) and manifest.num_vectors == n and manifest.dim == d
    assert pq.read_table(dest / manifest.files[0], columns=["text"]).column(0)[0].as_py() == "chunk 0"


def test_writer_splits_files_and_keeps_one_hash(tmp_path):
    rng = np.random.default_rng(0)
    vectors, ids, pos = small(rng, 100)
    with_blocks = write_bank_blocks(
        tmp_path / "a", [(ids[:30], pos[:30], vectors[:30], None), (ids[30:], pos[30:], vectors[30:], None)], "e"
    )
    writer = BankWriter(tmp_path / "b", rows_per_file=16)
    writer.add(ids, pos, vectors)
    whole = writer.finish("e")
    assert len(whole.files) == 7 and whole.sha256 == with_blocks.sha256
    assert np.array_equal(load_bank(tmp_path / "b").vectors, vectors)


def test_mixed_dims_refused(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [(["a"], [0], unit_rows(rng, 1, 8), None), (["a"], [1], unit_rows(rng, 1, 9), None)]
    with pytest.raises(BankError, match="dim 9, the bank has dim 8"):
        write_bank_blocks(tmp_path / "b", blocks, "e")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_refused_naming_the_key(tmp_path, bad):
    vectors, ids, pos = small(np.random.default_rng(0))
    vectors[17, 2] = bad
    with pytest.raises(BankError, match="key 17 has NaN or Inf"):
        write_bank(tmp_path / "b", vectors, ids, pos, "e")


def test_norms_checked_unless_normalize(tmp_path):
    vectors, ids, pos = small(np.random.default_rng(0))
    vectors[3] *= 1.01
    with pytest.raises(BankError, match=r"key 3 has norm 1\.01.*--normalize"):
        write_bank(tmp_path / "b", vectors, ids, pos, "e")
    write_bank(tmp_path / "b", vectors * 3, ids, pos, "e", normalize=True)
    assert np.allclose(np.linalg.norm(load_bank(tmp_path / "b").vectors, axis=1), 1, atol=1e-6)
    write_bank(tmp_path / "raw", vectors * 3, ids, pos, "e", normalization="none")
    assert load_bank(tmp_path / "raw").manifest.normalization == "none"


def test_duplicate_article_position_refused(tmp_path):
    vectors, ids, pos = small(np.random.default_rng(0))
    pos[6] = pos[5]
    with pytest.raises(BankError, match=r"duplicate \(article, position\) \('a1', 0\)"):
        write_bank(tmp_path / "b", vectors, ids, pos, "e")


def test_empty_bank_refused(tmp_path):
    with pytest.raises(BankError, match="empty bank"):
        write_bank_blocks(tmp_path / "b", [], "e", dim=8)
    assert not (tmp_path / "b").exists()


@pytest.fixture
def written(tmp_path):
    vectors, ids, pos = small(np.random.default_rng(1), n=40)
    write_bank(tmp_path / "b", vectors, ids, pos, "e")
    return tmp_path / "b", vectors, ids, pos


def rewrite(bank_dir, transform):
    """Rewrite the bank's only shard through `transform(table) -> table`, leaving the manifest alone."""
    file = bank_dir / read_manifest(bank_dir).files[0]
    pq.write_table(transform(pq.read_table(file)), file)


def test_sha_mismatch_detected(written):
    path, vectors, *_ = written
    changed = vectors.copy()
    changed[[0, 1]] = changed[[1, 0]]
    rewrite(
        path,
        lambda t: t.set_column(
            3, "vector", pa.FixedSizeListArray.from_arrays(pa.array(changed.reshape(-1)), vectors.shape[1])
        ),
    )
    with pytest.raises(BankError, match="sha256 of the vectors .* does not match manifest.json"):
        load_bank(path)


def test_non_dense_keys_detected(written):
    path = written[0]
    rewrite(path, lambda t: t.set_column(0, "key", pa.array(np.arange(len(t)) + (np.arange(len(t)) >= 10))))
    with pytest.raises(BankError, match=r"part-00000\.parquet: keys are not dense: 10\.\.10 missing"):
        load_bank(path)


def test_duplicate_keys_detected(written):
    path = written[0]
    keys = np.arange(40)
    keys[5] = 4
    rewrite(path, lambda t: t.set_column(0, "key", pa.array(keys)))
    with pytest.raises(BankError, match="duplicate or out-of-order key 4"):
        scan_bank(path)


def test_wrong_dim_in_manifest_detected(written):
    path = written[0]
    data = json.loads((path / "manifest.json").read_text())
    data["dim"] = 9
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BankError, match="vectors have dim 8, manifest.json says 9"):
        load_bank(path)


def test_truncated_parquet_detected(written):
    path = written[0]
    file = path / read_manifest(path).files[0]
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(BankError, match=r"part-00000\.parquet: unreadable or corrupt Parquet"):
        load_bank(path)


def test_missing_manifest_and_shard(written):
    path = written[0]
    shutil.move(path / read_manifest(path).files[0], path / "elsewhere.parquet")
    with pytest.raises(BankError, match="shard listed in the manifest is missing"):
        load_bank(path)
    with pytest.raises(BankError, match="no bank manifest here"):
        load_bank(path / "vectors")


def test_refuses_to_overwrite_by_accident(written):
    path, vectors, ids, pos = written
    with pytest.raises(RayttError, match="already exists"):
        write_bank(path, vectors, ids, pos, "e")
    write_bank(path, vectors, ids, pos, "e2", overwrite=True)
    assert read_manifest(path).embedder_id == "e2"


def test_failed_write_leaves_nothing(tmp_path):
    rng = np.random.default_rng(0)

    def blocks():
        yield ["a"] * 10, np.arange(10), unit_rows(rng, 10, 8), None
        raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError, match="encoder died"):
        write_bank_blocks(tmp_path / "b", blocks(), "e")
    assert list(tmp_path.iterdir()) == []


def test_shared_bank_is_zero_copy(ray_local, written):
    path, vectors, *_ = written
    ref = share_bank(load_bank(path))

    @ray_local.remote
    def probe(bank_ref):
        bank = ray_local.get(bank_ref[0])
        return bank.vectors.flags.writeable, float(bank.vectors.sum()), bank.num_vectors

    writeable, total, n = ray_local.get(probe.remote([ref]))
    assert not writeable, "object-store numpy arrays are read-only views; a copy would be writeable"
    assert n == 40 and total == pytest.approx(float(vectors.sum()), rel=1e-5)


def test_block_lengths_and_positions_checked(tmp_path):
    vectors, ids, pos = small(np.random.default_rng(0), n=10)
    writer = BankWriter(tmp_path / "b")
    with pytest.raises(BankError, match="differ in length"):
        writer.add(ids[:9], pos, vectors)
    with pytest.raises(BankError, match="positions must be in 0..2\\^31-1"):
        writer.add(ids, pos - 1, vectors)


def test_manifest_missing_fields_named(written):
    path = written[0]
    data = json.loads((path / "manifest.json").read_text())
    del data["sha256"]
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BankError, match=r"manifest lacks field\(s\) \['sha256'\]"):
        load_bank(path)
