"""Documents -> paragraphs of plain text: one file is one article.

`.txt`, `.md` and `.rst` split on blank lines (fenced and indented code blocks, tables and directive
markup dropped); `.html` keeps the text of `<p>` elements outside navigation, code blocks and tables.
Bytes that are not UTF-8 are replaced, not fatal: real corpora contain them.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")
MIN_PARAGRAPH_WORDS = 4
SKIP_TAGS = {"pre", "table", "nav", "header", "footer", "script", "style", "noscript", "template", "svg"}
SKIP_CLASSES = {"navheader", "navfooter", "sphinxsidebar", "related", "footer", "headerlink", "toctree-wrapper"}
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_SPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return _SPACE.sub(" ", text).strip()


def read_text(path: Path) -> str:
    """A file's text as UTF-8, undecodable bytes replaced."""
    return Path(path).read_bytes().decode("utf-8", errors="replace")


def paragraphs(path: Path) -> list[str]:
    """The article's paragraphs, whitespace folded, those under MIN_PARAGRAPH_WORDS words dropped."""
    text = read_text(path)
    found = html_paragraphs(text) if Path(path).suffix.lower() in (".html", ".htm") else text_paragraphs(text)
    return [p for p in found if len(p.split()) >= MIN_PARAGRAPH_WORDS]


def html_paragraphs(html: str) -> list[str]:
    parser = _Paragraphs()
    parser.feed(html)
    parser.close()
    return parser.found


class _Paragraphs(HTMLParser):
    """Collects `<p>` text, skipping everything inside navigation, code blocks and tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[bool] = []  # per open element: does it start a skipped region?
        self.skipping = 0
        self.current: list[str] | None = None
        self.depth_at_p = -1
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in VOID_TAGS:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        self.stack.append(skip)
        self.skipping += skip
        if tag == "p" and not self.skipping:
            self._flush()
            self.current, self.depth_at_p = [], len(self.stack)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or not self.stack:
            return
        if tag == "p" and self.current is not None:
            self._flush()
        self.skipping -= self.stack.pop()
        if self.current is not None and len(self.stack) < self.depth_at_p:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.current is not None and not self.skipping:
            self.current.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        if self.current is not None:
            text = fold(" ".join(self.current))
            if text:
                self.found.append(text)
        self.current = None


_FENCE = re.compile(r"^(```|~~~)")
_DIRECTIVE = re.compile(r"^\.\. [\w-]+::")
_TABLE = re.compile(r"^\s*(\||\+[-=+]+\+|[-=]{3,}(\s+[-=]{3,})+\s*$)")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:.])\1{2,}\s*$")


def text_paragraphs(text: str) -> list[str]:
    """Plain text, Markdown and reStructuredText: blank-line paragraphs without code blocks, tables or markup."""
    out, block, fenced, literal = [], [], False, False
    for line in text.splitlines():
        stripped = line.strip()
        if _FENCE.match(stripped):
            fenced = not fenced
            _close(block, out)
            continue
        if fenced:
            continue
        if literal:
            if not stripped or line[:1] in (" ", "\t"):
                continue
            literal = False
        if not stripped:
            _close(block, out)
            continue
        if (
            _DIRECTIVE.match(stripped)
            or _TABLE.match(line)
            or _UNDERLINE.match(stripped)
            or (line[:4] == "    " and not block)
        ):
            _close(block, out)
            literal = stripped.endswith("::") or line[:4] == "    "
            continue
        if stripped.endswith("::"):
            literal = True
            stripped = stripped[:-1]
        block.append(stripped.lstrip("#").strip() if stripped.startswith("#") else stripped)
    _close(block, out)
    return out


def _close(block: list[str], out: list[str]) -> None:
    if block:
        out.append(fold(" ".join(block)))
        block.clear()
