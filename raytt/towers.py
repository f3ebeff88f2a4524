"""Query and doc towers. Every output lives in the bank's space and is L2-normalised.

The parameter-free query towers (`last`, `mean`, `exp`) are the heuristic baselines run through
the same code path as the trained ones (`gru`, `lstm`, `transformer`, `mix`), so a trained tower is always
compared on equal terms. `TwoTower.encode_queries` is the one function that turns context vectors
into query vectors, for training, validation, evaluation and export alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raytt.config import doc
from raytt.tensors import as_tensor, gather

QueryKind = Literal["last", "mean", "exp", "gru", "lstm", "transformer", "mix", "ssm"]
DocKind = Literal["identity", "mlp"]
PARAMETER_FREE = ("last", "mean", "exp")


@dataclass
class TowerConfig:
    query: QueryKind = field(
        default="gru", metadata=doc("query tower: last|mean|exp|gru|lstm|transformer|mix|ssm (selective scan)")
    )
    alpha: float = field(default=0.5, metadata=doc("exp tower: weight alpha**d for the chunk d steps back"))
    hidden: int = field(default=0, metadata=doc("hidden width of trainable towers (0 = bank dim)"))
    layers: int = field(default=1, metadata=doc("recurrent / transformer layers"))
    heads: int = field(default=4, metadata=doc("transformer attention heads"))
    state: int = field(default=16, metadata=doc("ssm tower: the selective scan's state size per channel"))
    window: int = field(
        default=8,
        metadata=doc("mix tower: how many of the last chunks it reads (their pairwise dot products set the weights)"),
    )
    dropout: float = field(default=0.0, metadata=doc("dropout inside trainable towers"))
    residual: bool = field(default=True, metadata=doc("add a heuristic base (see residual_alpha) to the output"))
    residual_alpha: float = field(
        default=0.0, metadata=doc("the residual base: exp-weighted mean with this alpha (0 = the last context vector)")
    )
    gate: bool = field(
        default=False,
        metadata=doc(
            "scale each trained correction (query tower; mlp doc tower) by a learned scalar that starts at 0: the "
            "towers start at their base (the heuristic; the bank itself)"
        ),
    )
    doc: DocKind = field(default="identity", metadata=doc("doc tower: identity (the bank is the index) or mlp"))

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"tower.alpha must be in (0, 1], got {self.alpha}")
        if not 0.0 <= self.residual_alpha <= 1.0:
            raise ValueError(f"tower.residual_alpha must be in [0, 1], got {self.residual_alpha}")
        if self.gate and not self.residual:
            raise ValueError("tower.gate needs tower.residual: the gate blends a correction into the residual base")
        if self.hidden < 0 or self.layers < 1 or self.heads < 1 or self.window < 1 or self.state < 1:
            raise ValueError("tower.hidden must be >= 0, tower.layers, tower.heads, tower.window and tower.state >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"tower.dropout must be in [0, 1), got {self.dropout}")


def real_mask(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] True where the left-padded context row is real (the last `length` rows)."""
    back = torch.arange(k - 1, -1, -1, device=lengths.device)
    return back[None, :] < lengths[:, None]


