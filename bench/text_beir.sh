#!/usr/bin/env bash
# Any BEIR folder end to end: passage bank and query shards, the frozen encoder's cached vectors, the
# baselines, every shipped configs/text_*.yaml trained and evaluated on test, one table at the end.
#
#   bash bench/text_beir.sh DIR OUT        e.g. python bench/debian_descriptions.py /tmp/debian && bash bench/text_beir.sh /tmp/debian runs/text-debian
#
# Leaves OUT/built (bank, queries, encoded/), OUT/runs/NAME/eval/test/report.json for each config, and
# OUT/eval/test/report.json with every method; a config with `use_gpu: true` is skipped on a machine without
# a GPU (said so). Re-running resumes: finished runs are kept, the cache is reused.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash bench/text_beir.sh BEIR_DIR OUT" >&2
  exit 2
fi
DIR=$1
OUT=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
RAYTT=${RAYTT:-raytt}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
started=$(date +%s)
stamp() { echo "$(date '+%Y-%m-%d %H:%M:%S')  text_beir: $* ($(($(date +%s) - started))s)"; }

mkdir -p "$OUT"
if [ ! -f "$OUT/built/queries/manifest.json" ]; then
  $RAYTT text-build "$DIR" --out "$OUT/built"
fi
stamp "built"
$RAYTT text-encode "$OUT/built"
stamp "encoded"

has_gpu=$(python -c "import torch; print(int(torch.cuda.is_available()))")
runs=()
for config in "$HERE"/configs/text_*.yaml; do
  name=$(basename "$config" .yaml)
  if grep -q "^use_gpu: true" "$config" && [ "$has_gpu" = 0 ]; then
    stamp "skipping $name: it asks for a GPU and this machine has none"
    continue
  fi
  if [ ! -f "$OUT/runs/$name/summary.json" ]; then
    $RAYTT text-train --config "$config" --name "$name" --storage "$OUT/runs" --set "data.built=$OUT/built"
  fi
  runs+=(--run "$OUT/runs/$name")
  stamp "trained $name"
done

$RAYTT text-eval "$OUT/built" --split test --out "$OUT/eval/test" "${runs[@]}"
stamp "done: $OUT/eval/test/report.json"
