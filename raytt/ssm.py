"""A selective state-space sequence model (the Mamba family, Gu & Dao 2023) in plain PyTorch, for CPU and GPU.

Each block projects its input to a stream and a gate, runs a short causal depthwise convolution, then a
selective scan: a diagonal linear recurrence h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t + D x_t,
whose step size dt and projections B, C depend on the input (that is the "selective" part: the model
chooses per chunk what to keep and what to forget). The scan runs step by step over the context, vectorised
over batch, channels and state: contexts are 1-100 chunks long, where the CUDA kernels of `mamba-ssm` would
not pay for themselves. Left-padded positions are zeroed before the convolution and the scan, so a context
reads the same however much padding precedes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan(x, dt, a, b, c, d) -> torch.Tensor:
    """y [B, L, E] of the recurrence h_t = exp(dt_t a) h_{t-1} + dt_t b_t x_t, y_t = c_t . h_t + d x_t.

    x, dt: [B, L, E]; a: [E, N] (negative); b, c: [B, L, N]; d: [E]. h starts at 0.
    """
    batch, length, channels = x.shape
    h = x.new_zeros(batch, channels, a.shape[1])
    out = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * a)  # [B, E, N]
        h = decay * h + (dt[:, t, :, None] * b[:, t, None, :]) * x[:, t, :, None]
        out.append((h * c[:, t, None, :]).sum(-1))
    return torch.stack(out, 1) + x * d


class MambaBlock(nn.Module):
    """in-projection to (stream, gate) -> causal depthwise conv -> SiLU -> selective scan -> gated -> out-projection."""

    def __init__(self, width: int, state: int = 16, expand: int = 2, conv: int = 4) -> None:
        super().__init__()
        inner = expand * width
        self.dt_rank = math.ceil(width / 16)
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner, padding=conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.d = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)
        with torch.no_grad():  # step sizes start between 1e-3 and 1e-1, as Mamba initialises them
            dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x [B, L, W] with `real` [B, L] (False on left padding) -> [B, L, W]."""
        length = x.shape[1]
        stream, gate = self.in_proj(x).chunk(2, dim=-1)
        stream = stream * real[..., None]  # padding reads as the zeros a fresh sequence starts from
        stream = F.silu(self.conv(stream.transpose(1, 2))[..., :length].transpose(1, 2)) * real[..., None]
        dt, b, c = self.x_proj(stream).split([self.dt_rank, self.b_size, self.b_size], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        y = selective_scan(stream, dt, -torch.exp(self.a_log), b, c, self.d)
        return self.out_proj(y * F.silu(gate))

    @property
    def b_size(self) -> int:
        return self.a_log.shape[1]


class SelectiveScanTower(nn.Module):
    """Context [B, k, D] -> [B, D]: pre-norm residual Mamba blocks at width `hidden`, read at the last chunk."""

    def __init__(self, dim: int, hidden: int, layers: int, state: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.blocks = nn.ModuleList(MambaBlock(hidden, state) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, dim)

    def forward(self, context: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from raytt.towers import real_mask

        real = real_mask(lengths, context.shape[1]).to(context.dtype)
        h = self.inp(context) * real[..., None]
        for norm, block in zip(self.norms, self.blocks):
            h = h + self.drop(block(norm(h), real))
        return self.out(h[:, -1])
