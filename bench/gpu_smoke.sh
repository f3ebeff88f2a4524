#!/usr/bin/env bash
# GPU smoke run for a CUDA machine with raytt[gpu] installed (README, "From laptop to cluster"):
#   1. the GPU-marked tests: full-bank scan on the GPU, the miners' GPU index, CUDA workers with NCCL and bf16;
#   2. training throughput on the GPU, raytt against a bare PyTorch loop on the same GPU (bench/train_throughput.py);
#   3. the demo on the GPU: synth -> build -> train (CUDA workers, bf16) -> full-bank evaluation on the GPU.
# Usage: bash bench/gpu_smoke.sh [OUT_DIR]   (default runs/gpu_smoke; PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu_smoke}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: torch ($PY) sees no CUDA device here; this script is for GPU machines" >&2
  exit 1
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
"$PY" -c "import torch, faiss; print(f'gpu_smoke: torch {torch.__version__}, CUDA {torch.version.cuda}, '
          f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}; faiss {faiss.__version__}, '
          f'faiss GPUs {faiss.get_num_gpus() if hasattr(faiss, \"get_num_gpus\") else 0}')"

echo "== 1. GPU-marked tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider

echo "== 2. training throughput on the GPU (bf16)"
"$PY" bench/train_throughput.py --device cuda --precision bf16 --workdir "$OUT/throughput"

echo "== 3. the demo on the GPU"
started=$(date +%s)
"$PY" -m raytt.cli synth --out "$OUT/bank" --overwrite
"$PY" -m raytt.cli build --bank "$OUT/bank" --out "$OUT/shards" --overwrite
rm -rf "$OUT/demo-gpu"
"$PY" -m raytt.cli train --config configs/demo.yaml --eval test \
  --set data.bank="$OUT/bank" --set data.shards="$OUT/shards" --set storage="$OUT" --set name=demo-gpu \
  --set use_gpu=true --set workers="$GPUS" --set precision=bf16
echo "gpu_smoke: demo on $GPUS GPU(s) done in $(( $(date +%s) - started )) s; report in $OUT/demo-gpu/eval/test/report.md"
