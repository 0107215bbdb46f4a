#!/usr/bin/env bash
# BLT's GPU measurements (issue: byte-level backbones), written to $OUT (default runs/gpu_blt). Needs the
# byte-level shards runs/blt_gpu/data (and runs/blt_vs_bpe_gpu/data_bpe for the recipe) prepared on a CPU
# machine with the corpus: `tessera prepare recipes/blt_vs_bpe_gpu.yaml`, then carried along.
#   PART=bench   (default) trains the released-shape entropy model (recipes/blt/entropy_model_gpu.yaml),
#                calibrates θ for 4.5 bytes per patch, then times BLT-400M's bf16 training step on real rows
#                with the split by stage (patching = entropy model + patcher, encoder, global, decoder), and
#                the dense byte-level transformer of the same width for reference.
#   PART=recipe  the entropy model and θ as above, then recipes/blt_vs_bpe_gpu.yaml (six arms at equal
#                FLOPs) and 4 KB of greedy generation with the trained entropy-patched BLT, cached against
#                uncached (full forward per byte).
#   PART=sweep   the entropy model and θ, then the six arms again, all at each learning rate in LRS
#                (default "6e-4 3e-3"), each into runs/blt_vs_bpe_gpu_lr<LR>.
# STEPS / WARMUP / STAGES override the benchmark's step counts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/runs/gpu_blt}"
PART="${PART:-bench}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-3}"
STAGES="${STAGES:-5}"
BUILD="${TESSERA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
mkdir -p "$OUT"
cd "$ROOT"
start=$(date +%s)
TESSERA_GPU_BUILD_DIR="$BUILD" "$ROOT/scripts/gpu_build.sh" --target tessera
echo "[gpu_blt] built in $(( $(date +%s) - start ))s"
TESSERA="$BUILD/recipes/tessera"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" || true
log() { echo "[gpu_blt] $(( $(date +%s) - start ))s: $*"; }

# The entropy model and the threshold that gives 4.5 bytes per patch on validation rows.
"$TESSERA" run recipes/blt/entropy_model_gpu.yaml > "$OUT/entropy_model.log" 2>&1 || { tail -30 "$OUT/entropy_model.log"; exit 1; }
grep -E "val_bpb|bits per byte|^eval" "$OUT/entropy_model.log" | tail -3 || true
log "entropy model trained"
"$TESSERA" patch calibrate recipes/blt_vs_bpe_gpu.yaml --variant blt_entropy --target 4.5 --rows 256 \
  --json "$OUT/calibrate.json" | tee "$OUT/calibrate.txt"
THETA="$(python3 -c "import json; print(json.load(open('$OUT/calibrate.json'))['threshold'])")"
log "theta = $THETA"

