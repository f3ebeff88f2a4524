"""`raytt import-bank`: every source format becomes the same bank, in (article, position) order, or is refused
naming the source file and row with nothing written (unit tier: no Ray)."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import QUIET, unit_rows

from raytt.bank import load_bank, read_manifest
from raytt.cli import run
from raytt.commands import build
from raytt.errors import RayttError
from raytt.sequences import BuildConfig
from raytt.sources import ImportConfig, import_bank

PYDOCS = Path("/work/shared/data/pydocs-minilm.npz")
if not PYDOCS.is_file():
    PYDOCS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pydocs-minilm.npz"
CFG = ImportConfig(embedder_id="emb-x")


def corpus(n_articles=6, per=5, dim=8, seed=0):
    """A shuffled source: unit vectors with article ids, positions and texts, and the bank order it must get."""
    rng = np.random.default_rng(seed)
    n = n_articles * per
    articles = np.array([f"doc{i // per:02d}" for i in range(n)], dtype=object)
    positions = np.arange(n) % per
    shuffle = rng.permutation(n)
    source = {
        "vector": unit_rows(rng, n, dim),
        "article_id": articles[shuffle],
        "position": positions[shuffle],
        "text": np.array([f"chunk {a} {p}" for a, p in zip(articles[shuffle], positions[shuffle])], dtype=object),
    }
    first_seen = {a: i for i, a in reversed(list(enumerate(source["article_id"])))}
    order = sorted(range(n), key=lambda r: (first_seen[source["article_id"][r]], source["position"][r]))
    return source, np.array(order)


def table(source, vector_type=None):
    columns = {k: pa.array(v) for k, v in source.items() if k != "vector"}
    dim = source["vector"].shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(source["vector"].reshape(-1)), dim)
    columns["vector"] = vectors.cast(vector_type) if vector_type else vectors
    return pa.table(columns)


def check_bank(path, source, order, texts=True):
    """The bank holds the source's rows in `order`, with article ids, positions and (optionally) texts."""
    bank = load_bank(path)
    assert np.array_equal(bank.vectors, source["vector"][order])
    assert list(bank.article_of(np.arange(len(order)))) == [str(a) for a in source["article_id"][order]]
    assert np.array_equal(bank.positions, source["position"][order])
    stored = pa.concat_tables(pq.read_table(path / f) for f in bank.manifest.files)
    assert ("text" in stored.column_names) == texts
    if texts:
        assert stored.column("text").to_pylist() == list(source["text"][order])
    assert bank.manifest.embedder_id == "emb-x" and bank.manifest.normalization == "l2"
    return bank


def write_sidecar(path, source, kind):
    side = table(source).drop_columns(["vector"])
    if kind == "parquet":
        pq.write_table(side, path)
    elif kind == "csv":
        pacsv.write_csv(side, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in side.to_pylist()))


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_npy_with_a_sidecar(tmp_path, kind):
    source, order = corpus()
    np.save(tmp_path / "vecs.npy", source["vector"])
    write_sidecar(tmp_path / f"vecs.{kind}", source, kind)
    manifest = import_bank(tmp_path / "vecs.npy", tmp_path / "bank", CFG, progress=QUIET)
    check_bank(tmp_path / "bank", source, order)
    assert manifest.source.startswith("npy:") and str(tmp_path / f"vecs.{kind}") in manifest.source


def test_npy_sidecar_flag_and_small_batches(tmp_path):
    """An explicit --sidecar, and batches smaller than an article: the gather reads runs of rows across batches."""
    source, order = corpus(dim=5)
    np.save(tmp_path / "v.npy", source["vector"].astype(np.float64))
    write_sidecar(tmp_path / "meta.csv", source, "csv")
    cfg = ImportConfig(embedder_id="emb-x", sidecar=str(tmp_path / "meta.csv"), batch_rows=4)
    import_bank(tmp_path / "v.npy", tmp_path / "bank", cfg, progress=QUIET)
    check_bank(tmp_path / "bank", source, order)


