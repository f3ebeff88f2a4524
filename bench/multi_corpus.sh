#!/usr/bin/env bash
# Issue 20's lever 4: a tower pre-trained on six Debian documentation corpora, judged on the Python docs.
#  1. fetch: apt-get download each package (no root needed) and unpack it with dpkg -x into OUT/src/PKG;
#     a package without HTML pages (ruby3.1-doc ships only ri files) is left out, said aloud;
#  2. ingest OUT/src into OUT/bank (configs/ingest_multi.yaml; resumable: re-run after an interruption);
#  3. shards with 20 context chunks, split 90/10 by page (configs/build_multi.yaml);
#  4. pre-train configs/multi_pretrain.yaml on them;
#  5. the Python docs (bench/real_corpus.sh's PY folder: its bank, plus shards at 20 chunks built here):
#     the pre-trained tower zero-shot, then fine-tuned (configs/finetune_pydocs_multi.yaml), and the same
#     tower trained from scratch (configs/pydocs_gru20_doc.yaml), on SPLIT next to the heuristics, with
#     paired-bootstrap intervals;
#  6. a second corpus the shipped config was never tuned on: the SQLite pages alone, ingested into
#     OUT/sqlite/bank, shards at 20 chunks split 80/10/10 by page, configs/pydocs_gru20_doc.yaml unchanged
#     but for its data paths, trained once and judged once on the test pages.
# Usage: bash bench/multi_corpus.sh [OUT_DIR] [PY_DIR] [SPLIT]   (defaults runs/multi runs/pydocs val)
set -euo pipefail
cd "$(dirname "$0")/.."
RAYTT=${RAYTT:-.venv/bin/raytt}
OUT=${1:-runs/multi}
PY=${2:-runs/pydocs}
SPLIT=${3:-val}
PACKAGES="git-doc linux-doc python-django-doc sqlite3-doc nodejs-doc ruby3.1-doc r-doc-html"
export HF_HUB_OFFLINE=1
say() { echo "$(date '+%F %T')  multi_corpus: $*"; }

if [ ! -d "$PY/bank" ]; then
  say "$PY/bank is missing; run bash bench/real_corpus.sh $PY first" >&2
  exit 1
fi
mkdir -p "$OUT/debs" "$OUT/src"
for pkg in $PACKAGES; do
  [ -d "$OUT/src/$pkg" ] && continue
  real=$pkg
  if [ "$pkg" = linux-doc ]; then  # a metapackage: the documentation is in the versioned package it depends on
    real=$(apt-cache depends linux-doc | awk '/Depends: linux-doc-/ {print $2; exit}')
  fi
  (cd "$OUT/debs" && apt-get download "$real" >/dev/null)
  tmp="$OUT/src/.$pkg.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  dpkg -x "$(ls "$OUT"/debs/"${real}"_*.deb | head -1)" "$tmp"
  pages=$(find "$tmp" -name '*.html' | wc -l)
  if [ "$pages" -eq 0 ]; then
    say "$pkg ships no HTML pages; left out"
    rm -rf "$tmp"
    continue
  fi
  mv "$tmp" "$OUT/src/$pkg"
  say "$pkg: $pages HTML pages"
done
[ -d "$OUT/bank" ] || "$RAYTT" ingest --input "$OUT/src" --out "$OUT/bank" --config configs/ingest_multi.yaml
[ -d "$OUT/shards20" ] || "$RAYTT" build --bank "$OUT/bank" --out "$OUT/shards20" --config configs/build_multi.yaml
[ -d "$PY/shards20" ] || "$RAYTT" build --bank "$PY/bank" --out "$PY/shards20" --config configs/build_pydocs.yaml \
  --context-len 20
[ -f "$OUT/multi_pretrain/summary.json" ] || "$RAYTT" train --config configs/multi_pretrain.yaml \
  --set data.bank="$OUT/bank" --set data.shards="$OUT/shards20" --set storage="$OUT"
"$RAYTT" eval --run "$OUT/multi_pretrain" --shards "$PY/shards20" --bank "$PY/bank" --split "$SPLIT" \
  --out "$OUT/multi_pretrain/eval/pydocs-$SPLIT"
for name in finetune_pydocs_multi pydocs_gru20_doc; do  # fine-tuned, and the same tower trained from scratch
  [ -f "$PY/$name/eval/$SPLIT/report.json" ] && continue
  rm -rf "${PY:?}/$name"
  "$RAYTT" train --config "configs/$name.yaml" --set data.bank="$PY/bank" --set data.shards="$PY/shards20" \
    --set storage="$PY" --eval "$SPLIT" $([ $name = finetune_pydocs_multi ] && echo "--set init_from=$OUT/multi_pretrain")
done
reports=("$PY/finetune_pydocs_multi/eval/$SPLIT" "$OUT/multi_pretrain/eval/pydocs-$SPLIT" "$PY/pydocs_gru20_doc/eval/$SPLIT")
"$RAYTT" compare "${reports[@]}" --view all --metrics R@10,R@100,MRR@10
"$RAYTT" compare "${reports[@]}" --view context_excluded --metrics R@10,R@100,MRR@10
SQ=$OUT/sqlite
[ -d "$SQ/bank" ] || "$RAYTT" ingest --input "$OUT/src/sqlite3-doc" --out "$SQ/bank" --config configs/ingest_multi.yaml
[ -d "$SQ/shards20" ] || "$RAYTT" build --bank "$SQ/bank" --out "$SQ/shards20" --config configs/build_pydocs.yaml \
  --context-len 20
[ -f "$SQ/pydocs_gru20_doc/eval/test/report.json" ] || "$RAYTT" train --config configs/pydocs_gru20_doc.yaml \
  --set data.bank="$SQ/bank" --set data.shards="$SQ/shards20" --set storage="$SQ" --eval test
"$RAYTT" compare "$SQ/pydocs_gru20_doc" --view all --metrics R@10,R@100,MRR@10
"$RAYTT" compare "$SQ/pydocs_gru20_doc" --view context_excluded --metrics R@10,R@100,MRR@10
