"""Paragraphs -> ordered chunks of about N words, cut at sentence ends.

Sentences are packed in order; a chunk closes once it holds at least `min_words`, keeping at most
`max_words` (a longer run carries over into the next chunk). A final tail of at least `tail_words` is
its own chunk; a shorter one is merged into the chunk before it (or dropped if there is none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ChunkSpec:
    min_words: int = 50
    max_words: int = 90
    tail_words: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.tail_words <= self.min_words <= self.max_words:
            raise ValueError(f"chunking needs 0 < tail_words <= min_words <= max_words, got {self}")


def sentences(paragraph: str) -> list[str]:
    """Split after `.`, `!` or `?` followed by whitespace."""
    return [s for s in _SENTENCE_END.split(paragraph) if s]


def chunk(paragraphs: list[str], spec: ChunkSpec = ChunkSpec()) -> list[str]:
    """The article's chunks, in order."""
    chunks: list[str] = []
    words: list[str] = []
    for paragraph in paragraphs:
        for sentence in sentences(paragraph):
            words.extend(sentence.split())
            while len(words) >= spec.min_words:
                chunks.append(" ".join(words[: spec.max_words]))
                words = words[spec.max_words :]
    if len(words) >= spec.tail_words:
        chunks.append(" ".join(words))
    elif words and chunks:
        chunks[-1] = chunks[-1] + " " + " ".join(words)
    return chunks
