"""The baselines every text tower is judged against, each a full-corpus top-K per query:
BM25 (bm25s, English stopwords) and a frozen sentence-transformers encoder (zero-shot, cosine)."""

from __future__ import annotations

import numpy as np

from raytt.errors import ConfigError

QUERY_CHUNK = 1024  # queries scored against the whole corpus at once


def bm25_top(passages: list[str], queries: list[str], k: int) -> np.ndarray:
    """BM25's top `k` passage numbers per query, best first."""
    try:
        import bm25s
    except ImportError as exc:
        raise ConfigError(f"the BM25 baseline needs bm25s: pip install 'raytt[text]' ({exc})") from None
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False)
    top, _ = retriever.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=min(k, len(passages)), show_progress=False
    )
    return np.asarray(top, dtype=np.int64)


def frozen_top(passages: list[str], queries: list[str], embedder: str, k: int) -> np.ndarray:
    """The frozen encoder's top `k` passage numbers per query (one model load for both sides)."""
    from raytt.corpus.embed import load

    model = load(embedder)
    return dense_top(encode(model, passages), encode(model, queries), k)


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings of `texts` by a loaded sentence-transformers model."""
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def dense_top(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top `k` corpus rows per query by inner product, best first, in chunks of queries."""
    import torch

    bank = torch.from_numpy(np.ascontiguousarray(corpus))
    out = []
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = torch.from_numpy(np.ascontiguousarray(queries[start : start + QUERY_CHUNK])) @ bank.T
        out.append(torch.topk(scores, min(k, len(corpus)), dim=1).indices.numpy())
    return np.concatenate(out).astype(np.int64)
