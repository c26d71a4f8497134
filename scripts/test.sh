#!/usr/bin/env bash
# Sets everything up and runs every test: C++ unit and model tests (ctest),
# the CUDA backend under the host emulator, the GGUF loader under
# ASan+UBSan, and the Python tests against llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n=== %s ===\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "build (build/)"
bash scripts/build.sh

step "ctest"
(cd build && ctest --output-on-failure -j"$(nproc)" --timeout 600)

# The CUDA backend whole (runtime, cuBLAS and graphs included) on the host
# emulator: its own tests against the CPU backend. The GPU-sized one
# (Llama-3.2-1B's shape, 8 GiB of emulated device memory) is for a GPU.
if [[ -f /usr/local/cuda/include/cuda_runtime.h ]]; then
  step "the CUDA backend under the emulator (build-emu/)"
  cmake -S . -B build-emu -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTNSERVE_CUDA_EMULATION=ON >/dev/null
  ninja -C build-emu -j"$(nproc)" runtime_test step_graphs_test cuda_engine_test
  ./build-emu/tests/runtime_test --gtest_brief=1
  # Two halves side by side, each a core for two to three minutes.
  (ATTNSERVE_SOURCE_DIR=$PWD ./build-emu/tests/step_graphs_test --gtest_brief=1 &&
    ATTNSERVE_SOURCE_DIR=$PWD ./build-emu/tests/cuda_engine_test --gtest_brief=1 --gtest_filter='*EveryPolicyAlone*') &
  side=$!
  ATTNSERVE_SOURCE_DIR=$PWD ./build-emu/tests/cuda_engine_test --gtest_brief=1 \
    --gtest_filter='-*EveryPolicyAlone*:*RandomWeights*'
  wait "$side"
fi

step "GGUF loader under ASan+UBSan (build-asan/)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DATTNSERVE_SANITIZE=ON >/dev/null
ninja -C build-asan -j"$(nproc)" gguf_test
ATTNSERVE_SOURCE_DIR=$PWD ./build-asan/tests/gguf_test --gtest_brief=1

step "models of every quantized type (models/quantized/)"
.venv/bin/python tests/python/make_quantized_models.py models/quantized

step "Python tests against llama.cpp"
ATTNSERVE_BUILD_DIR=$PWD/build .venv/bin/python -m pytest -q tests/python
