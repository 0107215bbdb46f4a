#!/usr/bin/env bash
# The README's test command: installs what is missing, builds everything, runs the whole suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/build.sh"
BUILD="${TESSERA_BUILD_DIR:-$ROOT/build}"
. "$ROOT/scripts/setup.sh" 2>/dev/null
cd "$BUILD"
start=$(date +%s)
ctest --output-on-failure -j "${TESSERA_JOBS:-$(nproc)}" "$@"
echo "[test] done in $(( $(date +%s) - start ))s" >&2
