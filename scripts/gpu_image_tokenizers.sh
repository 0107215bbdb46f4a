#!/usr/bin/env bash
# Trains the two image tokenizers of issue 5 on a CUDA machine (no OpenCV needed: the images come from
# the scene generator, PNGs are written without it), one call on one GPU:
#   1. builds `tessera` (scripts/gpu_build.sh --target tessera);
#   2. `tessera run recipes/image/vq_tokenizer.yaml` (64 px scenes -> 8x8 tokens of a 512-code codebook)
#      and `tessera run recipes/image/vae.yaml` (64 px -> 4x8x8 latents), each about 2-3 minutes on an H100;
#   3. round-trips two validation scenes through the tokenizer (encode-image -> decode-image);
#   4. prints val PSNR, codebook usage / perplexity, the VAE's scaling factor and KL, images/s, and copies
#      each run's eval.json and reconstructions.png (plus metrics.jsonl) to $OUT (default runs/gpu_image).
# STEPS=N overrides both recipes' train.steps; EXTRA="key=value ..." adds overrides to both.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/runs/gpu_image}"
RUNS="${RUNS:-$ROOT/runs/gpu_image_runs}"
BUILD="${TESSERA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
mkdir -p "$OUT" "$RUNS"

start=$(date +%s)
TESSERA_GPU_BUILD_DIR="$BUILD" "$ROOT/scripts/gpu_build.sh" --target tessera
echo "[gpu_image] built in $(( $(date +%s) - start ))s"
TESSERA="$BUILD/recipes/tessera"
[ -x "$TESSERA" ] || TESSERA="$(find "$BUILD" -name tessera -type f -perm -u+x | head -1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" || true

overrides=(train.device=cuda)
[ -n "${STEPS:-}" ] && overrides+=("train.steps=$STEPS")
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && overrides+=($EXTRA)

for name in vq_tokenizer vae; do
  t0=$(date +%s)
  "$TESSERA" run "$ROOT/recipes/image/$name.yaml" --run-dir "$RUNS/$name" --force "${overrides[@]}" \
    2>&1 | tee "$OUT/$name.log"
  echo "[gpu_image] $name: $(( $(date +%s) - t0 ))s wall"
  mkdir -p "$OUT/$name"
  cp "$RUNS/$name/eval.json" "$RUNS/$name/reconstructions.png" "$RUNS/$name/metrics.jsonl" "$OUT/$name/"
done

# Tokens round trip: scenes -> ids -> PNG.
"$TESSERA" generate encode-image --tokenizer "$RUNS/vq_tokenizer" --scenes 8 --device cuda --out "$OUT/scene_tokens.txt"
"$TESSERA" generate decode-image --tokenizer "$RUNS/vq_tokenizer" --tokens "$OUT/scene_tokens.txt" --device cuda \
  --out "$OUT/scene_tokens_decoded.png"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
vq = json.load(open(os.path.join(out, "vq_tokenizer", "eval.json")))
vae = json.load(open(os.path.join(out, "vae", "eval.json")))
print(f"VQ tokenizer: val PSNR {vq['val_psnr']:.2f} dB, codebook usage {100 * vq['codebook_usage']:.1f}% "
      f"of {vq['codebook_size']}, perplexity {vq['perplexity']:.1f}, {vq['tokens_per_image']} tokens/image, "
      f"{vq['images_per_s']:.0f} images/s ({vq['train_seconds']:.0f}s training, {vq['precision']})")
print(f"VAE: val PSNR {vae['val_psnr']:.2f} dB, KL {vae['kl']:.1f}, scaling factor {vae['scaling_factor']:.4f}, "
      f"latent {vae['latent_shape']}, {vae['images_per_s']:.0f} images/s ({vae['train_seconds']:.0f}s training, "
      f"{vae['precision']})")
PY
echo "[gpu_image] outputs in $OUT"
