"""Bring your own bank: vectors with article ids and positions from .npy, .npz, Parquet or Hugging Face, as a bank.

A source is read in two passes. The article and position columns come first (small): they fix the bank's
row order, (article in order of first appearance, position), and duplicates are refused before any vector is
read. The vectors then stream in batches, in that order, through `BankWriter`, so every bank gate applies
and memory stays at a few batches whatever the size of the source. Errors name the source and its row.
"""

from __future__ import annotations

import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from raytt.bank import BankManifest, BankWriter
from raytt.config import doc
from raytt.errors import BankError, ConfigError, RayttError
from raytt.progress import say
from raytt.storage import atomic_dir

SIDECAR_SUFFIXES = (".parquet", ".csv", ".jsonl")


@dataclass
class ImportConfig:
    """The `raytt import-bank` config: which model made the vectors, and where a source keeps its columns."""

    embedder_id: str = field(
        default="", metadata=doc("the model that made the vectors (required): shards and queries are checked by it")
    )
    normalize: bool = field(default=False, metadata=doc("L2-normalise every vector on write instead of refusing"))
    vector_column: str = field(default="vector", metadata=doc("Parquet/hf column of vectors (list of floats)"))
    article_column: str = field(default="article_id", metadata=doc("Parquet/hf/sidecar column of article ids"))
    position_column: str = field(default="position", metadata=doc("Parquet/hf/sidecar column of chunk positions"))
    text_column: str = field(default="text", metadata=doc("Parquet/hf/sidecar column of chunk texts (optional)"))
    npz_vectors: str = field(default="vectors", metadata=doc(".npz array of vectors [N, D]"))
    npz_article: str = field(default="article", metadata=doc(".npz array of article ids [N]"))
    npz_position: str = field(default="pos", metadata=doc(".npz array of positions [N]"))
    npz_text: str = field(default="text", metadata=doc(".npz array of chunk texts [N] (optional)"))
    sidecar: str = field(
        default="",
        metadata=doc("for a .npy: table of article id, position[, text] (.parquet/.csv/.jsonl; default SRC's name)"),
    )
    split: str = field(default="train", metadata=doc("hf: split read when SRC names none"))
    batch_rows: int = field(default=65_536, metadata=doc("vectors per batch (memory is a few batches)"))

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")


@dataclass
class Keys:
    """The first pass over a source, in source order: article ids (strings), positions, texts or None."""

    article_ids: pa.Array
    positions: np.ndarray
    texts: pa.Array | None


class RowFile:
    """Rows of a raw C-order array in a file (a .npy's data, or a spill), read with pread.

    Reads go through the page cache, not a mapping, so rows already read never count toward this process's RSS.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, int], dtype: np.dtype, where: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.offset, self.shape, self.dtype, self.where = offset, shape, dtype, where
        self.row_bytes = shape[1] * dtype.itemsize

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order, one read per run of consecutive rows."""
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            self._read(int(rows[start]), out[start:stop])
        return out

    def _read(self, row: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        done, at = 0, self.offset + row * self.row_bytes
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], at + done)
            if got == 0:
                raise BankError(f"{self.where}: truncated: the file ends before row {row + len(out) - 1}")
            done += got

    def close(self) -> None:
        os.close(self.fd)


class Source:
    """A source opened for import: `key_tables` yields tables of article/position[/text] in source order;
    `row_file` gives random access to the vectors, or None when they can only be streamed (`vector_batches`)."""

    fmt = ""
    where = ""
    describe = ""

    @property
    def keys_where(self) -> str:
        """The file that refusals of article ids and positions name."""
        return self.where

    def key_tables(self, batch_rows: int) -> Iterator[pa.Table]:
        raise NotImplementedError

    def vector_batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def row_file(self) -> RowFile | None:
        return None

    def close(self) -> None:
        """Release open files."""


