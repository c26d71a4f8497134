#!/usr/bin/env bash
# Sets everything up and runs every test: C++ unit and model tests (ctest),
# the GGUF loader under ASan+UBSan, and the Python tests against llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s ===\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "build (build/)"
bash scripts/build.sh

step "ctest"
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 600)

step "GGUF loader under ASan+UBSan (build-asan/)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTNSERVE_SANITIZE=ON >/dev/null
ninja -C build-asan -j"$(nproc)" gguf_test
ATTNSERVE_SOURCE_DIR=$PWD ./build-asan/tests/gguf_test --gtest_brief=1

step "models of every quantized type (models/quantized/)"
.venv/bin/python tests/python/make_quantized_models.py models/quantized

step "Python tests against llama.cpp"
ATTNSERVE_BUILD_DIR=$PWD/build .venv/bin/python -m pytest -q tests/python
