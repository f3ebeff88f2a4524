"""Write the Debian package-description retrieval set as a BEIR folder and print its size.

query = a package's one-line description, passage = its long description, from apt's English
translation index (run `apt-get update -o Acquire::Languages=en` first); deduplicated by text,
sibling packages grouped so they never straddle splits, splits drawn per group.

    python bench/debian_descriptions.py OUT [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
import time

from raytt.errors import RayttError
from raytt.text.beir import read_beir, write_beir
from raytt.text.debian import as_beir, from_apt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the BEIR folder to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = ap.parse_args()
    started = time.perf_counter()
    try:
        data = as_beir(from_apt())
        write_beir(args.out, data, overwrite=args.overwrite)
        written = read_beir(args.out)  # the folder as any reader sees it, every line checked
    except RayttError as exc:
        sys.exit(f"debian_descriptions: {exc}")
    groups = len(set(written.groups.values()))
    print(f"debian_descriptions: {args.out}: {written.describe()}; {groups:,} groups")
    print(f"debian_descriptions: done in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
