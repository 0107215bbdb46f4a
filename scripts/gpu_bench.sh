#!/usr/bin/env bash
# GPU training-step benchmark, Tessera against the PyTorch reference, in one call on one GPU:
#   1. builds `tessera` against this machine's PyTorch LibTorch (scripts/gpu_build.sh);
#   2. measures the bf16 GEMM ceiling (torch.mm 8192^3) for the TFLOP/s context;
#   3. runs `tessera bench train` and eval/bench/reference/dense.py (eager, eager + fused AdamW,
#      torch.compile + fused AdamW) on the same shape;
#   4. writes every JSON result and a markdown table to $OUT (default runs/gpu_bench).
# SECOND_SHAPE=1 adds dim 2048 / 24 layers / seq 4096 / batch 2. STEPS / WARMUP override the counts.
# MODES: the PyTorch reference modes (default "eager eager-fused compile"; "none" for Tessera alone).
# UNFUSED=1 adds Tessera with fused_kernels and fused_projections off (ATen ops, separate q/k/v and w1/w3
# GEMMs: the starting point) and with fused_projections alone off, for what each means gains; GRAPH=1
# adds Tessera with the whole step captured as one CUDA graph (--cuda-graph); PROFILE=1 adds a per-kernel profile
# of Tessera's step for each shape (profile-<shape>.txt); NUMERICS=1 compares 200-step loss curves
# (fused kernels against the ATen path, numerics.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/runs/gpu_bench}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-10}"
BUILD="${TESSERA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
mkdir -p "$OUT"

start=$(date +%s)
TESSERA_GPU_BUILD_DIR="$BUILD" "$ROOT/scripts/gpu_build.sh" --target tessera
echo "[gpu_bench] built in $(( $(date +%s) - start ))s"
TESSERA="$BUILD/recipes/tessera"
[ -x "$TESSERA" ] || TESSERA="$(find "$BUILD" -name tessera -type f -perm -u+x | head -1)"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.csv" || true
$PY - > "$OUT/gemm.json" <<'EOF'
import json, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(5): a @ b
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(50): a @ b
e.record(); torch.cuda.synchronize()
ms = s.elapsed_time(e) / 50
print(json.dumps({"gemm_bf16_tflops": 2 * 8192**3 / (ms / 1e3) / 1e12, "device": torch.cuda.get_device_name()}))
EOF
cat "$OUT/gemm.json"

run_shape() {  # name dim layers heads vocab batch seq
  local name=$1 dim=$2 layers=$3 heads=$4 vocab=$5 batch=$6 seq=$7
  "$TESSERA" bench train --dim "$dim" --layers "$layers" --heads "$heads" --vocab "$vocab" --batch "$batch" \
    --seq "$seq" --steps "$STEPS" --warmup "$WARMUP" --device cuda --json "$OUT/$name-tessera.json"
  if [ "${UNFUSED:-0}" = 1 ]; then
    "$TESSERA" bench train --model "{arch: dense, dim: $dim, n_layers: $layers, n_heads: $heads, fused_kernels: false, fused_projections: false}" \
      --vocab "$vocab" --batch "$batch" --seq "$seq" --steps "$STEPS" --warmup "$WARMUP" --device cuda \
      --json "$OUT/$name-tessera-unfused.json"
    "$TESSERA" bench train --model "{arch: dense, dim: $dim, n_layers: $layers, n_heads: $heads, fused_projections: false}" \
      --vocab "$vocab" --batch "$batch" --seq "$seq" --steps "$STEPS" --warmup "$WARMUP" --device cuda \
      --json "$OUT/$name-tessera-noproj.json"
  fi
  if [ "${GRAPH:-0}" = 1 ]; then
    "$TESSERA" bench train --dim "$dim" --layers "$layers" --heads "$heads" --vocab "$vocab" --batch "$batch" \
      --seq "$seq" --steps "$STEPS" --warmup "$WARMUP" --device cuda --cuda-graph --json "$OUT/$name-tessera-graph.json" \
      || echo "[gpu_bench] CUDA graph run failed"
  fi
  if [ "${PROFILE:-0}" = 1 ]; then
    "$TESSERA" bench train --dim "$dim" --layers "$layers" --heads "$heads" --vocab "$vocab" --batch "$batch" \
      --seq "$seq" --steps 8 --warmup 4 --device cuda --profile 3 > "$OUT/profile-$name.txt" 2>&1 || true
  fi
  for mode in ${MODES:-eager eager-fused compile}; do
    [ "$mode" = none ] && continue
    $PY "$ROOT/eval/bench/reference/dense.py" --mode "$mode" --dim "$dim" --n-layers "$layers" --n-heads "$heads" \
      --vocab-size "$vocab" --batch-size "$batch" --seq-len "$seq" --steps "$STEPS" --warmup "$WARMUP" \
      > "$OUT/$name-pytorch-$mode.json" 2> "$OUT/$name-pytorch-$mode.log" || { tail -30 "$OUT/$name-pytorch-$mode.log"; exit 1; }
    cat "$OUT/$name-pytorch-$mode.json"
  done
}
run_shape s220m 1024 12 16 32000 8 2048
[ "${SECOND_SHAPE:-0}" = 1 ] && run_shape s1b 2048 24 16 32000 2 4096