class WeightedMean(nn.Module):
    """Weight alpha**d for the chunk d steps back from the last; alpha=1 is the mean, alpha=0 the last."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        k = context.shape[1]
        back = torch.arange(k - 1, -1, -1, device=context.device, dtype=context.dtype)
        weights = torch.where(real_mask(lengths, k), self.alpha**back, torch.zeros_like(back))
        return torch.einsum("bk,bkd->bd", weights, context)


class Recurrent(nn.Module):
    """GRU or LSTM over the context; the final state, projected back to the bank's dim."""

    def __init__(self, cell: str, dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(hidden, dim)

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(context)
        return self.out(states[:, -1])


class CausalTransformer(nn.Module):
    """Causal self-attention with positions counted back from the last chunk, pooled at the last step."""

    def __init__(self, dim: int, hidden: int, layers: int, heads: int, dropout: float, max_len: int = 512) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"tower.hidden ({hidden}) must be divisible by tower.heads ({heads})")
        self.heads = heads
        self.inp = nn.Linear(dim, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(hidden, dim)

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _b, k, _ = context.shape
        back = torch.arange(k - 1, -1, -1, device=context.device)
        x = self.inp(context) + self.pos(back)[None]
        real = real_mask(lengths, k)
        eye = torch.eye(k, dtype=torch.bool, device=context.device)
        allowed = torch.tril(torch.ones(k, k, dtype=torch.bool, device=context.device))[None] & (real[:, None, :] | eye)
        blocked = (~allowed).repeat_interleave(self.heads, dim=0)
        return self.out(self.encoder(x, mask=blocked)[:, -1])


class AdaptiveMix(nn.Module):
    """Adaptive linear prediction: the next vector as a weighted sum of the last `window` context vectors.

    The weights come from an MLP over the context's Gram matrix (pairwise dot products after a learned
    linear denoising map, identity at start). The Gram matrix says how fast and which way an article
    moves wherever it sits in the space, so the same weights serve every region of the bank.
    """

    def __init__(self, dim: int, hidden: int, window: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.denoise = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.denoise.weight)
        self.weights = nn.Sequential(
            nn.Linear(window * window + window, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, window),
        )

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        w = self.window
        context = F.pad(context[:, -w:], (0, 0, max(0, w - context.shape[1]), 0))
        real = real_mask(lengths.clamp(max=w), w).to(context.dtype)
        h = self.denoise(context) * real[..., None]
        gram = torch.einsum("bid,bjd->bij", h, h).flatten(1)
        alpha = self.weights(torch.cat([gram, real], 1)) * real
        return torch.einsum("bk,bkd->bd", alpha, h)


class QueryTower(nn.Module):
    """Context [B, k, D] (left-padded) + lengths [B] -> unit query vectors [B, D]."""

    def __init__(self, cfg: TowerConfig, dim: int) -> None:
        super().__init__()
        hidden = cfg.hidden or dim
        self.kind = cfg.query
        trainable = cfg.query not in PARAMETER_FREE
        self.base = WeightedMean(cfg.residual_alpha) if cfg.residual and trainable else None
        self.gate = nn.Parameter(torch.zeros(())) if cfg.gate and trainable else None
        if cfg.query == "last":
            self.body: nn.Module = WeightedMean(0.0)
        elif cfg.query == "mean":
            self.body = WeightedMean(1.0)
        elif cfg.query == "exp":
            self.body = WeightedMean(cfg.alpha)
        elif cfg.query in ("gru", "lstm"):
            self.body = Recurrent(cfg.query, dim, hidden, cfg.layers, cfg.dropout)
        elif cfg.query == "ssm":
            from raytt.ssm import SelectiveScanTower

            self.body = SelectiveScanTower(dim, hidden, cfg.layers, cfg.state, cfg.dropout)
        elif cfg.query == "mix":
            self.body = AdaptiveMix(dim, hidden, cfg.window, cfg.dropout)
        else:
            self.body = CausalTransformer(dim, hidden, cfg.layers, cfg.heads, cfg.dropout)

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.body(context, lengths)
        if self.gate is not None:
            out = self.gate * out
        if self.base is not None:
            out = out + F.normalize(self.base(context, lengths), dim=-1)
        return F.normalize(out, dim=-1)


class DocTower(nn.Module):
    """Bank vectors -> index vectors. `identity` keeps the bank as the index; `mlp` learns a residual map,
    scaled by a learned scalar that starts at 0 when `gate` is set (step 0's index is then the bank itself)."""

    def __init__(self, kind: DocKind, dim: int, hidden: int, gate: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.mlp = (
            None if kind == "identity" else nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        )
        self.gate = nn.Parameter(torch.zeros(())) if gate and self.mlp is not None else None

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return vectors
        correction = self.mlp(vectors) if self.gate is None else self.gate * self.mlp(vectors)
        return F.normalize(vectors + correction, dim=-1)


class TwoTower(nn.Module):
    """The model: a query tower over context chunks and a doc tower over bank vectors, one shared space."""

    def __init__(self, cfg: TowerConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.query = QueryTower(cfg, dim)
        self.doc = DocTower(cfg.doc, dim, cfg.hidden or dim, cfg.gate)

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def forward(
        self, context: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, mined: torch.Tensor | None = None
    ):
        """Training step's forward (one call, so DDP syncs both towers): (queries, positives, mined or None).

        Mined negatives [B, n, D] go through the doc tower with the positives, in the same space.
        """
        queries = self.encode_queries(context, lengths)
        if mined is None:
            return queries, self.encode_docs(targets), None
        b, n, d = mined.shape
        docs = self.encode_docs(torch.cat([targets, mined.reshape(b * n, d)]))
        return queries, docs[:b], docs[b:].reshape(b, n, d)

    def encode_queries(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.query(context, lengths)

    def encode_docs(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.doc(vectors)


@torch.no_grad()
def query_vectors(
    model: TwoTower,
    bank: np.ndarray,
    context_keys: np.ndarray,
    lengths: np.ndarray,
    batch: int = 4096,
    device: str = "cpu",
) -> np.ndarray:
    """Unit query vectors [Q, D] for context keys, through `encode_queries` (the training code path)."""
    model.eval()
    bank_t = as_tensor(bank)
    keys = torch.as_tensor(np.asarray(context_keys, dtype=np.int64))
    lens = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
    out = np.empty((len(keys), bank.shape[1]), dtype=np.float32)
    for s in range(0, len(keys), batch):
        ctx = gather(bank_t, keys[s : s + batch]).to(device)
        out[s : s + batch] = model.encode_queries(ctx, lens[s : s + batch].to(device)).float().cpu().numpy()
    return out


@torch.no_grad()
def index_vectors(model: TwoTower, bank: np.ndarray, batch: int = 65_536, device: str = "cpu") -> np.ndarray:
    """The retrieval index: the bank itself for the identity doc tower (no copy), else the doc tower's output."""
    if model.doc.kind == "identity":
        return bank
    model.eval()
    bank_t = as_tensor(bank)
    out = np.empty_like(bank, dtype=np.float32)
    for s in range(0, len(bank), batch):
        out[s : s + batch] = model.encode_docs(bank_t[s : s + batch].to(device)).float().cpu().numpy()
    return out


def describe(model: TwoTower) -> str:
    params = sum(p.numel() for p in model.parameters())
    cfg = dataclasses.asdict(model.cfg)
    return f"query={cfg['query']} doc={cfg['doc']} dim={model.dim} params={params:,}"
