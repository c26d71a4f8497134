#!/usr/bin/env bash
# One command for a GPU machine (DESIGN.md §8): the CUDA tests, then the
# GPU benchmarks, then the tests under compute-sanitizer (memcheck,
# racecheck). A failure is reported and the run goes on, so that one failing
# test still leaves the figures; the exit status is 1 if anything failed.
# With DEADLINE_S, programs that would start past DEADLINE_S - 30 seconds
# are skipped (and named, exit status 2 if nothing failed), so that a run
# under a hard time limit still ends on its own and reports.
#
# The programs come from .gpu-bundle/ when it is there (scripts/gpu-bundle.sh
# builds it on a development machine: a GPU machine with the driver and CUDA
# but without this project's build dependencies runs it through the bundled
# loader); else only the CUDA targets are built here into build-gpu/.
#
#   scripts/gpu-check.sh
#   CUDA_ARCHS=90 scripts/gpu-check.sh     # building here; default: native (the GPU present)
#   SKIP_BENCH=1 scripts/gpu-check.sh      # tests and sanitizers only
#   SKIP_TESTS=1 RESULTS_DIR=/tmp/r scripts/gpu-check.sh   # benchmarks only, results elsewhere
#   BENCH_FILTER=llama3_8b scripts/gpu-check.sh            # --benchmark_filter for every benchmark
#   DEADLINE_S=540 scripts/gpu-check.sh    # skip what would start in the last 30 s of 540
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-gpu}
CUDA_ARCHS=${CUDA_ARCHS:-native}
BUNDLE=.gpu-bundle
RESULTS_DIR=${RESULTS_DIR:-bench/results}
step() { printf '\n=== %s ===\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; exit 1; }
FAILED=() SKIPPED=()
fail() { printf 'gpu-check: FAILED: %s\n' "$*" >&2; FAILED+=("$*"); }
# Whether there is time to start `what`; a skip is remembered.
in_time() {
  [[ -z ${DEADLINE_S:-} ]] || ((SECONDS < DEADLINE_S - 30)) && return 0
  echo "gpu-check: out of time (${SECONDS}s of ${DEADLINE_S}s): skipped $*"
  SKIPPED+=("$*")
  return 1
}
# A program's time limit: `limit` seconds, or what is left before DEADLINE_S.
limit() {
  local s=$1
  [[ -n ${DEADLINE_S:-} ]] && ((DEADLINE_S - SECONDS - 10 < s)) && s=$((DEADLINE_S - SECONDS - 10))
  echo "$s"
}

step "GPU present"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: not a GPU machine"
run nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv \
  || die "nvidia-smi cannot talk to the driver"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr -c 'A-Za-z0-9\n' '_')

NVCC=${CUDACXX:-/usr/local/cuda/bin/nvcc}
[[ -x $NVCC ]] || NVCC=$(command -v nvcc) || die "nvcc not found"
SANITIZER=$(dirname "$NVCC")/compute-sanitizer
[[ -x $SANITIZER ]] || SANITIZER=$(command -v compute-sanitizer) || die "compute-sanitizer not found"

