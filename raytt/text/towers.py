"""Text towers: a query side and a passage side (tied or untied), each ending in a unit vector.

- `bag`: a (learned-weight) mean of token embeddings, initialised from the encoder's embedding
  matrix or at random, and a projection; cheap enough for a laptop CPU.
- `adapter`: the frozen encoder's cached vector plus a gated residual MLP whose gate starts at 0,
  so step 0 is the zero-shot encoder.
- `finetune`: the whole Hugging Face encoder, mean-pooled, trained end to end.
- `hybrid`: the adapter's semantic vector concatenated with a lexical bag-of-tokens vector (shared by
  both sides) that a query-side gate starting at 0 lets in (dense lexical + semantic, as SPAR).

Inputs are token ids [B, L] (0 = padding) for `bag` and `finetune`, cached vectors [B, D] for `adapter`,
and for `hybrid` the cached vector followed by the token ids as floats [B, D + L] (exact below 2**24).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from raytt.config import doc

TextKind = Literal["bag", "adapter", "finetune", "hybrid"]


@dataclass
class TextTowerConfig:
    kind: TextKind = field(
        default="bag",
        metadata=doc("bag, adapter (frozen encoder + gated residual), finetune, or hybrid (adapter + bag)"),
    )
    encoder: str = field(
        default="all-MiniLM-L6-v2",
        metadata=doc(
            "sentence-transformers / Hugging Face model: tokenizer and embeddings (bag), cached vectors "
            "(adapter), the trained model (finetune)"
        ),
    )
    tied: bool = field(default=False, metadata=doc("one set of weights for queries and passages"))
    passage: Literal["same", "cached"] = field(
        default="same",
        metadata=doc(
            "passage side: the same kind of encoder as the query side, or cached: the frozen encoder's "
            "cached vectors through a gated adapter (the corpus is never re-encoded; train the query side)"
        ),
    )
    projection_dim: int = field(default=0, metadata=doc("output width (0 = the encoder's width, no projection)"))
    init: Literal["pretrained", "random"] = field(
        default="pretrained", metadata=doc("bag: token embeddings from the encoder's matrix or random")
    )
    token_weights: bool = field(default=True, metadata=doc("bag: a learned weight per token in the mean (IDF-like)"))
    hidden: int = field(default=0, metadata=doc("adapter: hidden width of the residual MLP (0 = 2 x the width)"))
    dropout: float = field(default=0.0, metadata=doc("dropout inside the trained layers"))
    train_layers: int = field(
        default=0,
        metadata=doc(
            "finetune: train only the top N transformer layers (embeddings and lower layers frozen: "
            "a CPU steps faster); 0 = every layer"
        ),
    )
    max_query_tokens: int = field(default=32, metadata=doc("query token ids kept (bag, finetune)"))
    max_passage_tokens: int = field(default=128, metadata=doc("passage token ids kept (bag, finetune)"))

    def __post_init__(self) -> None:
        if self.projection_dim < 0 or self.hidden < 0 or self.train_layers < 0:
            raise ValueError("tower.projection_dim, tower.hidden and tower.train_layers must be >= 0")
        if self.max_query_tokens < 1 or self.max_passage_tokens < 1:
            raise ValueError("tower.max_query_tokens and tower.max_passage_tokens must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"tower.dropout must be in [0, 1), got {self.dropout}")
        if self.passage == "cached" and (self.tied or self.kind in ("adapter", "hybrid")):
            raise ValueError("tower.passage: cached needs an untied tower of kind bag or finetune")

    @property
    def queries_read_tokens(self) -> bool:
        return self.kind in ("bag", "finetune")

    @property
    def passages_read_tokens(self) -> bool:
        return self.kind in ("bag", "finetune") and self.passage == "same"

    @property
    def reads_cache(self) -> bool:
        """Whether either side reads the frozen encoder's cached vectors."""
        return not (self.queries_read_tokens and self.passages_read_tokens)

    @property
    def packs_tokens(self) -> bool:
        """`hybrid`: each side's input is its cached vector followed by its token ids."""
        return self.kind == "hybrid"


class BagEncoder(nn.Module):
    """Weighted mean of token embeddings (weights softplus(w[token]), all equal at the start), then a projection."""

    def __init__(self, embeddings: torch.Tensor, projection_dim: int, token_weights: bool, dropout: float) -> None:
        super().__init__()
        vocab, width = embeddings.shape
        self.embed = nn.Embedding(vocab, width, padding_idx=0, _weight=embeddings.clone())
        self.weight = nn.Parameter(torch.full((vocab,), 0.5413)) if token_weights else None  # softplus(0.5413) = 1
        self.drop = nn.Dropout(dropout)
        self.project = nn.Linear(width, projection_dim) if projection_dim else nn.Identity()

    @property
    def dim(self) -> int:
        return self.project.out_features if isinstance(self.project, nn.Linear) else self.embed.embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = (ids > 0).float()
        w = real * (F.softplus(self.weight[ids]) if self.weight is not None else 1.0)
        pooled = (self.embed(ids) * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return F.normalize(self.project(self.drop(pooled)), dim=-1)


class GatedAdapter(nn.Module):
    """x + g * MLP(x) with the scalar g starting at 0 (the frozen encoder at step 0), then an optional projection."""

    def __init__(self, width: int, hidden: int, projection_dim: int, dropout: float) -> None:
        super().__init__()
        hidden = hidden or 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.gate = nn.Parameter(torch.zeros(()))
        self.project = nn.Linear(width, projection_dim) if projection_dim else nn.Identity()
        self.width = width
        if projection_dim:
            nn.init.eye_(self.project.weight) if projection_dim == width else None
            nn.init.zeros_(self.project.bias)

    @property
    def dim(self) -> int:
        return self.project.out_features if isinstance(self.project, nn.Linear) else self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(x + self.gate * self.mlp(x)), dim=-1)


