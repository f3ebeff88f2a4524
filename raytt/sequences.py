"""Sequence shards: (context keys -> next key) rows built from a bank, split by article, gated.

Rows reference bank keys, never copies of vectors, so a target can only be a bank vector. Splits
are by article (a stable hash of seed and article id), disjoint by construction and checked again
on load. Building streams over articles in batches, so memory stays bounded by the bank's
metadata, not by the number of windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raytt.bank import Bank, BankManifest, BankMeta
from raytt.config import doc
from raytt.errors import ConfigError, GateError, RayttError, ShardError
from raytt.progress import say
from raytt.storage import atomic_dir, read_json, write_json

FORMAT = "raytt.shards/1"
SPLITS = ("train", "val", "test")
PAD = -1
BATCH_ROWS = 65_536
ALIGN_MIN_COSINE = 0.99
ALIGN_MIN_COVERAGE = 0.99


@dataclass(frozen=True)
class BuildConfig:
    """How shards are cut from a bank."""

    context_len: int = field(default=5, metadata=doc("k: context chunks per row (left-padded with -1)"))
    split: tuple[float, float, float] = field(
        default=(0.8, 0.1, 0.1), metadata=doc("train,val,test shares of articles")
    )
    seed: int = field(default=0, metadata=doc("seed of the article split"))
    min_context: int = field(default=1, metadata=doc("fewest context chunks a row may have"))
    min_train_pairs: int = field(default=1000, metadata=doc("refuse to build with fewer training rows"))
    rows_per_file: int = field(default=262_144, metadata=doc("rows per Parquet shard file"))

    def __post_init__(self) -> None:
        if self.context_len < 1:
            raise ConfigError(f"build config: context_len must be >= 1, got {self.context_len}")
        if not 1 <= self.min_context <= self.context_len:
            raise ConfigError(f"build config: min_context must be in 1..context_len, got {self.min_context}")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(f"build config: split must be three shares >= 0 summing to 1, got {self.split}")
        if self.min_train_pairs < 0 or self.rows_per_file < 1:
            raise ConfigError("build config: min_train_pairs must be >= 0 and rows_per_file >= 1")


@dataclass
class ShardSet:
    """Shards on disk: the manifest plus the Parquet files of each split."""

    path: Path
    manifest: dict

    @property
    def context_len(self) -> int:
        return int(self.manifest["context_len"])

    def files(self, split: str) -> list[Path]:
        return [self.path / f for f in self.manifest["splits"][split]["files"]]

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    def articles(self, split: str) -> list[str]:
        return list(self.manifest["splits"][split]["articles"])

    def read(self, split: str) -> pa.Table:
        """The whole split as one table (for evaluation and inspection; training streams instead)."""
        files = self.files(split)
        try:
            return (
                pa.concat_tables([pq.read_table(f) for f in files])
                if files
                else shard_schema(self.context_len).empty_table()
            )
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{self.path}: split {split!r} is unreadable ({exc})") from exc


def shard_schema(context_len: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("context_keys", pa.list_(pa.int64(), context_len), nullable=False),
            pa.field("context_len", pa.int32(), nullable=False),
            pa.field("target_key", pa.int64(), nullable=False),
            pa.field("article_id", pa.string(), nullable=False),
        ]
    )


def assign_splits(names: list[str] | tuple[str, ...], fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Split index (0=train, 1=val, 2=test) per article: a stable hash, so adding articles moves none."""
    edges = np.cumsum(fractions)[:-1]
    u = (
        np.array(
            [
                int.from_bytes(hashlib.blake2b(f"{seed}\x00{n}".encode(), digest_size=8).digest(), "little")
                for n in names
            ],
            dtype=np.float64,
        )
        / 2.0**64
    )
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def check_disjoint(articles: dict[str, list[str]], where: str) -> None:
    """Refuse article overlap between splits, naming the count and a few ids."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            common = sorted(set(articles.get(a, [])) & set(articles.get(b, [])))
            if common:
                raise GateError(
                    f"{where}: {len(common)} article(s) are in both {a} and {b} "
                    f"(e.g. {common[:5]}): evaluation would be leaked"
                )


def check_enough(train_rows: int, num_vectors: int, minimum: int, where: str) -> None:
    """Refuse to build a training set too small to learn from, before any work is done."""
    if train_rows < minimum:
        raise GateError(
            f"{where}: too little data: {train_rows} training pairs against a bank of {num_vectors} vectors "
            f"(minimum {minimum}). Add articles, lower --context-len/--min-context, or override with "
            f"--min-train-pairs {train_rows}."
        )


@dataclass
class _Plan:
    """Articles (as runs of keys ordered by position) and the split each one goes to."""

    order: np.ndarray
    run_start: np.ndarray
    run_len: np.ndarray
    run_names: list[str]
    run_split: np.ndarray
    rows_per_run: np.ndarray


def _plan(meta: BankMeta, cfg: BuildConfig) -> _Plan:
    order = np.lexsort((meta.positions, meta.article_codes))
    codes = meta.article_codes[order]
    run_start = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    run_len = np.diff(np.r_[run_start, len(order)])
    run_names = [meta.article_names[c] for c in codes[run_start]]
    run_split = assign_splits(run_names, cfg.split, cfg.seed)
    rows_per_run = np.maximum(run_len - cfg.min_context, 0)
    return _Plan(order, run_start, run_len, run_names, run_split, rows_per_run)


def _windows(plan: _Plan, runs: np.ndarray, k: int, min_context: int):
    """Context keys, context lengths, targets and article ids for every row of the given runs."""
    n_rows = plan.rows_per_run[runs]
    run_of_row = np.repeat(runs, n_rows)
    first = np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    j = np.arange(int(n_rows.sum())) - first + min_context
    g = plan.run_start[run_of_row] + j
    ctx_len = np.minimum(j, k)
    idx = g[:, None] - k + np.arange(k)[None, :]
    valid = np.arange(k)[None, :] >= (k - ctx_len)[:, None]
    ctx = np.where(valid, plan.order[np.clip(idx, 0, None)], PAD)
    names = np.asarray(plan.run_names, dtype=object)[run_of_row]
    return ctx.astype(np.int64), ctx_len.astype(np.int32), plan.order[g].astype(np.int64), names


class _ShardWriter:
    """Writes one split's rows into rotating Parquet files under `<root>/<split>/`."""

    def __init__(self, root: Path, split: str, context_len: int, rows_per_file: int) -> None:
        self.root, self.split, self.k, self.rows_per_file = root, split, context_len, rows_per_file
        (root / split).mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0

    def write(self, ctx: np.ndarray, ctx_len: np.ndarray, target: np.ndarray, names) -> None:
        start = 0
        while start < len(target):
            if self._writer is None:
                name = f"{self.split}/part-{len(self.files):05d}.parquet"
                self.files.append(name)
                self._writer = pq.ParquetWriter(self.root / name, shard_schema(self.k), compression="zstd")
            take = min(len(target) - start, self.rows_per_file - self._in_file)
            sl = slice(start, start + take)
            table = pa.Table.from_arrays(
                [
                    pa.FixedSizeListArray.from_arrays(pa.array(ctx[sl].reshape(-1)), self.k),
                    pa.array(ctx_len[sl]),
                    pa.array(target[sl]),
                    pa.array(list(names[sl]), type=pa.string()),
                ],
                schema=shard_schema(self.k),
            )
            self._writer.write_table(table)
            self.rows += take
            self._in_file += take
            start += take
            if self._in_file >= self.rows_per_file:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_file = 0


