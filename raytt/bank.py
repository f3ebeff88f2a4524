"""The bank: every chunk vector of a corpus, keyed 0..N-1, with its article and position.

On disk a bank is `vectors/part-*.parquet` (rows in key order) plus `manifest.json` carrying the
sha256 of the vector bytes. Everything that touches a bank goes through `BankWriter` (validates as
it streams) or `scan_bank`/`load_bank` (validates as it reads), so a bank that breaks the contract
is refused with the file and the problem named.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raytt.errors import BankError
from raytt.storage import atomic_dir, read_json, write_json

FORMAT = "raytt.bank/1"
NORM_TOLERANCE = 1e-3
READ_BATCH_ROWS = 16_384


@dataclass(frozen=True)
class BankManifest:
    """What `manifest.json` records about a bank; `sha256` is over float32 vectors in key order."""

    embedder_id: str
    dim: int
    num_vectors: int
    sha256: str
    files: tuple[str, ...]
    normalization: str = "l2"
    metric: str = "ip"
    source: str = ""
    created_at: str = ""
    format: str = FORMAT

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"files": list(self.files)}

    @classmethod
    def from_json(cls, data: dict, where: str) -> BankManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise BankError(f"{where}: manifest lacks field(s) {missing}")
        kept = {k: v for k, v in data.items() if k in names}
        kept["files"] = tuple(kept["files"])
        manifest = cls(**kept)
        if manifest.format != FORMAT:
            raise BankError(f"{where}: format {manifest.format!r} is not {FORMAT!r}")
        if manifest.normalization not in ("l2", "none"):
            raise BankError(f"{where}: normalization must be 'l2' or 'none', got {manifest.normalization!r}")
        if manifest.metric != "ip":
            raise BankError(f"{where}: metric must be 'ip', got {manifest.metric!r}")
        return manifest


@dataclass
class Bank:
    """A bank in memory: one contiguous float32 [N, D] array whose row i is key i."""

    vectors: np.ndarray
    article_codes: np.ndarray
    article_names: tuple[str, ...]
    positions: np.ndarray
    manifest: BankManifest
    path: Path | None = None

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def article_of(self, keys: np.ndarray) -> np.ndarray:
        """Article ids (strings) of the given keys."""
        names = np.asarray(self.article_names, dtype=object)
        return names[self.article_codes[np.asarray(keys)]]


@dataclass
class BankMeta:
    """Everything about a bank except its vectors: what building shards needs (kept small)."""

    manifest: BankManifest
    article_codes: np.ndarray
    article_names: tuple[str, ...]
    positions: np.ndarray
    path: Path


def bank_schema(dim: int, with_text: bool) -> pa.Schema:
    fields = [
        pa.field("key", pa.int64(), nullable=False),
        pa.field("article_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ]
    if with_text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields)


class _ArticleCoder:
    """Maps article id strings to dense int codes, tracking (article, position) uniqueness."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.code_chunks: list[np.ndarray] = []
        self.position_chunks: list[np.ndarray] = []

    def add(self, article_ids: pa.Array | list[str], positions: np.ndarray) -> np.ndarray:
        if not isinstance(article_ids, pa.Array):
            article_ids = pa.array(article_ids, type=pa.string())
        encoded = pc.dictionary_encode(article_ids)
        local = [self.codes.setdefault(s, len(self.codes)) for s in encoded.dictionary.to_pylist()]
        codes = np.asarray(local, dtype=np.int32)[encoded.indices.to_numpy(zero_copy_only=False)]
        self.code_chunks.append(codes)
        self.position_chunks.append(np.asarray(positions, dtype=np.int32))
        return codes

    def finish(self, where: str) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        codes = np.concatenate(self.code_chunks) if self.code_chunks else np.zeros(0, np.int32)
        positions = np.concatenate(self.position_chunks) if self.position_chunks else np.zeros(0, np.int32)
        names = tuple(self.codes)
        pair = codes.astype(np.int64) << 32 | (positions.astype(np.int64) & 0xFFFFFFFF)
        order = np.argsort(pair, kind="stable")
        dup = np.flatnonzero(pair[order][1:] == pair[order][:-1])
        if dup.size:
            first, second = order[dup[0]], order[dup[0] + 1]
            raise BankError(
                f"{where}: duplicate (article, position) ({names[codes[first]]!r}, {positions[first]}) "
                f"at keys {first} and {second}; {dup.size} duplicate pair(s) in all"
            )
        return codes, names, positions


