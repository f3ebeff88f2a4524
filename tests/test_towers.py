"""Towers: the parameter-free towers are the closed-form heuristics, padding is inert, one query function."""

import numpy as np
import pytest
import torch

from raytt.heuristics import baselines
from raytt.tensors import gather
from raytt.towers import TowerConfig, TwoTower, index_vectors, query_vectors


def _context(rng, q=16, k=5, d=12):
    bank = rng.standard_normal((200, d)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    lengths = rng.integers(1, k + 1, q)
    keys = rng.integers(0, 200, (q, k))
    keys[np.arange(k)[None, :] < (k - lengths)[:, None]] = -1
    return bank, keys, lengths


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def exp_weighted(context, lengths, alpha):
    """The closed form: weight alpha**d for the real vector d steps back from the last (d = 0)."""
    back = np.arange(context.shape[1])[::-1]
    weights = np.where(back[None, :] < lengths[:, None], float(alpha) ** back[None, :], 0.0)
    return _unit(np.einsum("qk,qkd->qd", weights, context))


def last(context, lengths):
    return _unit(context[:, -1])


def mean(context, lengths):
    return exp_weighted(context, lengths, 1.0)


@pytest.mark.parametrize(
    "kind,reference",
    [
        ("last", lambda c, n: last(c, n)),
        ("mean", lambda c, n: mean(c, n)),
        ("exp", lambda c, n: exp_weighted(c, n, 0.3)),
    ],
)
def test_parameter_free_towers_equal_the_heuristics(kind, reference):
    bank, keys, lengths = _context(np.random.default_rng(0))
    model = TwoTower(TowerConfig(query=kind, alpha=0.3), bank.shape[1])
    assert not model.trainable
    got = query_vectors(model, bank, keys, lengths)
    ctx = bank[np.clip(keys, 0, None)] * (keys >= 0)[..., None]
    np.testing.assert_allclose(got, reference(ctx, lengths), atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "transformer", "mix"])
def test_a_gated_tower_starts_exactly_at_its_heuristic_base(kind):
    """`gate`: the trained correction is scaled by a learned scalar starting at 0, so step 0 is the heuristic."""
    bank, keys, lengths = _context(np.random.default_rng(1))
    model = TwoTower(TowerConfig(query=kind, hidden=16, heads=2, residual_alpha=0.3, gate=True), bank.shape[1])
    ctx = bank[np.clip(keys, 0, None)] * (keys >= 0)[..., None]
    np.testing.assert_allclose(query_vectors(model, bank, keys, lengths), exp_weighted(ctx, lengths, 0.3), atol=1e-5)
    with torch.no_grad():
        model.query.gate.fill_(1.0)
    assert np.abs(query_vectors(model, bank, keys, lengths) - exp_weighted(ctx, lengths, 0.3)).max() > 1e-3
    with pytest.raises(ValueError, match="gate needs"):
        TowerConfig(gate=True, residual=False)


@pytest.mark.parametrize("kind", ["gru", "lstm", "transformer", "mix"])
def test_trainable_towers_are_unit_and_ignore_padding(kind):
    torch.manual_seed(0)
    bank, keys, lengths = _context(np.random.default_rng(1))
    model = TwoTower(TowerConfig(query=kind, hidden=16, heads=4, layers=2), bank.shape[1]).eval()
    out = query_vectors(model, bank, keys, lengths)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    if kind in ("transformer", "mix"):
        ctx = gather(torch.as_tensor(bank), torch.as_tensor(keys))
        noisy = ctx.clone()
        pad = torch.as_tensor(keys < 0)
        noisy[pad] = torch.randn(int(pad.sum()), bank.shape[1])
        with torch.no_grad():
            a = model.encode_queries(ctx, torch.as_tensor(lengths))
            b = model.encode_queries(noisy, torch.as_tensor(lengths))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [3, 8])
def test_mix_tower_predicts_inside_the_span_of_its_last_window_chunks(window):
    """`mix`: the raw output is a weighted sum of the last `window` real context vectors."""
    torch.manual_seed(0)
    bank, keys, lengths = _context(np.random.default_rng(3), q=32, k=5, d=12)
    model = TwoTower(TowerConfig(query="mix", hidden=16, window=window, residual=False), bank.shape[1]).eval()
    ctx = gather(torch.as_tensor(bank), torch.as_tensor(keys))
    with torch.no_grad():
        raw = model.query.body(ctx, torch.as_tensor(lengths)).numpy()
        older = ctx.clone()
        older[:, : max(0, 5 - window)] = torch.randn(len(keys), max(0, 5 - window), bank.shape[1])
        np.testing.assert_allclose(model.query.body(older, torch.as_tensor(lengths)).numpy(), raw, atol=1e-5)
    for row, n in zip(range(len(keys)), lengths):
        span = ctx[row, 5 - min(n, window) :].numpy().T
        coef = np.linalg.lstsq(span, raw[row], rcond=None)[0]
        np.testing.assert_allclose(span @ coef, raw[row], atol=1e-4)
    assert np.abs(raw).max() > 1e-3


@pytest.mark.parametrize("doc", ["identity", "mlp"])
def test_training_forward_and_retrieval_compute_the_same_vectors(doc):
    torch.manual_seed(0)
    bank, keys, lengths = _context(np.random.default_rng(2))
    model = TwoTower(TowerConfig(query="gru", hidden=16, doc=doc), bank.shape[1]).eval()
    target = np.arange(len(keys))
    bank_t = torch.as_tensor(bank)
    with torch.no_grad():
        q_train, pos_train, _ = model(gather(bank_t, torch.as_tensor(keys)), torch.as_tensor(lengths), bank_t[target])
    np.testing.assert_allclose(query_vectors(model, bank, keys, lengths, batch=5), q_train.numpy(), atol=1e-6)
    np.testing.assert_allclose(index_vectors(model, bank, batch=7)[target], pos_train.numpy(), atol=1e-6)
    if doc == "identity":
        assert index_vectors(model, bank) is bank


def test_tower_config_rejects_bad_values():
    with pytest.raises(ValueError):
        TowerConfig(alpha=0.0)
    with pytest.raises(ValueError, match="window"):
        TowerConfig(query="mix", window=0)
    with pytest.raises(ValueError, match="divisible"):
        TwoTower(TowerConfig(query="transformer", hidden=10, heads=4), 8)


def test_baselines_are_the_parameter_free_towers_by_name():
    bank, keys, lengths = _context(np.random.default_rng(3))
    ctx = bank[np.clip(keys, 0, None)] * (keys >= 0)[..., None]
    got = baselines(bank, keys, lengths, alphas=(0.5,))
    assert sorted(got) == ["exp0.5", "last", "mean"]
    np.testing.assert_allclose(got["exp0.5"], exp_weighted(ctx, lengths, 0.5), atol=1e-5)
    np.testing.assert_allclose(got["last"], last(ctx, lengths), atol=1e-5)


def test_a_gated_mlp_doc_tower_starts_as_the_identity_and_then_learns():
    import torch

    from raytt.towers import TowerConfig, TwoTower

    torch.manual_seed(0)
    model = TwoTower(TowerConfig(query="gru", hidden=16, residual=True, gate=True, doc="mlp"), 8)
    bank = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(model.encode_docs(bank), bank)
    model.encode_docs(bank).sum().backward()
    assert model.doc.gate.grad is not None and model.doc.gate.grad != 0
