"""Reading what `raytt text-build` wrote: the passage bank and the query shards, with the provenance gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytt.errors import RayttError
from raytt.storage import read_json


@dataclass(frozen=True)
class TextShards:
    """A built text set: BUILT/bank (passages by key) and BUILT/queries (one Parquet file per split)."""

    root: Path
    bank: dict  # the bank's manifest
    manifest: dict  # the queries' manifest

    @property
    def bank_sha256(self) -> str:
        return self.bank["sha256"]

    @property
    def passages(self) -> int:
        return int(self.bank["passages"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"].get(split, {}).get("queries", 0))

    def split_file(self, split: str) -> Path:
        if split not in self.manifest["splits"]:
            raise RayttError(f"{self.root / 'queries'}: no {split!r} split (splits here: {self.splits})")
        return self.root / "queries" / self.manifest["splits"][split]["file"]

    def table(self, split: str) -> pa.Table:
        return pq.read_table(self.split_file(split))

    def passage_texts(self) -> list[str]:
        """Every passage as the encoders read it, title then text, in key order."""
        table = pq.read_table(self.root / "bank" / "passages.parquet", columns=["title", "text"])
        return [f"{t}\n{x}".strip() for t, x in zip(table["title"].to_pylist(), table["text"].to_pylist())]

    def query_texts(self, split: str) -> list[str]:
        return pq.read_table(self.split_file(split), columns=["text"])["text"].to_pylist()


def open_text(built: str | Path) -> TextShards:
    """A built text set, refused when its query shards were built from another bank (provenance)."""
    root = Path(built)
    if not (root / "bank" / "manifest.json").is_file() or not (root / "queries" / "manifest.json").is_file():
        raise RayttError(
            f"{root}: not a built text set (no bank/manifest.json or queries/manifest.json); run raytt text-build"
        )
    bank = read_json(root / "bank" / "manifest.json", "text bank manifest")
    manifest = read_json(root / "queries" / "manifest.json", "text queries manifest")
    if bank.get("kind") != "text" or manifest.get("kind") != "text":
        raise RayttError(f"{root}: bank or queries manifest is not of kind 'text'")
    if manifest.get("bank_sha256") != bank.get("sha256"):
        raise RayttError(
            f"{root / 'queries' / 'manifest.json'}: built from a bank with sha256 "
            f"{str(manifest.get('bank_sha256'))[:12]}..., but {root / 'bank'} has {str(bank.get('sha256'))[:12]}...: "
            "rebuild with raytt text-build"
        )
    return TextShards(root, bank, manifest)