def read_npy_header(fh, where: str) -> tuple[tuple[int, int], np.dtype, int]:
    """Shape, dtype and data offset of a .npy stream of float vectors [N, D] in C order (or refuse)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f".npy format version {version} is not supported")
        shape, fortran, dtype = reader(fh)
    except ValueError as exc:
        raise BankError(f"{where}: not a readable .npy ({exc})") from exc
    if len(shape) != 2 or dtype.kind != "f" or shape[1] == 0:
        raise BankError(f"{where}: vectors must be a 2-D float array [rows, dim], got {dtype} of shape {shape}")
    if fortran:
        raise BankError(f"{where}: vectors are stored in Fortran order; save them in C order (np.ascontiguousarray)")
    return shape, dtype, fh.tell()


def key_columns(names: list[str], cfg: ImportConfig, where: str, need_vector: bool) -> dict[str, str]:
    """Bank role -> source column for article, position (and text when present), refusing a missing one by flag."""
    wanted = [
        ("article", cfg.article_column, "--article-column"),
        ("position", cfg.position_column, "--position-column"),
    ]
    if need_vector:
        wanted.append(("vector", cfg.vector_column, "--vector-column"))
    for _, name, flag in wanted:
        if name not in names:
            raise BankError(f"{where}: no column {name!r} (set {flag}); its columns are {names}")
    roles = {role: name for role, name, _ in wanted if role != "vector"}
    return roles | ({"text": cfg.text_column} if cfg.text_column in names else {})


def standard(table: pa.Table | pa.RecordBatch, columns: dict[str, str]) -> pa.Table:
    """The key columns of `table` under their bank roles (article, position[, text])."""
    return pa.table({role: table.column(name) for role, name in columns.items()})


def vectors_of(column: pa.Array | pa.ChunkedArray, first_row: int, where: str) -> np.ndarray:
    """A list-of-floats column as a [rows, dim] array, refusing nulls and mixed lengths by source row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not pa.types.is_floating(kind.value_type):
        raise BankError(f"{where}: the vector column must be a list of floats (one vector per row), got {kind}")
    if column.null_count:
        bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise BankError(f"{where}: source row {first_row + bad}: null vector")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise BankError(
            f"{where}: source row {first_row + bad}: vector has {lengths[bad]} values, "
            f"source row {first_row} has {lengths[0]}"
        )
    dim = int(lengths[0]) if len(lengths) else 0
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim)


class NpySource(Source):
    """A .npy of vectors [N, D], with a sidecar table of article id, position[, text] row for row."""

    fmt = "npy"

    def __init__(self, path: Path, cfg: ImportConfig) -> None:
        self.path, self.cfg, self.where = path, cfg, str(path)
        with open(path, "rb") as fh:
            self.shape, self.dtype, self.offset = read_npy_header(fh, self.where)
        self.sidecar = find_sidecar(path, cfg.sidecar)
        self.describe = f"npy:{path.resolve()} + {self.sidecar.resolve()}"

    def key_tables(self, batch_rows: int) -> Iterator[pa.Table]:
        table = read_sidecar(self.sidecar, self.cfg)
        if table.num_rows != self.shape[0]:
            raise BankError(
                f"{self.path} has {self.shape[0]:,} rows but its sidecar {self.sidecar} has {table.num_rows:,}: "
                "they must match row for row"
            )
        yield standard(table, key_columns(table.column_names, self.cfg, str(self.sidecar), need_vector=False))

    @property
    def keys_where(self) -> str:
        return str(self.sidecar)

    def row_file(self) -> RowFile:
        return RowFile(self.path, self.offset, self.shape, self.dtype, self.where)


def find_sidecar(path: Path, given: str) -> Path:
    """`--sidecar`, else SRC with its suffix replaced by .parquet, .csv or .jsonl (the first that exists)."""
    if given:
        if not Path(given).is_file():
            raise BankError(f"{given}: no such sidecar file (--sidecar)")
        return Path(given)
    for suffix in SIDECAR_SUFFIXES:
        if path.with_suffix(suffix).is_file():
            return path.with_suffix(suffix)
    tried = ", ".join(path.with_suffix(s).name for s in SIDECAR_SUFFIXES)
    raise BankError(
        f"{path}: a .npy needs a sidecar table of article id, position[, text] row for row; "
        f"none of {tried} exists beside it (pass --sidecar FILE)"
    )