# Numerics (NUMERICS=1): 200 steps of the 220M model on the same 4 batches from the same initialisation,
# every fusion on (kernels and projections) against the plain ATen path with separate projections (twice,
# for the run-to-run spread), compared step by step.
if [ "${NUMERICS:-0}" = 1 ]; then
  for run in fused:true aten:false aten2:false; do
    "$TESSERA" bench train --model "{arch: dense, dim: 1024, n_layers: 12, n_heads: 16, fused_kernels: ${run#*:}, fused_projections: ${run#*:}}" \
      --vocab 32000 --batch 8 --seq 2048 --steps 200 --warmup 0 --device cuda --json "$OUT/numerics-${run%%:*}.json" > /dev/null
  done
  $PY - "$OUT" > "$OUT/numerics.md" <<'EOF'
import json, os, sys
out = sys.argv[1]
curve = {k: json.load(open(os.path.join(out, f"numerics-{k}.json")))["losses"] for k in ("fused", "aten", "aten2")}
def diff(a, b):
    d = [abs(x - y) for x, y in zip(curve[a], curve[b])]
    return max(d), sum(d) / len(d)
print("| pair | max abs diff | mean abs diff | loss at steps 0 / 100 / 199 |")
print("|---|---|---|---|")
for a, b in (("fused", "aten"), ("aten", "aten2")):
    mx, mean = diff(a, b)
    print(f"| {a} vs {b} | {mx:.4f} | {mean:.4f} | {curve[a][0]:.3f} / {curve[a][100]:.3f} / {curve[a][199]:.3f} |")
mx, mean = diff("fused", "aten")
print(f"\ntolerance (stated in advance): max <= 0.05 nats and mean <= 0.01 nats: {'PASS' if mx <= 0.05 and mean <= 0.01 else 'FAIL'}")
EOF
  cat "$OUT/numerics.md"
fi

$PY - "$OUT" > "$OUT/table.md" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
gemm = json.load(open(os.path.join(out, "gemm.json")))["gemm_bf16_tflops"]
print(f"bf16 GEMM ceiling (torch.mm 8192^3): {gemm:.0f} TFLOP/s\n")
print("| shape | implementation | step ms (median) | min–max | tokens/s | TFLOP/s | % of GEMM ceiling | peak GB | vs Tessera |")
print("|---|---|---|---|---|---|---|---|---|")
for shape in sorted({os.path.basename(p).split("-")[0] for p in glob.glob(os.path.join(out, "*-tessera.json"))}):
    rows = [(impl, json.load(open(os.path.join(out, f"{shape}-{impl}.json"))))
            for impl in ("tessera", "tessera-graph", "tessera-noproj", "tessera-unfused", "pytorch-eager",
                         "pytorch-eager-fused", "pytorch-compile")
            if os.path.exists(os.path.join(out, f"{shape}-{impl}.json"))]
    base = rows[0][1]["step_ms_median"]
    shape_json = rows[0][1]  # the default-model row: its dims are the shape's (a --model row reports defaults)
    for impl, r in rows:
        label = {"tessera-unfused": "tessera (fused_kernels: false, fused_projections: false)",
                 "tessera-noproj": "tessera (fused_projections: false)"}.get(impl, r["impl"])
        desc = (f"d{shape_json['dim']} L{shape_json['n_layers']} B{r['batch_size']}×T{r['seq_len']} "
                f"({r['parameters']/1e6:.0f}M)")
        print(f"| {desc} | {label} | {r['step_ms_median']:.1f} | {r['step_ms_min']:.1f}–{r['step_ms_max']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['tflops']:.0f} | {100 * r['tflops'] / gemm:.0f}% | "
              f"{r['peak_memory_gb']:.1f} | {r['step_ms_median'] / base:.3f}× |")
EOF
cat "$OUT/table.md"
