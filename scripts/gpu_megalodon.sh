#!/usr/bin/env bash
# Megalodon's GPU measurements in one call (issue: Megalodon backbone), written to $OUT (default
# runs/gpu_megalodon):
#   1. training step, Megalodon-200M vs dense-220M (vocab 32000, bf16), at 4K and 32K context;
#   2. CEMA alone: FFT convolution vs chunked scan (vs the recurrence at 4K), forward and backward;
#   3. generation: decoding-state memory and ms/token after 4K and 64K tokens of context;
#   4. optionally (RECIPE=1) recipes/megalodon_vs_dense_gpu.yaml, whose shards must have been prepared on
#      a CPU machine (tessera prepare recipes/megalodon_vs_dense_gpu.yaml) and carried along.
# STEPS / WARMUP override the timed and untimed step counts; SKIP_BENCH=1 skips 1-3.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/runs/gpu_megalodon}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
BUILD="${TESSERA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
mkdir -p "$OUT"
start=$(date +%s)
TESSERA_GPU_BUILD_DIR="$BUILD" "$ROOT/scripts/gpu_build.sh" --target tessera
echo "[gpu_megalodon] built in $(( $(date +%s) - start ))s"
TESSERA="$BUILD/recipes/tessera"
set +e  # one failed measurement should not lose the others
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" || true

MEGA='{arch: megalodon, dim: 1024, n_layers: 12, n_heads: 1, z_dim: 256, value_dim: 2048, ffn_hidden_dim: 2560, swiglu: false, cema_ndim: 16, chunk_size: 2048, norm_groups: 32}'
DENSE='{arch: dense, dim: 1024, n_layers: 12, n_heads: 16}'

if [ "${SKIP_BENCH:-0}" != 1 ]; then
for seq in 4096 32768; do
  batch=$(( 32768 / seq ))
  for arch in dense megalodon; do
    model="$DENSE"; [ "$arch" = megalodon ] && model="$MEGA"
    "$TESSERA" bench train --model "$model" --vocab 32000 --batch "$batch" --seq "$seq" --steps "$STEPS" \
      --warmup "$WARMUP" --device cuda --json "$OUT/train-$arch-$seq.json" 2>&1 | tee "$OUT/train-$arch-$seq.txt"
  done
done
# Where Megalodon's step time goes at 4K (per-kernel GPU time).
"$TESSERA" bench train --model "$MEGA" --vocab 32000 --batch 8 --seq 4096 --steps 3 --warmup 2 --profile 2 \
  --device cuda > "$OUT/profile-megalodon-4096.txt" 2>&1 || true

"$TESSERA" bench cema --dim 1024 --ndim 16 --batch 8 --seq 4096 --modes fft,scan --steps "$STEPS" --warmup "$WARMUP" \
  --device cuda --json "$OUT/cema-4096.json" | tee "$OUT/cema-4096.txt"
"$TESSERA" bench cema --dim 1024 --ndim 16 --batch 8 --seq 4096 --modes sequential --steps 1 --warmup 1 \
  --device cuda --json "$OUT/cema-4096-sequential.json" | tee "$OUT/cema-4096-sequential.txt"
"$TESSERA" bench cema --dim 1024 --ndim 16 --batch 1 --seq 32768 --modes fft,scan --steps "$STEPS" --warmup "$WARMUP" \
  --device cuda --json "$OUT/cema-32768.json" | tee "$OUT/cema-32768.txt"

for arch in dense megalodon; do
  model="$DENSE"; [ "$arch" = megalodon ] && model="$MEGA"
  "$TESSERA" bench generate --model "$model" --vocab 32000 --context 4096,65536 --prefill-chunk 2048 --decode 32 \
    --device cuda --json "$OUT/generate-$arch.json" 2>&1 | tee "$OUT/generate-$arch.txt"
done
fi

if [ "${RECIPE:-0}" = 1 ]; then
  "$TESSERA" run "$ROOT/recipes/megalodon_vs_dense_gpu.yaml" > "$OUT/recipe.log" 2>&1 || tail -30 "$OUT/recipe.log"
  for f in summary.md summary.json bpb_vs_flops.png bpb_by_position.png; do
    cp "$ROOT/runs/megalodon_vs_dense_gpu/$f" "$OUT/" 2>/dev/null || true
  done
  tail -25 "$OUT/recipe.log"
fi
echo "[gpu_megalodon] done in $(( $(date +%s) - start ))s"
