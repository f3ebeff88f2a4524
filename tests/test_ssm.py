"""The selective-scan tower: the vectorised scan against a naive scalar recurrence, padding invariance, export."""

import numpy as np
import torch

from raytt.ssm import MambaBlock, selective_scan
from raytt.towers import TowerConfig, TwoTower


def naive_scan(x, dt, a, b, c, d):
    """The recurrence one batch row, channel and state at a time, in float64."""
    x, dt, a, b, c, d = (t.double().numpy() for t in (x, dt, a, b, c, d))
    batch, length, channels = x.shape
    y = np.zeros_like(x)
    for i in range(batch):
        for e in range(channels):
            h = np.zeros(a.shape[1])
            for t in range(length):
                h = np.exp(dt[i, t, e] * a[e]) * h + dt[i, t, e] * b[i, t] * x[i, t, e]
                y[i, t, e] = (c[i, t] * h).sum() + d[e] * x[i, t, e]
    return y


def test_the_scan_matches_the_naive_recurrence():
    g = torch.Generator().manual_seed(0)
    x, dt = torch.randn(2, 6, 3, generator=g), torch.rand(2, 6, 3, generator=g)
    a = -torch.rand(3, 4, generator=g) * 2
    b, c, d = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g), torch.randn(3, generator=g)
    np.testing.assert_allclose(selective_scan(x, dt, a, b, c, d).numpy(), naive_scan(x, dt, a, b, c, d), atol=1e-5)


def test_a_context_reads_the_same_under_any_padding():
    torch.manual_seed(0)
    tower = TwoTower(TowerConfig(query="ssm", hidden=16, layers=2), 8).eval()
    chunks = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    short = tower.encode_queries(torch.cat([torch.zeros(1, 2, 8), chunks], 1), torch.tensor([3]))
    long = tower.encode_queries(torch.cat([torch.zeros(1, 9, 8), chunks], 1), torch.tensor([3]))
    torch.testing.assert_close(short, long, atol=1e-6, rtol=0)
    changed = tower.encode_queries(torch.cat([torch.ones(1, 2, 8), chunks], 1), torch.tensor([3]))
    torch.testing.assert_close(short, changed, atol=1e-6, rtol=0)  # what lies in the padding is never read


def test_the_block_trains_and_the_tower_exports(tmp_path):
    torch.manual_seed(0)
    block = MambaBlock(8, state=4)
    x = torch.randn(4, 5, 8)
    block(x, torch.ones(4, 5)).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    from raytt.export import write_program

    tower = TwoTower(TowerConfig(query="ssm", hidden=16), 8).eval()
    write_program(tower, 5, tmp_path / "q.pt2")
    program = torch.export.load(str(tmp_path / "q.pt2")).module()
    context, lengths = torch.randn(3, 5, 8), torch.tensor([5, 2, 1])
    torch.testing.assert_close(program(context, lengths), tower.query(context, lengths))
