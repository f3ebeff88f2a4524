"""Text -> paragraphs -> chunks, on hand-written documents."""

import pytest

from raytt.corpus.chunk import ChunkSpec, chunk, sentences
from raytt.corpus.config import IngestConfig
from raytt.corpus.extract import html_paragraphs, paragraphs, text_paragraphs

SMALL = ChunkSpec(min_words=10, max_words=18, tail_words=4)


def _words(n: int, word: str = "w") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def test_sentences_split_after_terminal_punctuation_only():
    assert sentences("One two. Three? Four! Five e.g.five") == ["One two.", "Three?", "Four!", "Five e.g.five"]


def test_chunks_close_at_sentence_ends_after_min_words():
    paragraph = " ".join(f"{_words(4, s)}." for s in "abcdefgh")  # eight 4-word sentences
    out = chunk([paragraph], SMALL)
    assert [len(c.split()) for c in out] == [12, 12, 8]
    assert all(c.endswith(".") for c in out), "every chunk ends at a sentence end"
    assert " ".join(out) == paragraph, "nothing lost, nothing reordered"


def test_a_run_on_sentence_is_cut_at_max_words_and_carries_over():
    out = chunk([_words(40) + "."], SMALL)
    assert [len(c.split()) for c in out] == [18, 18, 4]
    assert " ".join(out) == _words(40) + "."


def test_short_tail_merges_into_the_chunk_before():
    out = chunk([f"{_words(12)}. {_words(2, 't')}."], SMALL)
    assert len(out) == 1 and out[0].endswith("t1.")
    assert chunk([f"{_words(12)}. {_words(5, 't')}."], SMALL)[-1] == f"{_words(5, 't')}."


def test_empty_and_tiny_documents_give_no_or_one_chunk():
    assert chunk([], SMALL) == []
    assert chunk(["Too short."], SMALL) == []
    assert chunk([_words(5) + "."], SMALL) == [_words(5) + "."]


def test_paragraphs_of_text_markdown_and_rst(tmp_path):
    md = tmp_path / "a.md"
    md.write_text(
        "# Title of the page here\n\nFirst paragraph has\nseveral words in it.\n\n```python\n"
        "code = 'never in a chunk'\n```\n\n| a | table | row | here |\n|---|---|---|---|\n\n"
        "    indented code block line one\n\nLast paragraph with four words.\n"
    )
    assert paragraphs(md) == [
        "Title of the page here",
        "First paragraph has several words in it.",
        "Last paragraph with four words.",
    ]
    rst = text_paragraphs(
        "Section title\n=============\n\nProse before a literal block::\n\n    x = 1\n\n"
        ".. note::\n\n   A directive body.\n\nClosing words come here.\n"
    )
    assert "x = 1" not in " ".join(rst) and "Closing words come here." in rst and rst[0] == "Section title"


def test_html_keeps_paragraphs_and_drops_navigation_code_and_tables():
    html = """<html><head><title>t</title><style>p {color: red}</style></head><body>
      <nav><p>Skip to the main content now</p></nav>
      <div class="related"><p>Previous topic: something else entirely</p></div>
      <div class="body"><h1>Heading</h1>
        <p>The first real paragraph, with <code>inline code</code> and a <a href="#">link</a>.</p>
        <pre>def hidden(): return "code block"</pre>
        <table><tr><td><p>cell text is not prose here</p></td></tr></table>
        <p>Second   real
           paragraph &amp; entity.</p>
        <p>Two words</p>
      </div>
      <div class="sphinxsidebar"><p>Sidebar text that is navigation</p></div>
      <footer><p>Copyright notice of the whole site</p></footer></body></html>"""
    found = html_paragraphs(html)
    assert found == [
        "The first real paragraph, with inline code and a link .",
        "Second real paragraph & entity.",
        "Two words",
    ]


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    doc = tmp_path / "latin1.txt"
    doc.write_bytes("Caf\u00e9 au lait is served here daily.\n".encode("latin-1"))
    (text,) = paragraphs(doc)
    assert text.startswith("Caf\ufffd au lait") and text.endswith("daily.")


def test_ingest_config_checks_and_chunking():
    assert IngestConfig().chunking == ChunkSpec(50, 90, 20)
    with pytest.raises(ValueError, match="chunk_words"):
        IngestConfig(chunk_words=2)
    with pytest.raises(ValueError, match="device"):
        IngestConfig(device="tpu")
    with pytest.raises(ValueError, match="precision"):
        IngestConfig(precision="int8")
