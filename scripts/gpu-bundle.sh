#!/usr/bin/env bash
# Builds the CUDA tests and benchmarks here for Hopper (sm_90) and gathers
# them, with every shared library they load (the C library and its loader
# included), into .gpu-bundle/: a GPU machine that has the driver and CUDA
# but none of this project's build dependencies runs them as they are.
# scripts/gpu-check.sh uses the bundle when it finds one; carry it there.
#
#   scripts/gpu-bundle.sh                  # CUDA_ARCHS=80 for an A100
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu-bundle}
ARCHS=${CUDA_ARCHS:-90}
BUNDLE=.gpu-bundle

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" >/dev/null
tests=()
for src in tests/cuda/*_test.cc; do tests+=("$(basename "$src" .cc)"); done
mapfile -t benches < <(ninja -C "$BUILD_DIR" -t targets all \
  | sed -n 's/^\([A-Za-z0-9_]*_cuda_bench\): phony$/\1/p' | grep -v '^cmake_' | sort -u)
ninja -C "$BUILD_DIR" -j"$(nproc)" "${tests[@]}" "${benches[@]}"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"
for t in "${tests[@]}"; do cp "$BUILD_DIR/tests/$t" "$BUNDLE/bin/"; done
for b in "${benches[@]}"; do cp "$(find "$BUILD_DIR/bench" -type f -name "$b" -perm -u+x | head -n1)" "$BUNDLE/bin/"; done
strip --strip-debug "$BUNDLE"/bin/*
# ldd lists "name => /path (addr)" for libraries and "/path/ld-linux... (addr)"
# for the loader; CUDA's own libraries (the driver, cuBLAS) are opened at
# run time from the GPU machine's installation and are not among them.
for f in "$BUNDLE"/bin/*; do ldd "$f"; done \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u \
  | while read -r lib; do cp -L "$lib" "$BUNDLE/lib/"; done
[[ -x $BUNDLE/lib/ld-linux-x86-64.so.2 ]] || { echo "gpu-bundle: no loader gathered" >&2; exit 1; }
# gpu-check.sh warns when the checkout it runs in is another commit.
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ':!bench/results' || commit="${commit}-modified"
echo "$commit" > "$BUNDLE/commit"
echo "sm_${ARCHS}: $(ls "$BUNDLE/bin" | wc -l) programs, $(ls "$BUNDLE/lib" | wc -l) libraries, $(du -sh "$BUNDLE" | cut -f1)"
