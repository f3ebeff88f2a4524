"""Text retrieval data: BEIR folders read with every line checked, and the Debian description set's parsing,
deduplication, grouping and splits."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raytt.cli import main
from raytt.errors import RayttError
from raytt.text.beir import BeirSet, read_beir, write_beir
from raytt.text.build import TextBuildConfig, build_text, text_sha256
from raytt.text.debian import as_beir, build, description, sources, split_of, stanzas
from raytt.text.metrics import per_query
from raytt.text.pairs import load_msmarco, read_pairs

TRANSLATION = """Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source, cross-platform real-time strategy game.
 .
 It is a historically-based war/economy game.

Package: 0ad-data-common
Description-md5: 8d014b839c4c4e9b6f82c7512d7e3496
Description-en: Real-time strategy game (common data files)
 Common data files for the real-time strategy game 0 A.D. of ancient warfare.

Package: tiny
Description-md5: 00000000000000000000000000000000
Description-en: A stub
 Too short to be a passage.
"""
PACKAGES = """Package: 0ad
Version: 0.0.26-3

Package: 0ad-data-common
Source: 0ad-data (0.0.26-1)
Version: 0.0.26-1
"""


def test_translation_paragraphs_become_short_and_long_descriptions():
    records = list(stanzas(TRANSLATION.splitlines(keepends=True)))
    first = description(records[0])
    assert first.package == "0ad" and first.short == "Real-time strategy game of ancient warfare"
    assert first.long == (
        "0 A.D. is a free, open-source, cross-platform real-time strategy game.\n\n"
        "It is a historically-based war/economy game."
    ), "' .' lines are paragraph breaks; the leading space goes"
    assert sources(stanzas(PACKAGES.splitlines())) == {"0ad": "0ad", "0ad-data-common": "0ad-data"}


def test_the_set_dedupes_by_text_drops_stubs_and_groups_siblings():
    d = description
    records = [d(r) for r in stanzas(TRANSLATION.splitlines())]
    twin = d({"Package": "0ad-twin", "Description-en": "Another name\n" + " " + records[0].long.replace("\n", "\n ")})
    data = build([*records, records[0], twin], {"0ad": "0ad", "0ad-data-common": "0ad-data", "0ad-twin": "x"})
    assert data.queries == [
        "Real-time strategy game of ancient warfare",
        "Real-time strategy game (common data files)",
        "Another name",
    ], "one query per short text; the stub ('tiny') is no passage"
    assert len(data.passages) == 2 and data.positives == [{0}, {1}, {0}]
    assert data.groups[2] == data.groups[0] == "0ad", "a shared passage joins another source's query to its group"
    assert data.groups[1] == "0ad-data"
    beir = as_beir(data)
    split = split_of("0ad")
    assert beir.qrels[split]["q0"] == {"p0": 1} and beir.qrels[split]["q2"] == {"p0": 1}


def test_splits_are_drawn_per_group_stably():
    names = [f"pkg{i}" for i in range(3000)]
    drawn = [split_of(n) for n in names]
    assert drawn == [split_of(n) for n in names]
    shares = {s: drawn.count(s) / len(drawn) for s in ("train", "dev", "test")}
    assert 0.77 < shares["train"] < 0.83 and 0.08 < shares["dev"] < 0.12 and 0.08 < shares["test"] < 0.12


def _small() -> BeirSet:
    return BeirSet(
        passages={"p1": ("Title", "first passage"), "p2": ("", "second passage")},
        queries={"q1": "one", "q2": "two"},
        groups={"q1": "g"},
        qrels={"train": {"q1": {"p1": 2, "p2": 1}}, "test": {"q2": {"p2": 1}}},
    )


def test_a_beir_folder_round_trips_with_graded_scores_and_groups(tmp_path):
    out = write_beir(tmp_path / "set", _small())
    back = read_beir(out)
    assert back == _small()
    assert (out / "qrels" / "train.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    with pytest.raises(RayttError, match="already exists"):
        write_beir(out, _small())


def _corrupt(tmp_path, name: str, lines: list[str]):
    folder = write_beir(tmp_path / "set", _small())
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    "name, lines, problem",
    [
        ("corpus.jsonl", ['{"_id": "p1", "text": "a"}', '{"title": "t", "text": "b"}'], "corpus.jsonl:2: '_id' is"),
        ("corpus.jsonl", ['{"_id": "p1", "text": "a"}', '{"_id": "p2", "text": "  "}'], "corpus.jsonl:2: 'text' is"),
        ("corpus.jsonl", ['{"_id": "p1", "text": "a"}', '{"_id": "p1", "text": "b"}'], "passage id 'p1' appears twice"),
        ("corpus.jsonl", ['{"_id": "p1", "text": "a"', ""], "corpus.jsonl:1: not a JSON object"),
        ("queries.jsonl", ['{"_id": "q1", "text": "one"}', '["q2"]'], "queries.jsonl:2: not a JSON object"),
        ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q9\tp1\t1"], "test.tsv:2: query 'q9' is not in queries"),
        ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\tp9\t1"], "test.tsv:2: passage 'p9' is not in corpus"),
        ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1\tp1\thigh"], "test.tsv:2: score 'high' is not"),
        ("qrels/test.tsv", ["query-id\tcorpus-id\tscore", "q1 p1 1"], "test.tsv:2: expected query-id, corpus-id"),
    ],
)
def test_bad_beir_lines_are_refused_by_file_and_line(tmp_path, name, lines, problem):
    folder = _corrupt(tmp_path, name, lines)
    with pytest.raises(RayttError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        read_beir(folder)


def test_a_folder_without_its_files_is_refused(tmp_path):
    folder = write_beir(tmp_path / "set", _small())
    for path in (folder / "qrels").iterdir():
        path.unlink()
    with pytest.raises(RayttError, match="qrels: no train.tsv, dev.tsv or test.tsv"):
        read_beir(folder)
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(RayttError, match="corpus.jsonl: missing"):
        read_beir(folder)
    assert json.loads((folder / "queries.jsonl").read_text().splitlines()[0])["_id"] == "q1"


def test_pairs_and_triples_become_a_split_retrieval_set(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"query": "how to list files", "positive": "ls lists directory contents", "negatives": ["cp copies files"]},
        {"query": "copy a file", "positives": ["cp copies files"], "group": "coreutils"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_pairs(path)
    assert list(data.passages.values()) == [("", "ls lists directory contents"), ("", "cp copies files")]
    assert data.negatives == {"q0": ["p1"]} and data.groups == {"q0": "how to list files", "q1": "coreutils"}
    assert data.qrels[split_of("coreutils")]["q1"] == {"p1": 1}, "the shared text is one passage"
    assert read_beir(write_beir(tmp_path / "set", data)) == data, "given negatives survive the folder"
    path.write_text(json.dumps({"query": "q", "positive": "a"}) + "\n" + json.dumps({"query": "q2", "positive": ""}))
    with pytest.raises(RayttError, match=r"pairs.jsonl:2: needs 'positive'"):
        read_pairs(path)


def _msmarco_row(i: int, selected: list[int]) -> dict:
    texts = [f"passage {i}-{j} about topic {i}" for j in range(len(selected))]
    return {
        "answers": [f"answer {i}"],
        "passages": {"is_selected": selected, "passage_text": texts, "url": [f"http://x/{i}/{j}" for j in selected]},
        "query": f"what is topic {i}",
        "query_id": 1000 + i,
        "query_type": "DESCRIPTION",
        "wellFormedAnswers": [],
    }


def test_msmarco_loads_through_datasets_from_a_folder_in_its_schema(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "ms_marco"
    folder.mkdir()
    rows = [_msmarco_row(0, [0, 1, 0]), _msmarco_row(1, [0, 0]), _msmarco_row(2, [1, 0])]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    data = load_msmarco(str(folder), config="", split="train")
    assert data.queries == {"q0": "what is topic 0", "q1": "what is topic 2"}, "a query with no selected passage goes"
    assert data.qrels == {"train": {"q0": {"p0": 1}, "q1": {"p3": 1}}}
    assert data.negatives == {"q0": ["p1", "p2"], "q1": ["p4"]} and data.groups["q1"] == "1002"
    assert len(load_msmarco(str(folder), config="", split="train", limit=1).queries) == 1
    datasets.Dataset.from_list([{"text": "x"}]).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    with pytest.raises(RayttError, match=r"has columns \['text'\], not MS MARCO's"):
        load_msmarco(str(folder), config="", split="train")


def test_graded_metrics_with_several_positives_match_hand_computed_values():
    top = np.array([[5, 1, 7, 2], [3, 4, 0, 6]])
    judged = [{1: 2, 2: 1, 9: 1}, {8: 1}]
    assert per_query(top, judged, "R@2").tolist() == [1 / 3, 0.0]
    assert per_query(top, judged, "R@4").tolist() == [2 / 3, 0.0]
    assert per_query(top, judged, "MRR@4").tolist() == [0.5, 0.0]
    dcg = 2 / np.log2(3) + 1 / np.log2(5)
    ideal = 2 / np.log2(2) + 1 / np.log2(3) + 1 / np.log2(4)
    assert per_query(top, judged, "NDCG@4")[0] == pytest.approx(dcg / ideal)
    with pytest.raises(RayttError, match="needs the top 10, only 4 ranked"):
        per_query(top, judged, "R@10")
    with pytest.raises(RayttError, match="no passage with a grade above 0"):
        per_query(top[:1], [{1: 0}], "R@2")


def _topics(tmp_path):
    """120 passages on 3 topics, 3 test queries each with two graded positives, as a BEIR folder."""
    topics = ["compress files into archives", "edit text in a terminal", "play chess against the computer"]
    data = BeirSet()
    for i, topic in enumerate(topics * 40):
        data.passages[f"p{i}"] = ("", f"a tool number {i} to {topic} quickly and with many options")
    for i, topic in enumerate(topics):
        data.queries[f"q{i}"] = f"tool {i} to {topic}"
        data.qrels.setdefault("test", {})[f"q{i}"] = {f"p{i}": 2, f"p{i + 3}": 1}
    return write_beir(tmp_path / "set", data)


def test_text_eval_ranks_the_whole_corpus_with_both_baselines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _topics(tmp_path)
    with pytest.raises(SystemExit) as ended:
        main(["text-eval", str(folder), "--split", "test", "--out", str(tmp_path / "eval")])
    assert ended.value.code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["queries"] == 3 and report["passages"] == 120 and report["oracle"]["in_corpus"] == 6
    assert set(report["methods"]) == {"bm25", "frozen"} and set(report["intervals"]) == {"frozen - bm25"}
    assert report["methods"]["bm25"]["R@100"] == 1.0, "a 120-passage corpus is wholly within the top 100"
    assert report["methods"]["bm25"]["MRR@10"] > 0.3, "the query's number is in its passage: BM25 finds it"
    assert "frozen - bm25: R@1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:
        main(["text-eval", str(folder), "--split", "dev", "--out", str(tmp_path / "e2")])
    assert ended.value.code == 2 and not (tmp_path / "e2").exists()
    assert "no judged queries in split 'dev'" in capsys.readouterr().err


def test_compare_tables_text_reports_and_pairs_only_the_same_queries(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _topics(tmp_path)
    for out, extra in (("e1", []), ("e2", ["--max-queries", "2"])):
        with pytest.raises(SystemExit) as ended:
            main(["text-eval", str(folder), "--out", str(tmp_path / out), *extra])
        assert ended.value.code == 0
    capsys.readouterr()
    from raytt.report import compare

    table = compare([tmp_path / "e1"])
    assert table.splitlines()[1].split() == ["method", "R@1", "R@10", "R@100", "MRR@10", "NDCG@10"]
    assert "bm25 minus each row (95% paired bootstrap over 3 queries" in table and "\nfrozen " in table
    assert "rank different queries" in compare([tmp_path / "e1", tmp_path / "e2"])
    (tmp_path / "e2" / "per_query.parquet").unlink()
    assert "e2 has no per_query.parquet" in compare([tmp_path / "e1", tmp_path / "e2"])
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "report.json").write_text(json.dumps({"views": {}, "split": "test"}))
    with pytest.raises(RayttError, match="text and vector reports cannot share a table"):
        compare([tmp_path / "e1", tmp_path / "v"])


def test_text_build_writes_a_keyed_passage_bank_and_query_shards(tmp_path):
    data = _small()
    data.negatives = {"q1": ["p2"]}
    folder = write_beir(tmp_path / "set", data)
    manifest = build_text(folder, tmp_path / "built", TextBuildConfig(min_train_queries=1), progress=lambda *_: None)
    bank = pq.read_table(tmp_path / "built" / "bank" / "passages.parquet").to_pylist()
    assert [(r["key"], r["passage_id"], r["text"]) for r in bank] == [
        (0, "p1", "first passage"),
        (1, "p2", "second passage"),
    ]
    sha = json.loads((tmp_path / "built" / "bank" / "manifest.json").read_text())["sha256"]
    assert sha == manifest["bank_sha256"] == text_sha256(data)
    train = pq.read_table(tmp_path / "built" / "queries" / "train.parquet").to_pylist()
    assert train == [
        {"query_id": "q1", "text": "one", "group": "g", "positives": [0, 1], "grades": [2, 1], "negatives": [1]}
    ]
    assert manifest["splits"] == {
        "train": {"queries": 1, "file": "train.parquet"},
        "test": {"queries": 1, "file": "test.parquet"},
    }
    changed = _small()
    changed.passages["p2"] = ("", "second passage, edited")
    assert text_sha256(changed) != sha, "the bank's sha256 covers every text"


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.qrels["test"].update({"q1": {"p1": 1}}), "query 'q1' is judged in both train and test"),
        (lambda d: d.groups.update({"q2": "g"}), "group 'g' is judged in both train and test"),
        (lambda d: None, "too little data: 1 judged training queries (fewer than min_train_queries=2)"),
    ],
)
def test_text_build_refuses_leaks_and_too_little_data_writing_nothing(tmp_path, capsys, edit, problem):
    data = _small()
    edit(data)
    folder = write_beir(tmp_path / "set", data)
    with pytest.raises(SystemExit) as ended:
        main(["text-build", str(folder), "--out", str(tmp_path / "built"), "--min-train-queries", "2"])
    assert ended.value.code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "built").exists()


def test_text_build_refuses_a_negative_minimum(tmp_path, capsys):
    folder = write_beir(tmp_path / "set", _small())
    with pytest.raises(SystemExit) as ended:
        main(["text-build", str(folder), "--out", str(tmp_path / "built"), "--min-train-queries", "-1"])
    assert ended.value.code == 2 and "--min-train-queries must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "built").exists()


def test_text_import_writes_msmarco_train_and_validation_as_a_beir_folder(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "ms_marco"
    folder.mkdir()
    datasets.Dataset.from_list([_msmarco_row(i, [1, 0]) for i in range(6)]).to_parquet(
        str(folder / "train-00000-of-00001.parquet")
    )
    datasets.Dataset.from_list([_msmarco_row(i, [0, 1]) for i in range(6, 40)]).to_parquet(
        str(folder / "validation-00000-of-00001.parquet")
    )
    with pytest.raises(SystemExit) as ended:
        main(["text-import", "msmarco", str(folder), "--config", "", "--out", str(tmp_path / "beir")])
    assert ended.value.code == 0, capsys.readouterr().err
    data = read_beir(tmp_path / "beir")
    assert len(data.qrels["train"]) == 6 and len(data.qrels["dev"]) + len(data.qrels["test"]) == 34
    assert data.qrels["dev"] and data.qrels["test"], "the validation split is halved into dev and test"
    assert "text-import:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as ended:
        main(["text-import", "pairs", "--out", str(tmp_path / "p")])
    assert ended.value.code == 2 and "give the JSONL file" in capsys.readouterr().err


def _brute_bm25(passages: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Lucene BM25 written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf saturated, length-normalised."""
    import re

    docs = [re.findall(r"(?u)\b\w\w+\b", p.lower()) for p in passages]
    avg = sum(map(len, docs)) / len(docs)
    scores = np.zeros(len(docs))
    for term in set(re.findall(r"(?u)\b\w\w+\b", query.lower())):
        df = sum(term in d for d in docs)
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg)) if tf else 0.0
    return scores


def test_bm25_and_dense_rankings_match_brute_force():
    from raytt.text.baselines import bm25_top, dense_top

    rng = np.random.default_rng(0)
    words = [f"term{i}" for i in range(40)]
    passages = [" ".join(rng.choice(words, rng.integers(5, 30))) for _ in range(60)]
    queries = [" ".join(rng.choice(words, 3)) for _ in range(8)]
    top = bm25_top(passages, queries, 10)
    for query, ranked in zip(queries, top):
        expected = _brute_bm25(passages, query)
        np.testing.assert_allclose(np.sort(expected)[::-1][:10], expected[ranked], rtol=1e-4, atol=1e-4)
    corpus, asked = rng.standard_normal((300, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(dense_top(corpus, asked, 7), np.argsort(-(asked @ corpus.T), axis=1)[:, :7])