def _batches_of_runs(rows_per_run: np.ndarray, runs: np.ndarray, batch_rows: int) -> Iterator[np.ndarray]:
    cum = np.cumsum(rows_per_run[runs])
    edges = np.r_[0, np.flatnonzero(np.diff(cum // batch_rows)) + 1, len(runs)]
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            yield runs[a:b]


def _manifest(
    bank: BankManifest,
    bank_path: Path | None,
    cfg: BuildConfig,
    articles: dict,
    writers: dict,
    extra: dict | None = None,
) -> dict:
    return {
        "format": FORMAT,
        "bank": {
            "path": str(bank_path.resolve()) if bank_path else "",
            "sha256": bank.sha256,
            "embedder_id": bank.embedder_id,
            "num_vectors": bank.num_vectors,
            "dim": bank.dim,
        },
        "context_len": cfg.context_len,
        "min_context": cfg.min_context,
        "seed": cfg.seed,
        "split_fractions": list(cfg.split),
        "splits": {s: {"rows": writers[s].rows, "files": writers[s].files, "articles": articles[s]} for s in SPLITS},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def build_shards(
    meta: BankMeta, out: str | Path, cfg: BuildConfig, overwrite: bool = False, progress: Callable[[str], None] = say
) -> ShardSet:
    """Cut (context -> next chunk) rows from a bank into split shards, after every gate has passed."""
    where = f"build {out}"
    plan = _plan(meta, cfg)
    articles = {s: sorted(plan.run_names[i] for i in np.flatnonzero(plan.run_split == n)) for n, s in enumerate(SPLITS)}
    rows = {s: int(plan.rows_per_run[plan.run_split == n].sum()) for n, s in enumerate(SPLITS)}
    check_disjoint(articles, where)
    for n, s in enumerate(SPLITS):
        if cfg.split[n] > 0 and rows[s] == 0:
            raise GateError(
                f"{where}: split {s!r} gets no rows from {len(plan.run_names)} articles; "
                "use more articles or other --split shares"
            )
    check_enough(rows["train"], meta.manifest.num_vectors, cfg.min_train_pairs, where)
    progress(f"build: {len(plan.run_names):,} articles -> " + ", ".join(f"{s} {rows[s]:,} rows" for s in SPLITS))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writers = {s: _ShardWriter(tmp, s, cfg.context_len, cfg.rows_per_file) for s in SPLITS}
        for n, s in enumerate(SPLITS):
            runs = np.flatnonzero((plan.run_split == n) & (plan.rows_per_run > 0))
            for batch in _batches_of_runs(plan.rows_per_run, runs, BATCH_ROWS):
                writers[s].write(*_windows(plan, batch, cfg.context_len, cfg.min_context))
            writers[s].close()
        manifest = _manifest(meta.manifest, meta.path, cfg, articles, writers)
        check_split_rows(ShardSet(tmp, manifest), where)
        write_json(tmp / "manifest.json", manifest)
    return ShardSet(Path(out), manifest)


def check_split_rows(shards: ShardSet, where: str) -> None:
    """The leak gate on the data itself: read every split's article ids (one column) from the rows.

    Refuses an article with rows in two splits, rows of an article the manifest does not list under
    that split, and split files holding another number of rows than the manifest says: the manifest
    alone cannot be trusted (rows appended to a file, files swapped between splits).
    """
    found = {split: _row_articles(shards, split) for split in SPLITS}
    check_disjoint({s: sorted(ids) for s, (ids, _) in found.items()}, f"{where} (article ids read from the rows)")
    for split, (ids, rows) in found.items():
        stray = sorted(ids - set(shards.articles(split)))
        if stray:
            raise GateError(
                f"{where}: split {split!r} holds rows of {len(stray)} article(s) its manifest does not "
                f"list (e.g. {stray[:5]}): the rows and the manifest disagree; rebuild the shards"
            )
        if rows != shards.rows(split):
            raise GateError(
                f"{where}: split {split!r} files hold {rows:,} rows, the manifest says "
                f"{shards.rows(split):,}: the files were changed after building; rebuild the shards"
            )


def _row_articles(shards: ShardSet, split: str) -> tuple[set[str], int]:
    """The distinct article ids in a split's rows, and its row count."""
    ids: set[str] = set()
    rows = 0
    for file in shards.files(split):
        try:
            column = pq.read_table(file, columns=["article_id"]).column("article_id")
        except (pa.ArrowException, OSError) as exc:
            raise ShardError(f"{file}: cannot read its article_id column ({exc})") from exc
        rows += len(column)
        ids.update(pc.unique(column).to_pylist())
    return ids, rows


def open_shards(path: str | Path, bank: BankManifest | None = None, check_rows: bool = True) -> ShardSet:
    """Open shards, re-checking split disjointness (in the manifest and in the rows) and the bank they came from."""
    path = Path(path)
    manifest = read_json(path / "manifest.json", "shards", ShardError)
    where = str(path / "manifest.json")
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{where}: format {manifest.get('format')!r} is not {FORMAT!r}")
    for key in ("bank", "context_len", "splits"):
        if key not in manifest:
            raise ShardError(f"{where}: manifest lacks {key!r}")
    check_disjoint({s: manifest["splits"].get(s, {}).get("articles", []) for s in SPLITS}, where)
    shards = ShardSet(path, manifest)
    if check_rows:
        check_split_rows(shards, where)
    if bank is not None:
        check_provenance(manifest, bank, where)
    return shards


def check_provenance(manifest: dict, bank: BankManifest, where: str) -> None:
    """Refuse shards built against another bank: their keys would point at the wrong vectors."""
    built = manifest["bank"]
    if built["embedder_id"] != bank.embedder_id:
        raise ShardError(
            f"{where}: shards were built with embedder {built['embedder_id']!r}, this bank is {bank.embedder_id!r}"
        )
    if built["sha256"] != bank.sha256:
        raise ShardError(
            f"{where}: shards were built against bank sha256 {built['sha256'][:12]}…, this bank "
            f"is {bank.sha256[:12]}…: rebuild the shards from this bank"
        )


def bank_of(shards: ShardSet) -> Path:
    """The bank directory recorded in the shards' manifest."""
    return Path(shards.manifest["bank"]["path"])


@dataclass
class Alignment:
    """How loose vectors matched bank rows: nearest key and its cosine for each vector."""

    keys: np.ndarray
    cosines: np.ndarray

    @property
    def coverage(self) -> float:
        return float(np.mean(self.cosines >= ALIGN_MIN_COSINE))

    @property
    def mean_cosine(self) -> float:
        return float(np.mean(self.cosines))


def align_to_bank(vectors: np.ndarray, bank: Bank, batch: int = 8192) -> Alignment:
    """Nearest bank row (exact inner product, FAISS) of each normalised vector."""
    import faiss

    index = faiss.IndexFlatIP(bank.dim)
    index.add(np.ascontiguousarray(bank.vectors))
    keys = np.empty(len(vectors), np.int64)
    cos = np.empty(len(vectors), np.float32)
    for s in range(0, len(vectors), batch):
        q = np.ascontiguousarray(vectors[s : s + batch], dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d, i = index.search(q, 1)
        keys[s : s + batch], cos[s : s + batch] = i[:, 0], d[:, 0]
    return Alignment(keys, cos)


def import_npz(
    npz_path: str | Path,
    bank: Bank,
    out: str | Path,
    cfg: BuildConfig,
    overwrite: bool = False,
    progress: Callable[[str], None] = say,
) -> ShardSet:
    """Turn loose (context_sequences, target_vectors) into shards by aligning every vector to the bank.

    Refuses (writing nothing) when the mean alignment cosine or the coverage is below 0.99: such
    vectors came from another encoder or another bank, and training on them would be useless.
    """
    npz_path = Path(npz_path)
    ctx_vecs, targets, article_ids = _read_npz(npz_path, bank.dim)
    k = ctx_vecs.shape[1]
    ctx_keys, ctx_len, target_keys, merged = _aligned(npz_path, ctx_vecs, targets, bank, progress)
    if article_ids is None:
        article_ids = bank.article_of(target_keys)
    cfg = BuildConfig(
        context_len=k,
        split=cfg.split,
        seed=cfg.seed,
        min_context=1,
        min_train_pairs=cfg.min_train_pairs,
        rows_per_file=cfg.rows_per_file,
    )
    names = sorted(set(article_ids.tolist()))
    split_of = dict(zip(names, assign_splits(names, cfg.split, cfg.seed)))
    row_split = np.array([split_of[a] for a in article_ids], dtype=np.int8)
    articles = {s: sorted(a for a in names if split_of[a] == i) for i, s in enumerate(SPLITS)}
    check_disjoint(articles, str(npz_path))
    check_enough(int((row_split == 0).sum()), bank.num_vectors, cfg.min_train_pairs, str(npz_path))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writers = {s: _ShardWriter(tmp, s, k, cfg.rows_per_file) for s in SPLITS}
        for i, s in enumerate(SPLITS):
            rows = np.flatnonzero(row_split == i)
            writers[s].write(ctx_keys[rows], ctx_len[rows], target_keys[rows], article_ids[rows])
            writers[s].close()
        manifest = _manifest(
            bank.manifest,
            bank.path,
            cfg,
            articles,
            writers,
            extra={
                "imported_from": {
                    "file": str(npz_path.resolve()),
                    "coverage": merged.coverage,
                    "mean_cosine": merged.mean_cosine,
                }
            },
        )
        check_split_rows(ShardSet(tmp, manifest), str(npz_path))
        write_json(tmp / "manifest.json", manifest)
    return ShardSet(Path(out), manifest)


def _aligned(npz_path: Path, ctx_vecs: np.ndarray, targets: np.ndarray, bank: Bank, progress: Callable[[str], None]):
    """Loose vectors -> bank keys: (left-padded context keys, lengths, target keys, the alignment), or refuse.

    Refuses when the mean alignment cosine or the coverage is below 0.99 (another encoder or bank).
    """
    n, k = ctx_vecs.shape[0], ctx_vecs.shape[1]
    present = np.linalg.norm(ctx_vecs, axis=2) > 0
    target_al = align_to_bank(targets, bank)
    ctx_al = align_to_bank(ctx_vecs[present], bank)
    cosines = np.concatenate([target_al.cosines, ctx_al.cosines])
    merged = Alignment(np.concatenate([target_al.keys, ctx_al.keys]), cosines)
    progress(
        f"import: {npz_path.name}: {len(cosines):,} vectors aligned to bank rows: coverage "
        f"{merged.coverage:.2%} (cos >= {ALIGN_MIN_COSINE}), mean alignment cosine {merged.mean_cosine:.4f}"
    )
    if merged.mean_cosine < ALIGN_MIN_COSINE or merged.coverage < ALIGN_MIN_COVERAGE:
        raise GateError(
            f"{npz_path}: vectors do not match bank {bank.path}: mean alignment cosine {merged.mean_cosine:.4f} "
            f"(need >= {ALIGN_MIN_COSINE}), coverage {merged.coverage:.2%} (need >= {ALIGN_MIN_COVERAGE:.0%}). "
            "They were probably encoded by another model or for another bank; re-encode them with the bank's "
            f"embedder ({bank.manifest.embedder_id!r}) or build shards from the bank with `raytt build`."
        )
    ctx_keys = np.full((n, k), PAD, np.int64)
    ctx_keys[present] = ctx_al.keys
    return _left_pad(ctx_keys, present), present.sum(1).astype(np.int32), target_al.keys, merged


def _left_pad(keys: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Move each row's present keys to the right end, keeping their order (padding on the left)."""
    order = np.argsort(present, axis=1, kind="stable")
    return np.take_along_axis(keys, order, axis=1)


def _read_npz(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise GateError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GateError(f"{path}: not a readable .npz ({exc})") from exc
    for name in ("context_sequences", "target_vectors"):
        if name not in data.files:
            raise GateError(f"{path}: missing array {name!r} (has {sorted(data.files)})")
    ctx, tgt = data["context_sequences"], data["target_vectors"]
    if ctx.ndim != 3 or tgt.ndim != 2 or ctx.shape[0] != tgt.shape[0]:
        raise GateError(
            f"{path}: context_sequences must be [N, k, D] and target_vectors [N, D]; got {ctx.shape} and {tgt.shape}"
        )
    if ctx.shape[2] != dim or tgt.shape[1] != dim:
        raise GateError(f"{path}: vectors have dim {tgt.shape[1]}, the bank has dim {dim}")
    if not (np.isfinite(ctx).all() and np.isfinite(tgt).all()):
        raise GateError(f"{path}: NaN or Inf in context_sequences or target_vectors")
    ids = None
    if "article_ids" in data.files:
        ids = data["article_ids"].astype(str).astype(object)
        if ids.shape != (tgt.shape[0],):
            raise GateError(f"{path}: article_ids must have shape [{tgt.shape[0]}], got {ids.shape}")
    return ctx.astype(np.float32), tgt.astype(np.float32), ids


def is_shards(path: str | Path) -> bool:
    """Whether `path` holds shards (as opposed to a bank)."""
    try:
        return read_json(Path(path) / "manifest.json", "shards").get("format") == FORMAT
    except RayttError:
        return False


def sample_windows(meta: BankMeta | Bank, context_len: int, n: int, seed: int = 0, min_context: int = 1):
    """`n` random (context keys, context lengths, target keys) windows over all articles of a bank."""
    cfg = BuildConfig(context_len=context_len, min_context=min_context)
    plan = _plan(meta, cfg)
    runs = np.flatnonzero(plan.rows_per_run > 0)
    ctx, ctx_len, target, _ = _windows(plan, runs, context_len, min_context)
    pick = np.sort(np.random.default_rng(seed).choice(len(target), min(n, len(target)), replace=False))
    return ctx[pick], ctx_len[pick], target[pick]