if [ "$PART" = bench ]; then
  BLT="{arch: blt, dim_local_encoder: 768, n_layers_local_encoder: 1, n_heads_local_encoder: 12, dim_global: 1280, n_layers_global: 24, n_heads_global: 10, dim_local_decoder: 768, n_layers_local_decoder: 7, n_heads_local_decoder: 12, cross_attn_k: 2, cross_attn_nheads: 12, max_seq_len: 4096, hash: {vocab: 100003}, patcher: {mode: entropy, rule: global, threshold: $THETA, patch_size: 4.5}, entropy_model: runs/blt_gpu/entropy_model}"
  "$TESSERA" bench train --model "$BLT" --data runs/blt_gpu/data --batch 8 --seq 4096 --steps "$STEPS" --warmup "$WARMUP" \
    --stages "$STAGES" --device cuda --json "$OUT/train-blt400m.json" 2>&1 | tee "$OUT/train-blt400m.txt"
  log "BLT-400M timed"
  SPACE="${BLT/mode: entropy, rule: global, threshold: $THETA, patch_size: 4.5/mode: space}"
  SPACE="${SPACE/, entropy_model: runs\/blt_gpu\/entropy_model/}"
  "$TESSERA" bench train --model "$SPACE" --data runs/blt_gpu/data --batch 8 --seq 4096 --steps "$STEPS" --warmup "$WARMUP" \
    --stages "$STAGES" --device cuda --json "$OUT/train-blt400m-space.json" 2>&1 | tee "$OUT/train-blt400m-space.txt"
  # The same with the entropies precomputed beside the shards (tessera patch entropies): no entropy model
  # in the step. A copy of the dataset, so that the recipe below still runs the model on the fly.
  rm -rf runs/blt_gpu/data_entropies && cp -r runs/blt_gpu/data runs/blt_gpu/data_entropies
  "$TESSERA" patch entropies recipes/blt_vs_bpe_gpu.yaml --variant blt_entropy data.dataset=runs/blt_gpu/data_entropies \
    --device cuda 2>&1 | tee "$OUT/entropies.txt"
  "$TESSERA" bench train --model "$BLT" --data runs/blt_gpu/data_entropies --batch 8 --seq 4096 --steps "$STEPS" \
    --warmup "$WARMUP" --stages "$STAGES" --device cuda --json "$OUT/train-blt400m-precomputed.json" 2>&1 \
    | tee "$OUT/train-blt400m-precomputed.txt"
  "$TESSERA" bench train --model "{arch: dense, dim: 1280, n_layers: 24, n_heads: 10, max_seq_len: 4096}" \
    --data runs/blt_gpu/data --batch 8 --seq 4096 --steps "$STEPS" --warmup "$WARMUP" --device cuda \
    --json "$OUT/train-dense-bytes.json" 2>&1 | tee "$OUT/train-dense-bytes.txt"
  log "bench done"
fi

if [ "$PART" = recipe ] || [ "$PART" = sweep ]; then
  sed -E "s/threshold: [0-9.]+, patch_size: 4.5/threshold: $THETA, patch_size: 4.5/" recipes/blt_vs_bpe_gpu.yaml > "$OUT/blt_vs_bpe_gpu.yaml"
  grep -q "threshold: $THETA" "$OUT/blt_vs_bpe_gpu.yaml"
fi

if [ "$PART" = sweep ]; then
  # train.lr on the command line also beats the arms' own learning rates (recipes/cli/recipe.cpp).
  for lr in ${LRS:-6e-4 3e-3}; do
    "$TESSERA" run "$OUT/blt_vs_bpe_gpu.yaml" --run-dir "runs/blt_vs_bpe_gpu_lr$lr" "train.lr=$lr" \
      > "$OUT/recipe-lr$lr.log" 2>&1 || tail -40 "$OUT/recipe-lr$lr.log"
    for f in summary.md summary.json bpb_vs_flops.png; do
      cp "runs/blt_vs_bpe_gpu_lr$lr/$f" "$OUT/lr$lr-$f" 2>/dev/null || true
    done
    cat "$OUT/lr$lr-summary.md" 2>/dev/null || true
    log "learning rate $lr done"
  done
fi

if [ "$PART" = recipe ]; then
  # The entropy-patched arm first: the generation comparison needs it.
  "$TESSERA" run "$OUT/blt_vs_bpe_gpu.yaml" --variant blt_entropy > "$OUT/recipe-blt_entropy.log" 2>&1 \
    || tail -40 "$OUT/recipe-blt_entropy.log"
  log "blt_entropy arm trained"
  "$TESSERA" bench generate --checkpoint runs/blt_vs_bpe_gpu/blt_entropy --data runs/blt_gpu/data --compare 4096 \
    --prompt-tokens 64 --uncached-samples 64 --device cuda --json "$OUT/generate-compare.json" 2>&1 | tee "$OUT/generate-compare.txt"
  log "generation compared"
  "$TESSERA" run "$OUT/blt_vs_bpe_gpu.yaml" > "$OUT/recipe.log" 2>&1 || tail -40 "$OUT/recipe.log"
  for f in summary.md summary.json bpb_vs_flops.png bpb_by_position.png; do
    cp "runs/blt_vs_bpe_gpu/$f" "$OUT/" 2>/dev/null || true
  done
  grep -E "^== |steps|tokens/s" "$OUT/recipe.log" | tail -20 || true
  cat "$OUT/summary.md" 2>/dev/null || true
  log "recipe done"
fi