# PROGRAMS: name -> path; LAUNCH: what starts one (the bundle's loader with
# its libraries, and the machine's own for the driver and cuBLAS).
declare -A PROGRAMS
LAUNCH=()
if [[ -d $BUNDLE/bin ]]; then
  step "programs from ${BUNDLE}/ (built by scripts/gpu-bundle.sh)"
  built_from=$(cat "$BUNDLE/commit" 2>/dev/null || echo unknown)
  here=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  echo "bundle built from ${built_from}; checkout at ${here}"
  [[ $here == unknown || $built_from == "$here" ]] || echo "warning: the bundle is not this checkout's build"
  cuda_libs="$(dirname "$NVCC")/../lib64:/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu:/usr/lib64"
  # awk reads to the end: an early exit would kill ldconfig with SIGPIPE.
  driver=$( (ldconfig -p 2>/dev/null || true) | awk '/libcuda\.so\.1 / && !found {print $NF; found = 1}')
  [[ -n $driver ]] && cuda_libs="$(dirname "$driver"):$cuda_libs"
  LAUNCH=("$PWD/$BUNDLE/lib/ld-linux-x86-64.so.2" --library-path
          "$PWD/$BUNDLE/lib:$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
  for p in "$BUNDLE"/bin/*; do PROGRAMS[$(basename "$p")]=$PWD/$p; done
else
  step "configure ${BUILD_DIR} (Release, CUDA archs ${CUDA_ARCHS})"
  run cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" >/dev/null
  targets=()
  for src in tests/cuda/*_test.cc; do targets+=("$(basename "$src" .cc)"); done
  mapfile -t -O "${#targets[@]}" targets < <(ninja -C "$BUILD_DIR" -t targets all \
    | sed -n 's/^\([A-Za-z0-9_]*_cuda_bench\): phony$/\1/p' | grep -v '^cmake_' | sort -u)
  step "build ${targets[*]}"
  run ninja -C "$BUILD_DIR" -j"$(nproc)" "${targets[@]}"
  for t in "${targets[@]}"; do
    PROGRAMS[$t]=$(find "$BUILD_DIR/tests" "$BUILD_DIR/bench" -type f -name "$t" -perm -u+x | head -n1)
    [[ -n ${PROGRAMS[$t]} ]] || die "$t was built but is not under ${BUILD_DIR}"
  done
fi
mapfile -t CUDA_TESTS < <(printf '%s\n' "${!PROGRAMS[@]}" | grep '_test$' | sort)
# The kernels' benchmarks first, the whole engine under load (the longest) last.
mapfile -t CUDA_BENCHES < <(printf '%s\n' "${!PROGRAMS[@]}" | grep '_cuda_bench$' \
  | awk '{print (/^paged_/ ? 0 : /^engine_decode/ ? 1 : /^engine_load/ ? 3 : 2), $0}' | sort | cut -d' ' -f2)
((${#CUDA_TESTS[@]})) || die "no CUDA tests found"

# The engine test compares with the CPU on the default model (scripts/setup.sh
# fetches it), else on a synthetic model it writes itself.
[[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]] || echo "note: no default model: cuda_engine_test runs on its synthetic model"

# A skip for want of a device fails.
export ATTNSERVE_REQUIRE_GPU=1
[[ -n ${SKIP_TESTS:-} ]] && CUDA_TESTS=() && echo "SKIP_TESTS set: tests and sanitizers skipped"
((${#CUDA_TESTS[@]})) && step "CUDA tests"
for t in "${CUDA_TESTS[@]}"; do
  in_time "$t" || continue
  # The emulator's cases are CI's (scripts/test.sh): the device time is for the device's.
  run timeout "$(limit 300)" "${LAUNCH[@]}" "${PROGRAMS[$t]}" --gtest_brief=1 --gtest_filter='-*Emulator*' || fail "$t"
done

# GPU benchmarks: every <name>_cuda_bench is a Google Benchmark binary;
# results land in $RESULTS_DIR/<name>-<gpu>.json for bench/cuda_report.py.
step "GPU benchmarks"
if [[ -n ${SKIP_BENCH:-} ]]; then
  echo "SKIP_BENCH set: skipped"
else
  mkdir -p "$RESULTS_DIR"
  filter=()
  [[ -n ${BENCH_FILTER:-} ]] && filter=(--benchmark_filter="$BENCH_FILTER")
  for b in "${CUDA_BENCHES[@]}"; do
    in_time "$b" || continue
    run timeout "$(limit 300)" "${LAUNCH[@]}" "${PROGRAMS[$b]}" --benchmark_out="${RESULTS_DIR}/${b}-${GPU_NAME}.json" \
      --benchmark_out_format=json "${filter[@]}" || fail "benchmark ${b}"
  done
  # torch's SDPA on the attention kernels' shapes: the baselines that
  # bench/cuda_report.py sets the kernels against, where python3 has torch.
  if ! python3 -c 'import torch' 2>/dev/null; then
    echo "python3 has no torch: torch_attention skipped"
  elif in_time torch_attention; then
    run timeout "$(limit 300)" python3 bench/torch_attention.py \
      --out "${RESULTS_DIR}/torch_attention-${GPU_NAME}.json" || fail "torch_attention"
  fi
  if [[ -x .venv/bin/python ]]; then
    run .venv/bin/python bench/cuda_report.py --results "$RESULTS_DIR" --gpu "$GPU_NAME" || fail "cuda_report"
  fi
fi

# --error-exitcode makes any reported hazard fail the run; the tests' own
# result is checked too. -lineinfo (kernels/cuda/CMakeLists.txt) gives lines.
for tool in memcheck racecheck; do
  ((${#CUDA_TESTS[@]})) || break
  step "compute-sanitizer --tool ${tool}"
  extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  for t in "${CUDA_TESTS[@]}"; do
    # The engine test runs the whole model: under the sanitizer, one text's
    # forward passes (prefill steps through every kernel) suffice; decode
    # steps, eager and from graphs, are step_graphs_test's.
    # The emulator's cases run on the host: nothing for a sanitizer there.
    filter='-*Emulator*'
    [[ $t == cuda_engine_test ]] && filter='*TokenLogprobs*'
    in_time "${tool} ${t}" || continue
    run timeout "$(limit 240)" "$SANITIZER" --tool "$tool" "${extra[@]}" --error-exitcode 1 \
      "${LAUNCH[@]}" "${PROGRAMS[$t]}" --gtest_brief=1 --gtest_filter="$filter" || fail "compute-sanitizer ${tool} on ${t}"
  done
done

((${#SKIPPED[@]})) && printf 'gpu-check: skipped for time: %s\n' "${SKIPPED[@]}"
if ((${#FAILED[@]})); then
  printf 'gpu-check: FAILED: %s\n' "${FAILED[@]}" >&2
  step "gpu-check failed (${SECONDS}s)"
  exit 1
fi
if ((${#SKIPPED[@]})); then
  step "gpu-check incomplete: nothing failed, ${#SKIPPED[@]} skipped for time (${SECONDS}s)"
  exit 2
fi
step "gpu-check passed (${SECONDS}s)"
