#!/usr/bin/env bash
# Builds Tessera on a CUDA machine against its PyTorch's LibTorch (CUDA on; OpenCV/libsndfile/FFmpeg off),
# into ${TESSERA_GPU_BUILD_DIR:-build-gpu}. `--tests` also builds the test suite; other arguments go to
# the build (e.g. --target tessera).
#  * The system g++ (/usr/bin/g++) is preferred over a $CXX that links libstdc++ statically: with such a
#    toolchain, calls like std::filesystem::remove_all bind to the copies the torch wheel's libraries
#    export, which crash.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
BUILD="${TESSERA_GPU_BUILD_DIR:-$ROOT/build-gpu}"
TESTS=OFF
args=()
for a in "$@"; do
  if [ "$a" = --tests ]; then TESTS=ON; else args+=("$a"); fi
done
[ -x /usr/bin/g++ ] && export CXX=/usr/bin/g++
TORCH_ROOT="$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
PREFIX="$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
mkdir -p "$BUILD"
start=$(date +%s)
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"  # core/kernels' CUDA sources
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DTESSERA_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DTESSERA_WITH_OPENCV=OFF -DTESSERA_WITH_SNDFILE=OFF -DTESSERA_WITH_FFMPEG=OFF -DTESSERA_BUILD_TESTS=$TESTS \
  -DTESSERA_LIBTORCH="$TORCH_ROOT" -DCMAKE_PREFIX_PATH="$PREFIX" > "$BUILD/configure.log" 2>&1 \
  || { tail -40 "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" "${args[@]}" > "$BUILD/build.log" 2>&1 || { grep -B2 -A12 "error" "$BUILD/build.log" | head -80; exit 1; }
echo "[gpu_build] $BUILD built in $(( $(date +%s) - start ))s (CXX=${CXX:-default}, tests $TESTS)" >&2