class FinetuneEncoder(nn.Module):
    """A Hugging Face encoder, mean-pooled over its real tokens, then an optional projection."""

    def __init__(self, model: nn.Module, projection_dim: int, train_layers: int = 0) -> None:
        super().__init__()
        self.model = model
        if train_layers:
            freeze_below(model, train_layers)
        width = model.config.hidden_size
        self.project = nn.Linear(width, projection_dim) if projection_dim else nn.Identity()
        self.width = width

    @property
    def dim(self) -> int:
        return self.project.out_features if isinstance(self.project, nn.Linear) else self.width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids > 0).long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(self.project(pooled), dim=-1)


class HybridEncoder(nn.Module):
    """[adapter(cached vector), gate * bag(token ids)], normalised: a semantic and a lexical part in one vector.

    The bag is one module shared by both sides; only the query side's gate is learned (from 0, so step 0
    ranks as the frozen encoder), the passage side's is fixed at 1, so q.p = semantic + gate * lexical
    (up to the normalisation).
    """

    def __init__(self, adapter: GatedAdapter, bag: BagEncoder, gated: bool) -> None:
        super().__init__()
        self.adapter, self.bag = adapter, bag
        self.gate = nn.Parameter(torch.zeros(())) if gated else None

    @property
    def dim(self) -> int:
        return self.adapter.dim + self.bag.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.adapter.width
        lexical = self.bag(x[..., width:].long())
        lexical = lexical * self.gate if self.gate is not None else lexical
        return F.normalize(torch.cat([self.adapter(x[..., :width]), lexical], dim=-1), dim=-1)


class TextTwoTower(nn.Module):
    """A query encoder and a passage encoder; tied towers are one module used for both sides."""

    def __init__(self, cfg: TextTowerConfig, query_side: nn.Module, passage_side: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.query_side = query_side
        self.passage_side = passage_side or (query_side if cfg.tied else copy.deepcopy(query_side))

    @property
    def dim(self) -> int:
        return self.query_side.dim

    @property
    def trainable(self) -> bool:
        return True

    def queries(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.query_side(inputs)

    def passages(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.passage_side(inputs)

    def forward(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None):
        """(query vectors [B, D], positive vectors [B, D], negative vectors [B, n, D] or None): one call, so DDP
        sees every parameter used in the step."""
        q, p = self.queries(queries), self.passages(positives)
        if negatives is None or negatives.shape[1] == 0:
            return q, p, None
        b, n = negatives.shape[:2]
        return q, p, self.passages(negatives.flatten(0, 1)).view(b, n, -1)


def build_text_tower(cfg: TextTowerConfig, width: int = 0) -> TextTwoTower:
    """The configured towers (seeded by the caller); `width` is the cached vectors' width (adapter, cached passages)."""
    if cfg.kind == "adapter":
        return TextTwoTower(cfg, GatedAdapter(width, cfg.hidden, cfg.projection_dim, cfg.dropout))
    if cfg.kind == "hybrid":
        return _hybrid(cfg, width)
    query_side = _token_encoder(cfg)
    if cfg.passage == "same":
        return TextTwoTower(cfg, query_side)
    if query_side.dim != width:
        raise ValueError(
            f"tower.passage: cached: the query side gives {query_side.dim}-d vectors, the cached ones are {width}-d"
        )
    return TextTwoTower(cfg, query_side, GatedAdapter(width, cfg.hidden, 0, cfg.dropout))


def _hybrid(cfg: TextTowerConfig, width: int) -> TextTwoTower:
    """Two hybrid sides sharing one lexical bag; the adapters are tied or not as `cfg.tied` says."""
    from raytt.text.tokens import token_embeddings

    bag = BagEncoder(token_embeddings(cfg.encoder), cfg.projection_dim, cfg.token_weights, cfg.dropout)
    query_adapter = GatedAdapter(width, cfg.hidden, 0, cfg.dropout)
    passage_adapter = query_adapter if cfg.tied else GatedAdapter(width, cfg.hidden, 0, cfg.dropout)
    if not cfg.tied:
        passage_adapter.load_state_dict(query_adapter.state_dict())
    return TextTwoTower(cfg, HybridEncoder(query_adapter, bag, True), HybridEncoder(passage_adapter, bag, False))


def _token_encoder(cfg: TextTowerConfig) -> nn.Module:
    from raytt.text.tokens import load_encoder_model, token_embeddings

    if cfg.kind == "bag":
        embeddings = token_embeddings(cfg.encoder)
        if cfg.init == "random":
            embeddings = torch.randn_like(embeddings) * embeddings.std()
        return BagEncoder(embeddings, cfg.projection_dim, cfg.token_weights, cfg.dropout)
    return FinetuneEncoder(load_encoder_model(cfg.encoder), cfg.projection_dim, cfg.train_layers)


def freeze_below(model: nn.Module, top: int) -> None:
    """Freeze every parameter but those of the top `top` layers of a BERT-style encoder (and its pooler)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"tower.train_layers: {type(model).__name__} has no encoder.layer list to freeze below")
    if top > len(layers):
        raise ValueError(f"tower.train_layers = {top}, but the encoder has {len(layers)} layers")
    model.requires_grad_(False)
    for layer in list(layers)[len(layers) - top :]:
        layer.requires_grad_(True)
