import numpy as np
import pytest
from helpers import QUIET, SMALL

from raytt.bank import load_bank, read_manifest
from raytt.errors import ConfigError
from raytt.evaluation import sampled_report
from raytt.synthetic import OraclePredictor, SynthConfig, article_lengths, generate


def test_deterministic_by_seed(synth_bank, tmp_path):
    generate(SMALL, tmp_path / "again", progress=QUIET)
    generate(SynthConfig(**{**SMALL.__dict__, "seed": 1}), tmp_path / "other", progress=QUIET)
    assert read_manifest(tmp_path / "again").sha256 == read_manifest(synth_bank).sha256
    assert read_manifest(tmp_path / "other").sha256 != read_manifest(synth_bank).sha256


@pytest.mark.parametrize("dim", [384, 768])
def test_dims_and_exact_size(tmp_path, dim):
    generate(SynthConfig(num_vectors=1500, dim=dim), tmp_path / "b", progress=QUIET)
    bank = load_bank(tmp_path / "b")
    assert bank.vectors.shape == (1500, dim)
    assert np.allclose(np.linalg.norm(bank.vectors, axis=1), 1, atol=1e-5)


def test_lengths_are_long_tailed_and_exact():
    cfg = SynthConfig(num_vectors=200_000)
    lengths = article_lengths(cfg, np.random.default_rng(0))
    assert lengths.sum() == 200_000 and lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len
    assert lengths.max() > 5 * np.median(lengths), "a long tail of long articles"


def test_boilerplate_near_duplicates_span_articles(synth_bank):
    bank = load_bank(synth_bank)
    sims = bank.vectors @ bank.vectors.T
    np.fill_diagonal(sims, 0)
    a, b = np.nonzero(np.triu(sims) > 0.98)
    assert len(a) > 10
    assert (bank.article_codes[a] != bank.article_codes[b]).any(), "false negatives across articles exist"
    assert (sims < 1 - 1e-6).all(), "near-duplicates, not exact ones"


def test_oracle_predicts_real_next_chunks(synth_bank):
    bank = load_bank(synth_bank)
    targets = np.flatnonzero(bank.positions >= 1)
    q = OraclePredictor(synth_bank).predict(targets)
    assert q.shape == (len(targets), bank.dim)
    cos_truth = (q * bank.vectors[targets]).sum(1)
    cos_random = (q * bank.vectors[np.random.default_rng(0).permutation(targets)]).sum(1)
    assert np.median(cos_truth) > np.median(cos_random) + 0.3


def test_learnable_but_not_trivial(synth_bank):
    table = sampled_report(synth_bank, num_queries=500)
    assert table["oracle"]["R@10"] > table["last"]["R@10"] + 0.25
    assert table["oracle"]["R@10"] > 0.7
    assert table["last"]["R@10"] < 0.75


def test_bad_config_refused():
    with pytest.raises(ConfigError, match="speed_min <= speed_max"):
        SynthConfig(speed_min=2.0, speed_max=1.0)


def test_quotes_plant_cross_article_twins(tmp_path):
    def twins(quote_rate):
        cfg = SynthConfig(num_vectors=3000, dim=32, latent_dim=8, boilerplate_rate=0.0, quote_rate=quote_rate)
        generate(cfg, tmp_path / str(quote_rate), progress=QUIET)
        bank = load_bank(tmp_path / str(quote_rate))
        sims = np.triu(bank.vectors @ bank.vectors.T, 1)
        a, b = np.nonzero(sims > 0.98)
        return bank.article_codes[a], bank.article_codes[b]

    a, b = twins(0.2)
    assert len(a) >= 0.8 * 3000 * 0.2 / 2, "about quote_rate/2 of the chunks have a twin"
    assert (a != b).all(), "twins sit in different articles"
    assert len(twins(0.0)[0]) == 0


def test_context_oracle_is_the_oracle_when_speed_is_readable_and_falls_short_when_jittered(tmp_path):
    """Without phase jitter the context's phases give the exact speed; with jitter the estimate costs recall."""
    from raytt.sequences import sample_windows
    from raytt.synthetic import context_oracle

    for jitter in (0.0, 0.3):
        path = tmp_path / f"j{jitter}"
        generate(SynthConfig(**{**SMALL.__dict__, "phase_jitter": jitter}), path, progress=QUIET)
        _, lengths, target = sample_windows(load_bank(path), 5, 400, seed=0)
        deep = lengths >= 2
        gap = np.abs(context_oracle(path, target, lengths) - OraclePredictor(path).predict(target))[deep].max()
        if jitter == 0.0:
            assert gap < 1e-4
        else:
            assert gap > 0.05