@pytest.mark.parametrize("shuffled", [True, False])
def test_npz(tmp_path, shuffled):
    """Out of order, the streamed vectors are spilled once and gathered; in order they go straight through."""
    source, order = corpus()
    if not shuffled:
        source = {k: v[order] for k, v in source.items()}
        order = np.arange(len(order))
    np.savez(
        tmp_path / "c.npz", vectors=source["vector"], article=source["article_id"].astype(str), pos=source["position"]
    )
    manifest = import_bank(tmp_path / "c.npz", tmp_path / "bank", ImportConfig("emb-x", batch_rows=7), progress=QUIET)
    check_bank(tmp_path / "bank", source, order, texts=False)
    assert manifest.source == f"npz:{(tmp_path / 'c.npz').resolve()}"
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["manifest.json", "vectors"]


@pytest.mark.skipif(not PYDOCS.is_file(), reason="shared/data/pydocs-minilm.npz is not here")
def test_the_real_pydocs_npz(tmp_path):
    manifest = import_bank(
        PYDOCS, tmp_path / "bank", ImportConfig("sentence-transformers/all-MiniLM-L6-v2"), progress=QUIET
    )
    assert manifest.num_vectors == 19_122 and manifest.dim == 384
    bank = load_bank(tmp_path / "bank")
    with np.load(PYDOCS, allow_pickle=True) as z:
        article, pos, text, row = z["article"], z["pos"], z["text"], z["vectors"][1234]
    assert np.array_equal(bank.article_codes, article) and np.array_equal(bank.positions, pos)
    assert np.array_equal(bank.vectors[1234], row)
    first = pq.read_table(tmp_path / "bank" / manifest.files[0], columns=["text"]).column(0)[0].as_py()
    assert first == text[0]


@pytest.mark.parametrize("vector_type", [None, pa.list_(pa.float32()), pa.large_list(pa.float64())])
def test_parquet_file_with_list_or_fixed_size_vectors(tmp_path, vector_type):
    source, order = corpus()
    pq.write_table(table(source, vector_type), tmp_path / "c.parquet", row_group_size=7)
    import_bank(tmp_path / "c.parquet", tmp_path / "bank", CFG, progress=QUIET)
    check_bank(tmp_path / "bank", source, order)


def test_parquet_directory_with_renamed_columns(tmp_path):
    source, order = corpus()
    t = table(source).rename_columns(["doc", "chunk", "body", "emb"])
    (tmp_path / "src").mkdir()
    pq.write_table(t.slice(0, 11), tmp_path / "src" / "a.parquet")
    pq.write_table(t.slice(11), tmp_path / "src" / "b.parquet")
    cfg = ImportConfig("emb-x", vector_column="emb", article_column="doc", position_column="chunk", text_column="body")
    import_bank(tmp_path / "src", tmp_path / "bank", cfg, progress=QUIET)
    check_bank(tmp_path / "bank", source, order)


def test_hugging_face_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    source, order = corpus()
    data = {k: [x.tolist() if isinstance(x, np.ndarray) else x for x in v] for k, v in source.items()}
    data["position"] = [int(p) for p in data["position"]]
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    manifest = import_bank(f"hf:{tmp_path / 'ds'}", tmp_path / "bank", CFG, progress=QUIET)
    check_bank(tmp_path / "bank", source, order)
    assert manifest.source == f"hf:{(tmp_path / 'ds').resolve()}"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(data)}).save_to_disk(str(tmp_path / "dd"))
    manifest = import_bank(f"hf:{tmp_path / 'dd'}:test", tmp_path / "bank2", CFG, progress=QUIET)
    check_bank(tmp_path / "bank2", source, order)
    assert manifest.source.endswith("dd:test")


def npy_source(tmp_path, edit=None, sidecar_rows=None):
    """A shuffled .npy + Parquet sidecar, with `edit(source)` applied first."""
    source, _ = corpus()
    if edit:
        edit(source)
    np.save(tmp_path / "v.npy", source["vector"])
    side = table(source).drop_columns(["vector"])
    pq.write_table(side.slice(0, sidecar_rows), tmp_path / "v.parquet")
    return tmp_path / "v.npy"


