"""Tokens for the text towers: the encoder's own tokenizer and embedding matrix, and a Ray Data tokenizer step.

Token ids are padded with 0 (BERT-family models' padding id; `bag` and `finetune` treat 0 as padding),
cut to a fixed length, int32.
"""

from __future__ import annotations

import numpy as np
import torch

from raytt.corpus.embed import resolve
from raytt.errors import ConfigError


def load_tokenizer(encoder: str):
    """The encoder's fast tokenizer (a sentence-transformers folder carries it), checked to pad with id 0."""
    from transformers import AutoTokenizer

    target, _ = resolve(encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except Exception as exc:
        raise ConfigError(
            f"tower.encoder {encoder!r}: cannot load its tokenizer: {type(exc).__name__}: {exc}"
        ) from None
    if tokenizer.pad_token_id != 0:
        raise ConfigError(
            f"tower.encoder {encoder!r}: its tokenizer pads with id {tokenizer.pad_token_id}; the text towers need a "
            "tokenizer whose padding id is 0 (BERT-family vocabularies)"
        )
    return tokenizer


def tokenize(tokenizer, texts: list[str], max_tokens: int, special: bool) -> np.ndarray:
    """[len(texts), max_tokens] int32 token ids, 0-padded; `special` adds [CLS]/[SEP] (what a finetuned model saw)."""
    out = tokenizer(
        list(texts),
        add_special_tokens=special,
        truncation=True,
        max_length=max_tokens,
        padding="max_length",
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    ids = np.asarray(out["input_ids"], dtype=np.int32)
    if ids.shape[0] and not ((ids > 0).any(1)).all():
        empty = int(np.flatnonzero(~(ids > 0).any(1))[0])
        raise ConfigError(f"text {empty} ({texts[empty][:40]!r}) has no tokens for this tokenizer")
    return ids


def load_encoder_model(encoder: str) -> torch.nn.Module:
    """The Hugging Face transformer inside a sentence-transformers folder (or any AutoModel path)."""
    from transformers import AutoModel

    target, _ = resolve(encoder)
    try:
        return AutoModel.from_pretrained(target)
    except Exception as exc:
        raise ConfigError(f"tower.encoder {encoder!r}: cannot load it: {type(exc).__name__}: {exc}") from None


def token_embeddings(encoder: str) -> torch.Tensor:
    """The encoder's input token-embedding matrix [vocab, width] (the `bag` tower starts from it)."""
    return load_encoder_model(encoder).get_input_embeddings().weight.detach().clone()


class Tokenize:
    """Ray Data step: adds a `tokens` column of fixed-length token ids for the `text` column."""

    def __init__(self, encoder: str, max_tokens: int, special: bool) -> None:
        self.tokenizer = load_tokenizer(encoder)
        self.max_tokens, self.special = max_tokens, special

    def __call__(self, batch: dict) -> dict:
        batch["tokens"] = tokenize(self.tokenizer, [str(t) for t in batch["text"]], self.max_tokens, self.special)
        return batch
