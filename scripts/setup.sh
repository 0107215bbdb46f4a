#!/usr/bin/env bash
# Installs what Tessera needs on a Debian machine, idempotently: a second run installs nothing.
#  * apt packages (compiler, CMake, Ninja, yaml-cpp, cxxopts, nlohmann-json, GoogleTest, OpenCV, ...);
#  * LibTorch 2.11.0: the torch wheel's bundled LibTorch (plus the CUDA runtime/CUPTI wheels its CPU
#    library references) into ${TESSERA_CACHE:-$HOME/.cache/tessera}, outside the checkout.
# Set TESSERA_LIBTORCH to any LibTorch root (e.g. .../site-packages/torch) to skip the download.
# Source it (`. scripts/setup.sh`) to get TESSERA_LIBTORCH exported, or run it to just install.
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE="${TESSERA_CACHE:-$HOME/.cache/tessera}"
log() { echo "[setup] $*" >&2; }

# ---- apt ---------------------------------------------------------------------------------------------
APT_PACKAGES=(build-essential cmake ninja-build pkg-config ccache python3 python3-pip
              libyaml-cpp-dev libcxxopts-dev nlohmann-json3-dev libgtest-dev
              libsentencepiece-dev zlib1g-dev fortunes
              libopencv-dev dataset-fashion-mnist  # image I/O (core/imgproc/imgcodecs used); a small real image set
              libsndfile1-dev libavformat-dev libavcodec-dev libswresample-dev libavutil-dev espeak-ng)  # audio I/O; speech corpus voices
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "missing packages: ${missing[*]} (need root or sudo to install)"; exit 1; }
    SUDO=sudo
  fi
  log "installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages: all present"
fi

# ---- LibTorch ----------------------------------------------------------------------------------------
valid_libtorch() { [ -f "$1/include/torch/csrc/api/include/torch/version.h" ] && [ -e "$1/lib/libtorch_cpu.so" ]; }

if [ -n "${TESSERA_LIBTORCH:-}" ]; then
  valid_libtorch "$TESSERA_LIBTORCH" || { log "TESSERA_LIBTORCH=$TESSERA_LIBTORCH is not a LibTorch root"; exit 1; }
  log "LibTorch: $TESSERA_LIBTORCH (from TESSERA_LIBTORCH)"
else
  site="$CACHE/torch-$TORCH_VERSION"
  if [ -f "$site/.complete" ] && valid_libtorch "$site/torch"; then
    log "LibTorch $TORCH_VERSION: cached in $site"
  else
    log "LibTorch $TORCH_VERSION: installing the torch wheel into $site (once; about 1.2 GB)"
    mkdir -p "$CACHE"
    rm -rf "$site.partial"
    pip_flags=(--quiet --disable-pip-version-check --no-deps --target "$site.partial")
    # Debian marks its Python externally managed; a --target install does not touch it.
    python3 -m pip install --help | grep -q -- --break-system-packages && pip_flags+=(--break-system-packages)
    python3 -m pip install "${pip_flags[@]}" "torch==$TORCH_VERSION" \
      "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*"
    rm -rf "$site"
    mv "$site.partial" "$site"
    touch "$site/.complete"
  fi
  export TESSERA_LIBTORCH="$site/torch"
fi

# ---- optional: the Python safetensors reader, an independent check in the checkpoint tests -------------
py="$CACHE/py"
if [ ! -f "$py/.complete" ]; then
  if python3 -m pip install --quiet --disable-pip-version-check --target "$py.partial" safetensors numpy \
       $(python3 -m pip install --help | grep -q -- --break-system-packages && echo --break-system-packages) \
       >/dev/null 2>&1; then
    rm -rf "$py"; mv "$py.partial" "$py"; touch "$py/.complete"
    log "python safetensors reader: installed in $py"
  else
    rm -rf "$py.partial"
    log "python safetensors reader: unavailable (the cross-check tests will be skipped)"
  fi
fi
export TESSERA_CACHE="$CACHE"
