"""Synthetic corpus: articles as trajectories in embedding space, with a known oracle predictor.

Each article has a centre (its topic's centre plus an article offset) and a theme vector rotating in
an article-specific plane of its topic's subspace: the phase advances by the article's speed plus
jitter at every chunk. A chunk is the projection of centre + theme into `dim` dimensions plus
isotropic noise, L2-normalised. Next-chunk retrieval is learnable (extrapolate the rotation from the
context) but not trivial (the next chunk is not the nearest one to the last chunk, and same-topic
articles crowd the region). Boilerplate near-duplicates are planted across articles so false
negatives exist, as in real corpora.

The oracle predictor knows the hidden centre, plane, speed and the phase up to the previous chunk,
and predicts the noise-free next chunk: the ceiling reported beside trained towers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raytt.bank import BankManifest, BankWriter
from raytt.config import doc
from raytt.errors import ConfigError, RayttError
from raytt.progress import say
from raytt.storage import atomic_dir, write_json

GENERATOR = "raytt-synth/1"
ORACLE_DIR = "synth"
BLOCK_ROWS = 65_536


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic corpus; the defaults give a laptop-sized bank with a clear oracle gap."""

    num_vectors: int = field(default=50_000, metadata=doc("total chunk vectors in the bank"))
    dim: int = field(default=384, metadata=doc("embedding dimension (384 and 768 are typical)"))
    seed: int = field(default=0, metadata=doc("everything is a deterministic function of the seed"))
    latent_dim: int = field(default=32, metadata=doc("dimension of the hidden space before projection"))
    num_topics: int = field(default=16, metadata=doc("topics; articles of a topic share a region"))
    topic_subspace: int = field(default=6, metadata=doc("dims of a topic's subspace holding theme planes"))
    article_spread: float = field(default=0.8, metadata=doc("how far article centres sit from their topic"))
    centre_weight: float = field(default=0.75, metadata=doc("share of a chunk that is the article centre"))
    speed_min: float = field(default=0.5, metadata=doc("slowest theme rotation per chunk (radians)"))
    speed_max: float = field(default=1.1, metadata=doc("fastest theme rotation per chunk (radians)"))
    phase_jitter: float = field(default=0.3, metadata=doc("unpredictable phase noise per chunk (radians)"))
    noise: float = field(default=0.5, metadata=doc("isotropic observation noise (norm, before normalising)"))
    min_len: int = field(default=6, metadata=doc("shortest article in chunks"))
    max_len: int = field(default=400, metadata=doc("longest article in chunks (long-tailed lengths)"))
    boilerplate_rate: float = field(default=0.2, metadata=doc("share of articles with one boilerplate chunk"))
    boilerplate_templates: int = field(default=20, metadata=doc("distinct boilerplate chunks shared across articles"))
    boilerplate_noise: float = field(default=0.05, metadata=doc("noise of a boilerplate copy (near-duplicates)"))
    quote_rate: float = field(
        default=0.0,
        metadata=doc(
            "share of chunks in a source/quote pair: a near-copy of one chunk replaces a chunk of another article"
        ),
    )

    def __post_init__(self) -> None:
        checks = [
            (self.num_vectors >= self.min_len, f"num_vectors must be >= min_len ({self.min_len})"),
            (self.dim >= 2, "dim must be >= 2"),
            (2 <= self.topic_subspace <= self.latent_dim, "topic_subspace must be in 2..latent_dim"),
            (self.latent_dim <= self.dim, "latent_dim must be <= dim"),
            (self.num_topics >= 1, "num_topics must be >= 1"),
            (0.0 < self.centre_weight < 1.0, "centre_weight must be in (0, 1)"),
            (0.0 < self.speed_min <= self.speed_max, "need 0 < speed_min <= speed_max"),
            (2 <= self.min_len <= self.max_len, "need 2 <= min_len <= max_len"),
            (0.0 <= self.boilerplate_rate <= 1.0, "boilerplate_rate must be in [0, 1]"),
            (0.0 <= self.quote_rate <= 1.0, "quote_rate must be in [0, 1]"),
            (self.boilerplate_templates >= 1, "boilerplate_templates must be >= 1"),
            (
                min(self.noise, self.phase_jitter, self.article_spread, self.boilerplate_noise) >= 0,
                "noise, phase_jitter, article_spread and boilerplate_noise must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"synth config: {message}")

    @property
    def embedder_id(self) -> str:
        return f"{GENERATOR}(seed={self.seed},dim={self.dim})"


@dataclass
class HiddenWorld:
    """Hidden state of every article, drawn once from the seed."""

    lengths: np.ndarray
    projection: np.ndarray
    centre: np.ndarray
    plane_e: np.ndarray
    plane_f: np.ndarray
    speed: np.ndarray
    phase0: np.ndarray
    boiler_at: np.ndarray
    boiler_id: np.ndarray
    templates: np.ndarray


def article_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed article lengths (min_len + lognormal, clipped) summing exactly to num_vectors."""
    draws = []
    total = 0
    while total < cfg.num_vectors:
        chunk = np.clip(cfg.min_len + rng.lognormal(2.8, 0.8, 4096), cfg.min_len, cfg.max_len).astype(np.int64)
        draws.append(chunk)
        total += int(chunk.sum())
    lengths = np.concatenate(draws)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), cfg.num_vectors)) + 1]
    lengths[-1] -= int(lengths.sum()) - cfg.num_vectors
    if lengths[-1] < cfg.min_len and len(lengths) > 1:
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    return lengths


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def hidden_world(cfg: SynthConfig) -> HiddenWorld:
    """Every article's hidden state, drawn from the seed (the same draw `generate` makes)."""
    rng = np.random.default_rng([cfg.seed, 0])
    lengths = article_lengths(cfg, rng)
    n_art, lat = len(lengths), cfg.latent_dim
    projection = np.linalg.qr(rng.standard_normal((cfg.dim, lat)))[0].T.astype(np.float32)
    topic_centre = unit(rng.standard_normal((cfg.num_topics, lat)))
    topic_basis = np.stack(
        [np.linalg.qr(rng.standard_normal((lat, cfg.topic_subspace)))[0].T for _ in range(cfg.num_topics)]
    )
    topic = rng.integers(0, cfg.num_topics, n_art)
    centre = unit(topic_centre[topic] + cfg.article_spread * rng.standard_normal((n_art, lat)) / np.sqrt(lat))
    e = unit(np.einsum("ak,akl->al", rng.standard_normal((n_art, cfg.topic_subspace)), topic_basis[topic]))
    f = np.einsum("ak,akl->al", rng.standard_normal((n_art, cfg.topic_subspace)), topic_basis[topic])
    f = unit(f - (f * e).sum(1, keepdims=True) * e)
    speed = rng.uniform(cfg.speed_min, cfg.speed_max, n_art) * rng.choice([-1.0, 1.0], n_art)
    phase0 = rng.uniform(0, 2 * np.pi, n_art)
    has_boiler = rng.random(n_art) < cfg.boilerplate_rate
    boiler_at = np.where(has_boiler, (rng.random(n_art) * lengths).astype(np.int64), -1)
    boiler_id = rng.integers(0, cfg.boilerplate_templates, n_art)
    templates = unit(rng.standard_normal((cfg.boilerplate_templates, cfg.dim))).astype(np.float32)
    return HiddenWorld(lengths, projection, centre, e, f, speed, phase0, boiler_at, boiler_id, templates)


def _block(cfg: SynthConfig, world: HiddenWorld, first: int, last: int, rng: np.random.Generator):
    """Chunks of articles [first, last): (article ids, positions, vectors, oracle latents)."""
    lengths = world.lengths[first:last]
    art = np.repeat(np.arange(first, last), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(art)) - np.repeat(starts, lengths)
    step = world.speed[art] + cfg.phase_jitter * rng.standard_normal(len(art))
    step[starts] = 0.0
    cum = np.cumsum(step)
    phase = cum - np.repeat(cum[starts], lengths) + world.phase0[art]
    b = np.sqrt(1.0 - cfg.centre_weight**2)

    def latent(ph: np.ndarray) -> np.ndarray:
        theme = np.cos(ph)[:, None] * world.plane_e[art] + np.sin(ph)[:, None] * world.plane_f[art]
        return cfg.centre_weight * world.centre[art] + b * theme

    hidden = latent(phase)
    expected_prev = np.where(pos > 0, np.roll(phase, 1) + world.speed[art], phase)
    oracle = latent(expected_prev).astype(np.float32)
    vectors = hidden.astype(np.float32) @ world.projection
    vectors += (cfg.noise / np.sqrt(cfg.dim)) * rng.standard_normal(vectors.shape, dtype=np.float32)
    boiler_rows = np.flatnonzero(pos == world.boiler_at[art])
    copies = world.templates[world.boiler_id[art[boiler_rows]]]
    copies = copies + (cfg.boilerplate_noise / np.sqrt(cfg.dim)) * rng.standard_normal(copies.shape, dtype=np.float32)
    vectors[boiler_rows] = copies
    if cfg.quote_rate:
        _plant_quotes(vectors, art, cfg, rng)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"synth-{a:07d}" for a in art]
    return ids, pos.astype(np.int32), vectors, oracle


def _plant_quotes(vectors: np.ndarray, art: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> None:
    """Replace chunks with near-copies of chunks of other articles: planted false negatives for mining."""
    pairs = int(cfg.quote_rate * len(art) / 2)
    rows = rng.permutation(len(art))[: 2 * pairs]
    source, quote = rows[:pairs], rows[pairs:]
    other = art[source] != art[quote]
    source, quote = source[other], quote[other]
    noise = (cfg.boilerplate_noise / np.sqrt(cfg.dim)) * rng.standard_normal((len(quote), cfg.dim), dtype=np.float32)
    vectors[quote] = vectors[source] / np.linalg.norm(vectors[source], axis=1, keepdims=True) + noise


def generate(cfg: SynthConfig, out: str | Path, overwrite: bool = False, progress=say) -> BankManifest:
    """Write the synthetic bank (plus its oracle state under `synth/`) to `out`, atomically."""
    world = hidden_world(cfg)
    n_art = len(world.lengths)
    block_of = (np.cumsum(world.lengths) - world.lengths) // BLOCK_ROWS
    block_edges = [0, *(np.flatnonzero(np.diff(block_of)) + 1).tolist(), n_art]
    block_rngs = np.random.SeedSequence([cfg.seed, 1]).spawn(len(block_edges) - 1)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = BankWriter(tmp, dim=cfg.dim, normalization="l2")
        (tmp / ORACLE_DIR).mkdir()
        oracle = np.lib.format.open_memmap(
            tmp / ORACLE_DIR / "oracle_latent.npy", mode="w+", dtype=np.float32, shape=(cfg.num_vectors, cfg.latent_dim)
        )
        for i, (first, last) in enumerate(zip(block_edges[:-1], block_edges[1:])):
            ids, pos, vectors, latents = _block(cfg, world, first, last, np.random.default_rng(block_rngs[i]))
            oracle[writer.num_rows : writer.num_rows + len(pos)] = latents
            writer.add(ids, pos, vectors)
            progress(f"synth: {writer.num_rows:,}/{cfg.num_vectors:,} vectors")
        oracle.flush()
        del oracle
        np.save(tmp / ORACLE_DIR / "projection.npy", world.projection)
        write_json(
            tmp / ORACLE_DIR / "generator.json", {"generator": GENERATOR, "config": cfg.__dict__, "num_articles": n_art}
        )
        return writer.finish(cfg.embedder_id, source=f"{GENERATOR} {json.dumps(cfg.__dict__)}")


class OraclePredictor:
    """Predicts the noise-free next chunk from the generator's hidden state (the evaluation ceiling)."""

    def __init__(self, bank_dir: str | Path) -> None:
        folder = Path(bank_dir) / ORACLE_DIR
        if not (folder / "oracle_latent.npy").is_file():
            raise RayttError(f"{bank_dir}: not a synthetic bank (no {ORACLE_DIR}/oracle_latent.npy), no oracle")
        self.latent = np.load(folder / "oracle_latent.npy", mmap_mode="r")
        self.projection = np.load(folder / "projection.npy")

    def predict(self, target_keys: np.ndarray) -> np.ndarray:
        """Unit query vectors [Q, D] for the given target keys (each target must have position >= 1)."""
        keys = np.asarray(target_keys, dtype=np.int64)
        return unit(np.asarray(self.latent[keys]) @ self.projection).astype(np.float32)


def context_oracle(bank_dir: str | Path, target_keys: np.ndarray, context_lengths: np.ndarray) -> np.ndarray:
    """The oracle with the speed hidden: it estimates each article's rotation from the context's phases.

    It knows the centre, the plane and the (noise-free) phases of the context chunks, and steps the
    last phase by their mean step, as a model must. With one context chunk it turns the positive way.
    Its gap to `OraclePredictor` is what k chunks cannot reveal: a ceiling for trained towers.
    """
    folder = Path(bank_dir) / ORACLE_DIR
    cfg = SynthConfig(**json.loads((folder / "generator.json").read_text())["config"])
    world = hidden_world(cfg)
    latent_next = np.load(folder / "oracle_latent.npy", mmap_mode="r")
    article = np.repeat(np.arange(len(world.lengths)), world.lengths)
    radius = np.sqrt(1.0 - cfg.centre_weight**2)

    def phase_before(rows: np.ndarray) -> np.ndarray:
        """Phase of chunk row-1, read off the oracle latent of `row` (that phase plus the speed)."""
        a = article[rows]
        theme = (np.asarray(latent_next[rows]) - cfg.centre_weight * world.centre[a]) / radius
        return np.arctan2((theme * world.plane_f[a]).sum(1), (theme * world.plane_e[a]).sum(1)) - world.speed[a]

    target = np.asarray(target_keys, dtype=np.int64)
    lengths = np.asarray(context_lengths, dtype=np.int64)
    a = article[target]
    steps = np.zeros(len(target))
    for back in range(1, int(lengths.max(initial=1))):
        real = lengths > back
        later = phase_before(np.where(real, target - back + 1, target))
        earlier = phase_before(np.where(real, target - back, target))
        steps += np.where(real, np.angle(np.exp(1j * (later - earlier))), 0.0)
    speed = np.where(lengths > 1, steps / np.maximum(lengths - 1, 1), np.abs(world.speed[a]))
    phase = phase_before(target) + speed
    theme = np.cos(phase)[:, None] * world.plane_e[a] + np.sin(phase)[:, None] * world.plane_f[a]
    return unit((cfg.centre_weight * world.centre[a] + radius * theme) @ world.projection).astype(np.float32)
