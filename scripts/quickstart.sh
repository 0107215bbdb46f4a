#!/usr/bin/env bash
# The README's main command: installs what is missing, builds `tessera`, and runs the quickstart
# recipe (train -> checkpoint -> evaluate -> generate) on the embedded corpus. Extra arguments are
# passed to `tessera run` (e.g. train.steps=50, --force).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/build.sh" --target tessera
BUILD="${TESSERA_BUILD_DIR:-$ROOT/build}"
cd "$ROOT"
exec "$BUILD/recipes/tessera" run recipes/quickstart.yaml "$@"
