#!/usr/bin/env bash
# JAX vs PyTorch train-step benchmark and the largest batch per device, in one
# command on a bare GPU machine (jax, flax, optax, torch, torchvision; no
# TensorFlow, no ml-collections), within a time budget, then a table.
#
#   tools/gpu_bench.sh [OUT_DIR]      # default: $OUT, else /tmp/jaxssl_gpu_bench
#   BUDGET_S=520 tools/gpu_bench.sh   # total seconds (default 520, < 9 min)
#   SMOKE=1 JAX_PYTHON=.venv/bin/python TORCH_PYTHON=/path/to/torch/python \
#     tools/gpu_bench.sh /tmp/smoke     # the same stages, tiny, on a CPU
#
# Stages run in priority order; one that would not finish inside the budget
# is cut (timeout) or skipped, and says so. Results: OUT_DIR/bench.jsonl,
# the log OUT_DIR/bench.log, the tables OUT_DIR/tables.md (also printed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/jaxssl_gpu_bench}}
BUDGET_S=${BUDGET_S:-520}
JAX_PYTHON=${JAX_PYTHON:-python3}
TORCH_PYTHON=${TORCH_PYTHON:-python3}
mkdir -p "$OUT_DIR"
JSON=$OUT_DIR/bench.jsonl
LOG=$OUT_DIR/bench.log
: > "$JSON"
: > "$LOG"
START=$(date +%s)
# Room for the largest batches: JAX may take 92 % of the GPU (not 75 %).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# Programs compiled by one stage are reused by later ones (kept out of
# OUT_DIR, which should hold only the few result files).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxssl_jax_cache}
export PYTHONUNBUFFERED=1  # a stage cut by its timeout still logs its lines
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1

stage() {  # stage NAME MAX_SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if ((left < 45)); then
    echo "-- skipped (time budget): $name" | tee -a "$LOG"
    return
  fi
  ((cap > left)) && cap=$left
  echo "== $name (at most ${cap}s)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout "$cap" "$@" 2>&1 | grep -Ev '^[IW][0-9]{4} |libtpu|^WARNING' | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "   rc=$rc, $(($(date +%s) - t0))s" | tee -a "$LOG"
}

JAX="$JAX_PYTHON tools/bench_step.py --json=$JSON"
TORCH="$TORCH_PYTHON tools/bench_torch.py --json=$JSON"
R50="--depth=50 --image_size=224 --dtype=bfloat16"
R18="--depth=18 --cifar --image_size=32 --dtype=bfloat16"
VITS="--arch=vit --vit=small --patch_size=16 --image_size=224 --dtype=bfloat16"
B=256 BIG=4096 MICRO=16 CIFAR_B=512 MICRO_SIZE=256 GRANULE=256 DINO_B=256
FP32="--depth=50 --image_size=224 --dtype=float32"
SEARCH_LIMIT=""
if [[ "${SMOKE:-0}" == 1 ]]; then  # tiny shapes, CPU, no torch.compile
  R50="--depth=18 --cifar --image_size=16 --dtype=float32 --steps=2"
  R18="$R50" FP32="$R50"
  VITS="--arch=vit --vit=tiny --patch_size=8 --image_size=16 --local_size=8 \
    --dtype=float32 --steps=2"
  B=16 BIG=64 MICRO=4 CIFAR_B=16 MICRO_SIZE=16 GRANULE=16 DINO_B=16
  SEARCH_LIMIT="--memory_gib=2 --max_batch=256"  # CPU unrolls micro-batches
  TORCH="$TORCH --device=cpu --nocompile --warmup=1"
fi

# 1. Same work in both frameworks: ready views, R50 224 px, bf16, batch 256.
stage "JAX SimCLR" 110 $JAX --method=simclr $R50 --batch_size=$B --augment=false
stage "PyTorch SimCLR" 150 $TORCH --method=simclr $R50 --batch_size=$B
stage "JAX BYOL" 120 $JAX --method=byol $R50 --batch_size=$B --augment=false
stage "PyTorch BYOL" 150 $TORCH --method=byol $R50 --batch_size=$B
# 2. Exact SimCLR batch 4096 on one device: 16 micro-batches of 256.
stage "JAX SimCLR $BIG micro-batched" 120 $JAX --method=simclr $R50 \
  --batch_size=$BIG --microbatches=$MICRO --steps=3 --augment=false
# 3. Largest batch: whole batch, remat per block, micro-batches of 256.
SEARCH="--find_max_batch --granularity=$GRANULE --time_limit_s=100 \
  --augment=false $SEARCH_LIMIT"
stage "max batch" 150 $JAX --method=simclr $R50 $SEARCH
stage "max batch, remat" 150 $JAX --method=simclr $R50 $SEARCH --remat=block
stage "max batch, micro-batches of $MICRO_SIZE" 150 $JAX --method=simclr $R50 \
  $SEARCH --microbatch_size=$MICRO_SIZE
# 4. Multi-crop: DINO ViT-S/16 2 × 224 + 10 × 96 and SwAV R50 2 × 224 + 6 × 96
#    (tools/bench_learners.py), and DINO's largest batch per device.
stage "JAX DINO ViT-S/16 2+10 crops" 120 $JAX --method=dino $VITS \
  --local_crops=10 --batch_size=$DINO_B --augment=false
stage "JAX SwAV R50 2+6 crops" 120 $JAX --method=swav $R50 --batch_size=$B \
  --augment=false
stage "max batch, DINO ViT-S/16 2+10 crops" 150 $JAX --method=dino $VITS \
  --local_crops=10 $SEARCH
# 5. With the augmentations in the step, as training runs; fp32; CIFAR R18.
stage "JAX SimCLR, in-step augmentation" 100 $JAX --method=simclr $R50 \
  --batch_size=$B
stage "JAX SimCLR fp32" 100 $JAX --method=simclr $FP32 --batch_size=$B \
  --augment=false
stage "JAX SimCLR R18 CIFAR" 80 $JAX --method=simclr $R18 --batch_size=$CIFAR_B \
  --augment=false
stage "PyTorch SimCLR R18 CIFAR" 120 $TORCH --method=simclr $R18 \
  --batch_size=$CIFAR_B

echo | tee -a "$LOG"
echo "Total: $(($(date +%s) - START))s; $(date -u +%F) $(hostname)" | tee -a "$LOG"
python3 tools/bench_table.py "$JSON" | tee "$OUT_DIR/tables.md"
