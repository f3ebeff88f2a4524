#!/usr/bin/env bash
# The real-corpus benchmark: the Python 3.11 documentation (apt install python3.11-doc) ingested with
# raytt ingest, shards split by page with 5 and with 20 context chunks (the same rows), the heuristic
# baselines, every configs/pydocs_*.yaml tower trained on the shards its config names and evaluated on
# the test pages, and one table per view.
# Usage: bash bench/real_corpus.sh [OUT_DIR]   (default runs/pydocs; re-runs reuse the bank and shards)
set -euo pipefail
cd "$(dirname "$0")/.."
RAYTT=${RAYTT:-.venv/bin/raytt}
OUT=${1:-runs/pydocs}
HTML=/usr/share/doc/python3.11/html
export HF_HUB_OFFLINE=1

if [ ! -d "$HTML" ]; then
  echo "real_corpus: $HTML is missing; install it with: apt install python3.11-doc" >&2
  exit 1
fi
[ -d "$OUT/bank" ] || "$RAYTT" ingest --input "$HTML" --out "$OUT/bank" --config configs/ingest_pydocs.yaml
[ -d "$OUT/shards" ] || "$RAYTT" build --bank "$OUT/bank" --out "$OUT/shards" --config configs/build_pydocs.yaml
[ -d "$OUT/shards20" ] || "$RAYTT" build --bank "$OUT/bank" --out "$OUT/shards20" --config configs/build_pydocs.yaml \
  --context-len 20
"$RAYTT" eval --shards "$OUT/shards" --out "$OUT/baselines" --split test
runs=()
for cfg in configs/pydocs_*.yaml; do
  name=$(basename "$cfg" .yaml)
  shards=$(awk '$1 == "shards:" {print $2}' "$cfg" | xargs basename)  # shards or shards20
  rm -rf "${OUT:?}/$name"
  "$RAYTT" train --config "$cfg" --set data.bank="$OUT/bank" --set data.shards="$OUT/$shards" \
    --set storage="$OUT" --set name="$name" --eval test
  runs+=("$OUT/$name")
done
"$RAYTT" compare "${runs[@]}" --view all --metrics R@10,R@100,MRR@10
"$RAYTT" compare "${runs[@]}" --view context_excluded --metrics R@10,R@100,MRR@10
