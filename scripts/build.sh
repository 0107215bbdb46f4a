#!/usr/bin/env bash
# Configures and builds Tessera in build/ (CPU) after scripts/setup.sh. Extra arguments go to the build
# (e.g. `--target tessera`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/setup.sh"
BUILD="${TESSERA_BUILD_DIR:-$ROOT/build}"
JOBS="${TESSERA_JOBS:-$(nproc)}"
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "TESSERA_LIBTORCH:PATH=$TESSERA_LIBTORCH\$" "$BUILD/CMakeCache.txt"; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_LIBTORCH="$TESSERA_LIBTORCH" >/dev/null
fi
start=$(date +%s)
cmake --build "$BUILD" -j "$JOBS" "$@"
echo "[build] done in $(( $(date +%s) - start ))s ($BUILD)" >&2
