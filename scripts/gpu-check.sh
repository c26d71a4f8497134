#!/usr/bin/env bash
# One command for a GPU machine (DESIGN.md §8): builds the CUDA tests into
# build-gpu/, runs them through ctest, then under compute-sanitizer (memcheck,
# racecheck), then any GPU benchmarks. Exits non-zero on the first failure.
# Only the CUDA targets are built, so it stays well under 10 minutes.
#
#   CUDA_ARCHS=90 scripts/gpu-check.sh     # default: native (the GPU present)
#   SKIP_BENCH=1 scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
CUDA_ARCHS=${CUDA_ARCHS:-native}
JOBS=$(nproc)
step() { printf '\n=== %s ===\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; exit 1; }

step "GPU present"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: not a GPU machine"
run nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv \
  || die "nvidia-smi cannot talk to the driver"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr -c 'A-Za-z0-9\n' '_')

NVCC=${CUDACXX:-/usr/local/cuda/bin/nvcc}
[[ -x $NVCC ]] || NVCC=$(command -v nvcc) || die "nvcc not found"
SANITIZER=$(dirname "$NVCC")/compute-sanitizer
[[ -x $SANITIZER ]] || SANITIZER=$(command -v compute-sanitizer) || die "compute-sanitizer not found"

step "configure ${BUILD_DIR} (Release, CUDA archs ${CUDA_ARCHS})"
run cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" >/dev/null

# Test targets are named after tests/cuda/<name>_test.cc; benchmarks are any
# target whose name ends in _cuda_bench.
CUDA_TESTS=()
for src in tests/cuda/*_test.cc; do
  [[ -e $src ]] && CUDA_TESTS+=("$(basename "$src" .cc)")
done
((${#CUDA_TESTS[@]})) || die "no tests under tests/cuda"
mapfile -t CUDA_BENCHES < <(ninja -C "$BUILD_DIR" -t targets all \
  | sed -n 's/^\([A-Za-z0-9_]*_cuda_bench\): phony$/\1/p' | sort -u)

# The engine test compares with the CPU on the default model (scripts/setup.sh
# fetches it), else on a synthetic model it writes itself.
[[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || echo "note: no default model: cuda_engine_test runs on its synthetic model"

step "build ${CUDA_TESTS[*]} ${CUDA_BENCHES[*]}"
run ninja -C "$BUILD_DIR" -j"$JOBS" attnserve_kernels_cuda "${CUDA_TESTS[@]}" "${CUDA_BENCHES[@]}"

# ctest names tests Suite.Case (gtest_discover_tests), not by binary: select
# the suites the CUDA binaries declare. A skip for want of a device fails.
export ATTNSERVE_REQUIRE_GPU=1
step "ctest: CUDA tests"
suites=()
for t in "${CUDA_TESTS[@]}"; do
  while IFS= read -r line; do
    [[ $line == *. && $line != " "* ]] && suites+=("${line%.}")
  done < <("$BUILD_DIR/tests/$t" --gtest_list_tests | sed 's/  *#.*//')
done
regex="^($(printf '%s\n' "${suites[@]}" | sort -u | sed 's/[][\.*^$+?(){}|]/\\&/g' | paste -sd'|'))\\."
(cd "$BUILD_DIR" && run ctest -R "$regex" --output-on-failure --no-tests=error -j"$JOBS" --timeout 120) \
  || die "ctest (CUDA tests)"

# --error-exitcode makes any reported hazard fail the run; the tests' own
# result is checked too. -lineinfo (kernels/cuda/CMakeLists.txt) gives lines.
for tool in memcheck racecheck; do
  step "compute-sanitizer --tool ${tool}"
  extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  for t in "${CUDA_TESTS[@]}"; do
    # The engine test runs the whole model: under the sanitizer, one text's
    # forward passes (prefill steps through every kernel) and the decode
    # steps of the graph test (eager, then captured and replayed) suffice.
    filter='*'
    [[ $t == cuda_engine_test ]] && filter='*TokenLogprobs*:*GraphReplays*'
    run timeout 240 "$SANITIZER" --tool "$tool" "${extra[@]}" --error-exitcode 1 \
      "$BUILD_DIR/tests/$t" --gtest_brief=1 --gtest_filter="$filter" || die "compute-sanitizer ${tool} on ${t}"
  done
done

# GPU benchmarks: every <name>_cuda_bench target (bench/) is a Google Benchmark
# binary; results land in bench/results/<name>-<gpu>.json for the reports.
step "GPU benchmarks"
if [[ -n ${SKIP_BENCH:-} ]]; then
  echo "SKIP_BENCH set: skipped"
elif ((${#CUDA_BENCHES[@]} == 0)); then
  echo "no *_cuda_bench targets yet: nothing to run"
else
  mkdir -p bench/results
  for b in "${CUDA_BENCHES[@]}"; do
    bin=$(find "$BUILD_DIR/bench" -type f -name "$b" -perm -u+x | head -n1)
    [[ -n $bin ]] || die "benchmark ${b} was built but not found under ${BUILD_DIR}/bench"
    run timeout 300 "$bin" --benchmark_out="bench/results/${b}-${GPU_NAME}.json" \
      --benchmark_out_format=json || die "benchmark ${b}"
  done
  # torch's SDPA on the decode kernel's shapes: the baseline that
  # bench/cuda_report.py sets the kernel against, where python3 has torch.
  if python3 -c 'import torch' 2>/dev/null; then
    run timeout 300 python3 bench/torch_decode_attention.py \
      --out "bench/results/torch_decode_attention-${GPU_NAME}.json" || die "torch_decode_attention"
  else
    echo "python3 has no torch: torch_decode_attention skipped"
  fi
  if [[ -x .venv/bin/python ]]; then
    run .venv/bin/python bench/cuda_report.py --gpu "$GPU_NAME" || die "cuda_report"
  fi
fi

step "gpu-check passed (${SECONDS}s)"