def read_sidecar(path: Path, cfg: ImportConfig) -> pa.Table:
    """The sidecar table (Parquet, CSV or JSON lines); CSV article ids and texts stay strings ('007' is not 7)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.ParquetFile(path).read()  # not pq.read_table: that imports pyarrow.dataset and pandas
        if suffix == ".csv":
            strings = {cfg.article_column: pa.string(), cfg.text_column: pa.string()}
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=strings))
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pajson.read_json(path)
    except (pa.ArrowException, OSError) as exc:
        raise BankError(f"{path}: unreadable sidecar ({exc})") from exc
    raise BankError(f"{path}: unknown sidecar format {suffix!r}; use .parquet, .csv or .jsonl")


class NpzSource(Source):
    """A .npz of named arrays; the vectors are streamed from the zip member, never loaded whole."""

    fmt = "npz"

    def __init__(self, path: Path, cfg: ImportConfig) -> None:
        self.cfg, self.where, self.describe = cfg, str(path), f"npz:{path.resolve()}"
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BankError(f"{path}: not a readable .npz ({exc})") from exc
        self.members = {n.removesuffix(".npy"): n for n in self.zip.namelist() if n.endswith(".npy")}
        with self.zip.open(self.member(cfg.npz_vectors, "--npz-vectors")) as fh:
            self.shape, self.dtype, _ = read_npy_header(fh, f"{path}:{cfg.npz_vectors}")

    def member(self, name: str, flag: str) -> str:
        if name not in self.members:
            raise BankError(f"{self.where}: no array {name!r} (set {flag}); its arrays are {sorted(self.members)}")
        return self.members[name]

    def array(self, name: str, flag: str, pickled: bool = False) -> np.ndarray:
        """One small 1-D array [N]; only a text array of Python strings may be pickled."""
        try:
            with self.zip.open(self.member(name, flag)) as fh:
                array = np.lib.format.read_array(fh, allow_pickle=pickled)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            hint = "; save ids as numbers or fixed-width strings (dtype=str)" if "pickle" in str(exc) else ""
            raise BankError(f"{self.where}: array {name!r} is unreadable ({exc}){hint}") from exc
        if array.shape != (self.shape[0],):
            raise BankError(
                f"{self.where}: array {name!r} has shape {array.shape}; the vectors have {self.shape[0]} rows"
            )
        return array

    def key_tables(self, batch_rows: int) -> Iterator[pa.Table]:
        cfg = self.cfg
        columns = {
            "article": pa.array(self.array(cfg.npz_article, "--npz-article")),
            "position": pa.array(self.array(cfg.npz_position, "--npz-position")),
        }
        if cfg.npz_text in self.members:
            columns["text"] = pa.array(self.array(cfg.npz_text, "--npz-text", pickled=True), type=pa.string())
        yield pa.table(columns)

    def vector_batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        rows, dim = self.shape
        with self.zip.open(self.members[self.cfg.npz_vectors]) as fh:
            read_npy_header(fh, self.where)
            for start in range(0, rows, batch_rows):
                take = min(batch_rows, rows - start)
                data = fh.read(take * dim * self.dtype.itemsize)
                if len(data) != take * dim * self.dtype.itemsize:
                    raise BankError(f"{self.where}: truncated: array {self.cfg.npz_vectors!r} ends before row {start}")
                yield np.frombuffer(data, dtype=self.dtype).reshape(take, dim)

    def close(self) -> None:
        self.zip.close()


class ParquetSource(Source):
    """A Parquet file, or a directory of them (sorted by path), with a vector column and key columns."""

    fmt = "parquet"

    def __init__(self, path: Path, cfg: ImportConfig) -> None:
        self.cfg, self.where, self.describe = cfg, str(path), f"parquet:{path.resolve()}"
        self.files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        if not self.files:
            raise BankError(
                f"{path}: no .parquet files in this directory (a Hugging Face dataset saved with save_to_disk "
                f"is read as hf:{path})"
            )
        self.columns = [self.key_columns(f) for f in self.files]

    def key_columns(self, file: Path) -> dict[str, str]:
        try:
            names = pq.read_schema(file).names
        except (pa.ArrowException, OSError) as exc:
            raise BankError(f"{file}: unreadable Parquet ({exc})") from exc
        return key_columns(names, self.cfg, str(file), need_vector=True)

    def batches(self, files: list[Path], columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        for file in files:
            try:
                yield from pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns)
            except (pa.ArrowException, OSError) as exc:
                raise BankError(f"{file}: unreadable Parquet ({exc})") from exc

    def key_tables(self, batch_rows: int) -> Iterator[pa.Table]:
        for file, columns in zip(self.files, self.columns):
            for batch in self.batches([file], list(columns.values()), batch_rows):
                yield standard(batch, columns)

    def vector_batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        row = 0
        for batch in self.batches(self.files, [self.cfg.vector_column], batch_rows):
            yield vectors_of(batch.column(0), row, self.where)
            row += batch.num_rows


class HFSource(Source):
    """`hf:NAME[:split]`: a Hugging Face dataset saved with `save_to_disk` (a local directory) or on the hub."""

    fmt = "hf"

    def __init__(self, spec: str, cfg: ImportConfig) -> None:
        self.cfg, self.where = cfg, spec
        self.dataset, self.describe = load_hf(spec, cfg.split)
        self.columns = key_columns(self.dataset.column_names, cfg, spec, need_vector=True)

    def tables(self, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
        return self.dataset.select_columns(columns).with_format("arrow").iter(batch_size=batch_rows)

    def key_tables(self, batch_rows: int) -> Iterator[pa.Table]:
        for table in self.tables(list(self.columns.values()), batch_rows):
            yield standard(table, self.columns)

    def vector_batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        row = 0
        for table in self.tables([self.cfg.vector_column], batch_rows):
            yield vectors_of(table.column(0), row, self.where)
            row += table.num_rows


def parse_hf(spec: str, default_split: str) -> tuple[str, str]:
    """`hf:NAME[:split]` -> (NAME, split); a trailing `:x` is a split unless the whole rest is an existing path."""
    rest = spec.removeprefix("hf:")
    name, sep, split = rest.rpartition(":")
    if sep and name and split and "/" not in split and not Path(rest).exists():
        return name, split
    if not rest:
        raise BankError(f"{spec}: name a dataset: hf:NAME[:split] (a hub name, or a directory from save_to_disk)")
    return rest, default_split


def load_hf(spec: str, default_split: str):
    """The dataset `hf:NAME[:split]` names, and how the manifest records it; `datasets` is imported only here."""
    try:
        import datasets
    except ImportError as exc:
        raise RayttError(
            f"{spec}: hf: sources need the Hugging Face `datasets` package (pip install 'raytt[hf]')"
        ) from exc
    name, split = parse_hf(spec, default_split)
    if Path(name).is_dir():
        try:
            dataset = datasets.load_from_disk(name)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise BankError(f"{spec}: {name} is not a dataset saved with save_to_disk ({exc})") from exc
        where = Path(name).resolve()
        if not isinstance(dataset, datasets.DatasetDict):
            return dataset, f"hf:{where}"
        if split not in dataset:
            raise BankError(f"{spec}: no split {split!r} in {name}; its splits are {sorted(dataset)}")
        return dataset[split], f"hf:{where}:{split}"
    if name.startswith((".", "/", "~")):
        raise BankError(f"{spec}: no such dataset directory {name}")
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub, the cache and the loaders each raise their own types
        raise BankError(f"{spec}: cannot load the Hugging Face dataset {name!r}, split {split!r} ({exc})") from exc
    return dataset, f"hf:{name}:{split}"


def open_source(src: str, cfg: ImportConfig) -> Source:
    """The reader for SRC, chosen by its form: hf:NAME, a directory or .parquet, .npy (+ sidecar), .npz."""
    if src.startswith("hf:"):
        return HFSource(src, cfg)
    path = Path(src)
    if not path.exists():
        raise BankError(f"{src}: no such file or directory")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".pq"):
        return ParquetSource(path, cfg)
    if suffix == ".npy":
        return NpySource(path, cfg)
    if suffix == ".npz":
        return NpzSource(path, cfg)
    raise BankError(
        f"{src}: unknown source format {suffix or '(no suffix)'!r}: give a .npy (with a sidecar table), a .npz, "
        "a Parquet file or directory, or hf:NAME[:split]"
    )


def first_null(column: pa.Array) -> int | None:
    """Index of the first null in `column`, or None."""
    if not column.null_count:
        return None
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def concat(tables: list[pa.Table], role: str, kind: pa.DataType, where: str) -> pa.Array:
    """One key column of every table as a single array of `kind`, refusing nulls by source row."""
    try:
        column = pa.concat_arrays([c for t in tables for c in t.column(role).cast(kind).chunks])
    except pa.ArrowException as exc:
        raise BankError(f"{where}: the {role} column cannot be read as {kind} ({exc})") from exc
    row = first_null(column)
    if row is not None:
        raise BankError(f"{where}: source row {row}: no {role} (null)")
    return column


def read_keys(tables: Iterable[pa.Table], where: str) -> Keys:
    """Article ids as strings, positions as int64 and texts (or None), refusing gaps and bad values by row."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        raise BankError(f"{where}: empty source (no rows)")
    if len({"text" in t.column_names for t in tables}) > 1:
        raise BankError(f"{where}: some files have the text column and some do not")
    kinds = sorted({str(t.schema.field("position").type) for t in tables})
    if not all(pa.types.is_integer(t.schema.field("position").type) for t in tables):
        raise BankError(f"{where}: positions must be integers, got {', '.join(kinds)}")
    positions = concat(tables, "position", pa.int64(), where).to_numpy()
    bad = np.flatnonzero((positions < 0) | (positions > np.iinfo(np.int32).max))
    if bad.size:
        raise BankError(f"{where}: source row {bad[0]}: position {positions[bad[0]]} is outside 0..2^31-1")
    texts = None
    if "text" in tables[0].column_names:
        texts = pa.concat_arrays([c for t in tables for c in t.column("text").cast(pa.string()).chunks])
    return Keys(concat(tables, "article", pa.string(), where), positions, texts)