def nan_at_row_9(source):
    source["vector"][9, 3] = np.nan


def scaled_row_4(source):
    source["vector"][4] *= 1.5


def duplicate_rows_2_and_5(source):
    source["article_id"][5], source["position"][5] = source["article_id"][2], source["position"][2]


def parquet_source(tmp_path):
    pq.write_table(table(corpus()[0]), tmp_path / "c.parquet")
    return tmp_path / "c.parquet"


def text_file(tmp_path):
    (tmp_path / "c.txt").write_text("not vectors")
    return tmp_path / "c.txt"


REFUSALS = {
    "missing embedder id": (npy_source, {"embedder_id": ""}, "--embedder-id is required"),
    "sidecar row count": (
        lambda p: npy_source(p, sidecar_rows=29),
        {},
        r"v\.npy has 30 rows but its sidecar .*v\.parquet has 29",
    ),
    "NaN names the source row": (
        lambda p: npy_source(p, nan_at_row_9),
        {},
        r"v\.npy: source row 9: vector \(bank key \d+\) has NaN",
    ),
    "norm without --normalize": (
        lambda p: npy_source(p, scaled_row_4),
        {},
        r"v\.npy: source row 4: .*norm 1\.5.*--normalize to L2",
    ),
    "duplicate (article, position)": (
        lambda p: npy_source(p, duplicate_rows_2_and_5),
        {},
        r"v\.parquet: duplicate \(article, position\) .* at source rows 2 and 5",
    ),
    "wrong vector column": (
        parquet_source,
        {"vector_column": "emb"},
        r"c\.parquet: no column 'emb' \(set --vector-column\)",
    ),
    "unknown format": (text_file, {}, r"c\.txt: unknown source format '\.txt'"),
    "hf without the dataset": (lambda p: f"hf:{p / 'nope'}", {}, r"no such dataset directory .*nope"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_source_and_write_nothing(tmp_path, case):
    make, overrides, message = REFUSALS[case]
    src = make(tmp_path)
    cfg = ImportConfig(**({"embedder_id": "emb-x"} | overrides))
    with pytest.raises(RayttError, match=message):
        import_bank(src, tmp_path / "bank", cfg, progress=QUIET)
    assert not (tmp_path / "bank").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bank")]


def test_normalize_fixes_what_it_would_refuse(tmp_path):
    src = npy_source(tmp_path, scaled_row_4)
    import_bank(src, tmp_path / "bank", ImportConfig("emb-x", normalize=True), progress=QUIET)
    assert np.allclose(np.linalg.norm(load_bank(tmp_path / "bank").vectors, axis=1), 1, atol=1e-6)


def test_hf_without_the_datasets_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(RayttError, match=r"needs? the Hugging Face `datasets` package .*raytt\[hf\]"):
        import_bank(f"hf:{tmp_path}", tmp_path / "bank", CFG, progress=QUIET)
    assert not (tmp_path / "bank").exists()


def test_cli_import_then_build(tmp_path):
    rng = np.random.default_rng(1)
    n_articles, per = 300, 8
    np.save(tmp_path / "v.npy", unit_rows(rng, n_articles * per, 16))
    ids = [f"a{i // per}" for i in range(n_articles * per)]
    pq.write_table(pa.table({"article_id": ids, "position": np.arange(n_articles * per) % per}), tmp_path / "v.parquet")
    run(["import-bank", str(tmp_path / "v.npy"), "--out", str(tmp_path / "bank"), "--embedder-id", "emb-x"])
    assert read_manifest(tmp_path / "bank").num_vectors == n_articles * per
    shards = build(tmp_path / "bank", tmp_path / "shards", BuildConfig(context_len=3), progress=QUIET)
    assert shards.rows("train") > 1000
    with pytest.raises(RayttError, match="already exists"):
        run(["import-bank", str(tmp_path / "v.npy"), "--out", str(tmp_path / "bank"), "--embedder-id", "emb-x"])