def _check_vectors(vectors: np.ndarray, first_key: int, normalization: str, where: str) -> None:
    """NaN/Inf and (for l2 banks) unit norm, naming the first offending key."""
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise BankError(f"{where}: vector at key {first_key + bad} has NaN or Inf values")
    if normalization == "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        off = np.abs(norms - 1.0) > NORM_TOLERANCE
        if off.any():
            bad = int(np.flatnonzero(off)[0])
            raise BankError(
                f"{where}: vector at key {first_key + bad} has norm {norms[bad]:.6f}; normalization 'l2' "
                f"needs |norm - 1| <= {NORM_TOLERANCE} ({int(off.sum())} such vectors in this block; "
                "pass --normalize to L2-normalise on write)"
            )


class BankWriter:
    """Streams blocks of (article_ids, positions, vectors[, texts]) into Parquet shards, validating each.

    Keys are assigned densely in arrival order. Use it inside `atomic_dir` (as `write_bank` does) so
    that a refused block leaves nothing behind.
    """

    def __init__(
        self,
        out_dir: Path,
        dim: int | None = None,
        normalization: str = "l2",
        normalize: bool = False,
        with_text: bool = False,
        rows_per_file: int = 262_144,
    ) -> None:
        if normalization not in ("l2", "none"):
            raise BankError(f"normalization must be 'l2' or 'none', got {normalization!r}")
        self.out_dir = Path(out_dir)
        (self.out_dir / "vectors").mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.normalization = normalization
        self.normalize = normalize
        self.with_text = with_text
        self.rows_per_file = rows_per_file
        self.num_rows = 0
        self.files: list[str] = []
        self._hash = hashlib.sha256()
        self._articles = _ArticleCoder()
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def add(
        self,
        article_ids: list[str] | np.ndarray,
        positions: np.ndarray,
        vectors: np.ndarray,
        texts: list[str] | None = None,
    ) -> None:
        where = f"bank {self.out_dir.name} (block starting at key {self.num_rows})"
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise BankError(f"{where}: vectors must be 2-D [rows, dim], got shape {vectors.shape}")
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        if vectors.shape[1] != self.dim or self.dim == 0:
            raise BankError(f"{where}: vectors have dim {vectors.shape[1]}, the bank has dim {self.dim}")
        n = vectors.shape[0]
        positions = np.asarray(positions)
        if len(article_ids) != n or positions.shape != (n,) or (texts is not None and len(texts) != n):
            raise BankError(f"{where}: article_ids, positions, texts and vectors differ in length")
        if (texts is not None) != self.with_text:
            raise BankError(f"{where}: texts given for some blocks but not others")
        if n and (positions.min() < 0 or positions.max() > np.iinfo(np.int32).max):
            raise BankError(f"{where}: positions must be in 0..2^31-1")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            if (norms == 0).any():
                bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
                raise BankError(f"{where}: vector at key {self.num_rows + bad} is all zeros, cannot normalise")
            vectors = vectors / norms
        _check_vectors(vectors, self.num_rows, self.normalization, where)
        self._articles.add(article_ids, positions)
        self._hash.update(vectors.astype("<f4", copy=False).data)
        start = 0
        while start < n:
            take = min(n - start, self.rows_per_file - self._rows_in_file)
            self._write(
                article_ids[start : start + take],
                positions[start : start + take],
                vectors[start : start + take],
                None if texts is None else texts[start : start + take],
            )
            start += take

    def _write(self, article_ids, positions, vectors, texts) -> None:
        if self._writer is None:
            name = f"vectors/part-{len(self.files):05d}.parquet"
            self.files.append(name)
            schema = bank_schema(self.dim, self.with_text)
            codecs = {f.name: "none" if f.name == "vector" else "zstd" for f in schema}
            self._writer = pq.ParquetWriter(self.out_dir / name, schema, compression=codecs)
        n = vectors.shape[0]
        columns = [
            pa.array(np.arange(self.num_rows, self.num_rows + n, dtype=np.int64)),
            pa.array(list(article_ids), type=pa.string()),
            pa.array(np.asarray(positions, dtype=np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
        ]
        if texts is not None:
            columns.append(pa.array(list(texts), type=pa.string()))
        self._writer.write_table(
            pa.Table.from_arrays(columns, schema=bank_schema(self.dim, self.with_text)), row_group_size=READ_BATCH_ROWS
        )
        self.num_rows += n
        self._rows_in_file += n
        if self._rows_in_file >= self.rows_per_file:
            self._writer.close()
            self._writer = None
            self._rows_in_file = 0

    def finish(self, embedder_id: str, source: str = "") -> BankManifest:
        """Close the last shard, check bank-wide invariants and write `manifest.json`."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        where = f"bank {self.out_dir.name}"
        if self.num_rows == 0:
            raise BankError(f"{where}: empty bank (no vectors were written)")
        if not embedder_id:
            raise BankError(f"{where}: embedder_id is required (it is what shards and queries are checked against)")
        self._articles.finish(where)
        manifest = BankManifest(
            embedder_id=embedder_id,
            dim=int(self.dim),
            num_vectors=self.num_rows,
            sha256=self._hash.hexdigest(),
            files=tuple(self.files),
            normalization=self.normalization,
            source=source,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_json(self.out_dir / "manifest.json", manifest.to_json())
        return manifest


def write_bank(
    dest: str | Path,
    vectors: np.ndarray,
    article_ids: list[str],
    positions: np.ndarray,
    embedder_id: str,
    texts: list[str] | None = None,
    source: str = "",
    normalization: str = "l2",
    normalize: bool = False,
    overwrite: bool = False,
) -> BankManifest:
    """Write in-memory arrays as a bank directory, atomically."""
    return write_bank_blocks(
        dest,
        [(article_ids, positions, vectors, texts)],
        embedder_id,
        source=source,
        normalization=normalization,
        normalize=normalize,
        overwrite=overwrite,
        with_text=texts is not None,
    )


def write_bank_blocks(
    dest: str | Path,
    blocks: Iterable[tuple],
    embedder_id: str,
    source: str = "",
    normalization: str = "l2",
    normalize: bool = False,
    overwrite: bool = False,
    with_text: bool = False,
    dim: int | None = None,
) -> BankManifest:
    """Stream blocks of (article_ids, positions, vectors, texts|None) into a bank directory, atomically."""
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        writer = BankWriter(tmp, dim=dim, normalization=normalization, normalize=normalize, with_text=with_text)
        for article_ids, positions, vectors, texts in blocks:
            writer.add(article_ids, positions, vectors, texts)
        return writer.finish(embedder_id, source)


def read_manifest(path: str | Path) -> BankManifest:
    """The manifest of the bank at `path`, checked for required fields."""
    path = Path(path)
    where = str(path / "manifest.json")
    return BankManifest.from_json(read_json(path / "manifest.json", "bank", BankError), where)


@dataclass
class _Scan:
    manifest: BankManifest
    article_codes: np.ndarray
    article_names: tuple[str, ...]
    positions: np.ndarray
    vectors: np.ndarray | None = field(default=None)


def _scan(path: Path, load_vectors: bool, verify: bool) -> _Scan:
    """Read every shard once, checking schema, keys, vectors and the sha256 as it goes."""
    manifest = read_manifest(path)
    n, dim = manifest.num_vectors, manifest.dim
    if n <= 0:
        raise BankError(f"{path}/manifest.json: empty bank (num_vectors = {n})")
    vectors = np.empty((n, dim), dtype=np.float32) if load_vectors else None
    hasher = hashlib.sha256()
    articles = _ArticleCoder()
    expected = 0
    columns = ["key", "article_id", "position"] + (["vector"] if (verify or load_vectors) else [])
    for name in manifest.files:
        file = path / name
        where = str(file)
        try:
            pfile = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
            _check_schema(pfile.schema_arrow, dim, where)
            batches = pfile.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns, use_threads=False)
            for batch in batches:
                keys = batch.column("key").to_numpy()
                _check_keys(keys, expected, n, where)
                rows = len(keys)
                articles.add(batch.column("article_id"), batch.column("position").to_numpy())
                if "vector" in columns:
                    block = _vectors_of(batch.column("vector"), dim, where)
                    if verify:
                        _check_vectors(block, expected, manifest.normalization, where)
                        hasher.update(block.data)
                    if vectors is not None:
                        vectors[expected : expected + rows] = block
                expected += rows
        except FileNotFoundError as exc:
            raise BankError(f"{where}: shard listed in the manifest is missing") from exc
        except (pa.ArrowException, OSError) as exc:
            raise BankError(f"{where}: unreadable or corrupt Parquet ({exc})") from exc
    if expected != n:
        raise BankError(f"{path}: manifest says {n} vectors, the shards hold {expected}")
    if verify and hasher.hexdigest() != manifest.sha256:
        raise BankError(
            f"{path}: sha256 of the vectors ({hasher.hexdigest()[:12]}…) does not match manifest.json "
            f"({manifest.sha256[:12]}…): the vectors changed after the bank was written"
        )
    codes, names, positions = articles.finish(str(path))
    return _Scan(manifest, codes, names, positions, vectors)


def _check_schema(schema: pa.Schema, dim: int, where: str) -> None:
    for name in ("key", "article_id", "position", "vector"):
        if schema.get_field_index(name) < 0:
            raise BankError(f"{where}: missing column {name!r}")
    vtype = schema.field("vector").type
    if pa.types.is_fixed_size_list(vtype) and vtype.list_size != dim:
        raise BankError(f"{where}: vectors have dim {vtype.list_size}, manifest.json says {dim}")
    if not (pa.types.is_fixed_size_list(vtype) or pa.types.is_list(vtype) or pa.types.is_large_list(vtype)):
        raise BankError(f"{where}: column 'vector' must be a list of float32, got {vtype}")


def _check_keys(keys: np.ndarray, expected: int, n: int, where: str) -> None:
    want = np.arange(expected, expected + len(keys), dtype=np.int64)
    if len(keys) and not np.array_equal(keys, want):
        i = int(np.flatnonzero(keys != want)[0])
        got, exp = int(keys[i]), int(want[i])
        problem = (
            f"duplicate or out-of-order key {got} (expected {exp})"
            if got < exp
            else f"keys are not dense: {exp}..{got - 1} missing"
        )
        raise BankError(f"{where}: {problem}; keys must be 0..N-1 in order")
    if expected + len(keys) > n:
        raise BankError(f"{where}: more rows than the manifest's num_vectors ({n})")


def _vectors_of(column: pa.Array, dim: int, where: str) -> np.ndarray:
    if not pa.types.is_fixed_size_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != dim or lengths.max() != dim):
            bad = int(np.flatnonzero(lengths != dim)[0])
            raise BankError(f"{where}: mixed dims: row {bad} of a batch has {lengths[bad]} values, expected {dim}")
    if column.null_count:
        raise BankError(f"{where}: null vectors")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)


def scan_bank(path: str | Path, verify: bool = True) -> BankMeta:
    """Read a bank's keys, articles and positions without keeping its vectors (streamed, small memory).

    With `verify`, the vectors are streamed through the NaN/norm checks and the sha256 as well.
    """
    path = Path(path)
    scan = _scan(path, load_vectors=False, verify=verify)
    return BankMeta(scan.manifest, scan.article_codes, scan.article_names, scan.positions, path)


def load_bank(path: str | Path, verify: bool = True) -> Bank:
    """Load a bank into one contiguous float32 array (row = key), validating everything on the way."""
    path = Path(path)
    scan = _scan(path, load_vectors=True, verify=verify)
    return Bank(scan.vectors, scan.article_codes, scan.article_names, scan.positions, scan.manifest, path)


def share_bank(bank: Bank):
    """Put the bank in the Ray object store once; `ray.get` on the ref gives zero-copy, read-only arrays.

    Every worker and actor on a node then maps the same shared-memory copy instead of its own.
    """
    import ray

    return ray.put(bank)