def row_order(keys: Keys, where: str) -> np.ndarray:
    """Source rows in bank order, (article in order of first appearance, position); refuses duplicate pairs."""
    codes = pc.dictionary_encode(keys.article_ids).indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((keys.positions, codes))
    codes, positions = codes[order], keys.positions[order]
    dup = np.flatnonzero((codes[1:] == codes[:-1]) & (positions[1:] == positions[:-1]))
    if dup.size:
        first, second = order[dup[0]], order[dup[0] + 1]
        raise BankError(
            f"{where}: duplicate (article, position) ({keys.article_ids[first].as_py()!r}, {positions[dup[0]]}) "
            f"at source rows {first} and {second}; {dup.size} duplicate pair(s) in all"
        )
    return order


def streamed(source: Source, batch_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first source row, vectors) in source order, refusing a change of dim by source row."""
    row, dim = 0, None
    for block in source.vector_batches(batch_rows):
        if not len(block):
            continue
        dim = block.shape[1] if dim is None else dim
        if block.shape[1] != dim:
            raise BankError(f"{source.where}: source row {row}: vector has {block.shape[1]} values, earlier rows {dim}")
        yield row, block
        row += len(block)


def spill(blocks: Iterator[tuple[int, np.ndarray]], path: Path, where: str) -> RowFile:
    """Write streamed vectors to a raw float32 file and open it for gathering (for sources read only in order)."""
    rows, dim = 0, 0
    with open(path, "wb") as fh:
        for _, block in blocks:
            fh.write(np.ascontiguousarray(block, dtype=np.float32).data)
            rows, dim = rows + len(block), block.shape[1]
    file = RowFile(path, 0, (rows, dim), np.dtype(np.float32), where)
    path.unlink()  # the open descriptor keeps the data until `close`
    return file


def ordered_blocks(
    source: Source, order: np.ndarray, in_order: bool, batch_rows: int, scratch: Path
) -> Iterator[tuple[int, np.ndarray]]:
    """(first bank key, vectors) in bank order: gathered from a random-access file, streamed when the source is
    already in order, else spilled to a scratch file once and gathered from it."""
    rows = source.row_file()
    if rows is None and in_order:
        yield from streamed(source, batch_rows)
        return
    if rows is None:
        rows = spill(streamed(source, batch_rows), scratch, source.where)
    try:
        for start in range(0, len(order), batch_rows):
            yield start, rows.gather(order[start : start + batch_rows])
    finally:
        rows.close()


def source_error(exc: BankError, order: np.ndarray, where: str) -> BankError:
    """The bank's refusal restated for the source: its file and row instead of the temporary bank's key."""
    message = str(exc).split(": ", 1)[-1]
    found = re.search(r"vector at key (\d+)", message)
    if found is None:
        return BankError(f"{where}: {message}")
    key = int(found[1])
    return BankError(f"{where}: source row {order[key]}: {message.replace(found[0], f'vector (bank key {key})')}")


def write_rows(writer: BankWriter, keys: Keys, order: np.ndarray, blocks, where: str) -> None:
    """Feed vector blocks with their article ids, positions and texts to the writer, in bank order."""
    for start, vectors in blocks:
        rows = order[start : start + len(vectors)]
        take = pa.array(rows)
        texts = None if keys.texts is None else keys.texts.take(take).to_pylist()
        try:
            writer.add(keys.article_ids.take(take).to_pylist(), keys.positions[rows], vectors, texts)
        except BankError as exc:
            raise source_error(exc, order, where) from exc
        del vectors, texts  # let this batch go before the next one is read: one batch in memory, not two


def import_bank(
    src: str | Path,
    out: str | Path,
    cfg: ImportConfig | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = say,
) -> BankManifest:
    """Write the bank SRC holds to `out`, atomically: rows ordered by (article, position), every bank gate applied."""
    cfg = cfg or ImportConfig()
    if not cfg.embedder_id:
        raise ConfigError(
            "import-bank: --embedder-id is required: the model that made these vectors "
            "(e.g. sentence-transformers/all-MiniLM-L6-v2); shards and queries are checked against it"
        )
    started = time.perf_counter()
    source = open_source(str(src), cfg)
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            keys = read_keys(source.key_tables(cfg.batch_rows), source.keys_where)
            order = row_order(keys, source.keys_where)
            in_order = bool(np.array_equal(order, np.arange(len(order))))
            progress(
                f"import-bank: {src} ({source.fmt}): {len(order):,} rows, "
                f"{'in (article, position) order' if in_order else 'reordering by (article, position)'}"
            )
            writer = BankWriter(tmp, normalize=cfg.normalize, with_text=keys.texts is not None)
            blocks = ordered_blocks(source, order, in_order, cfg.batch_rows, tmp / "scratch.f32")
            write_rows(writer, keys, order, blocks, source.where)
            manifest = writer.finish(cfg.embedder_id, source=source.describe)
    finally:
        source.close()
    progress(
        f"import-bank: wrote {manifest.num_vectors:,} x {manifest.dim} bank to {out} ({manifest.embedder_id}) "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return manifest
