// GPU prefill attention (PrefillAttentionCuda) at Llama-3-8B's attention
// shapes (8 KV heads x 4 queries, head_dim 128, pages of 16 tokens in
// shuffled order): a chunk of 1024 queries at the end of a sequence of 4k to
// 32k tokens, causal, dense; and with emphasis' outside-span bias over the
// whole sequence, which takes every key through the per-key hooks (no tile
// is plain: PlainKeysFrom). Reports the kernel's TFLOP/s
// (Q·Kᵀ and P·V over the keys each query sees) against a cuBLAS bf16 GEMM of
// 8192^3 measured in the same run, the device's matrix rate as the
// project's GEMMs get it. Run
// by scripts/gpu-check.sh; without a GPU every case reports the skip reason.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "kernels/common/half.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/paged_prefill.h"

namespace attnserve {
namespace {

constexpr int kPageSize = 16, kKvHeads = 8, kGroup = 4, kHeadDim = 128, kChunk = 1024;
constexpr int kQHeads = kKvHeads * kGroup;

template <typename T>
DeviceBuffer Upload(const std::vector<T>& v) {
  DeviceBuffer b = DeviceBuffer::Allocate(std::max<size_t>(1, v.size()) * sizeof(T)).value();
  (void)b.CopyFromHost(v.data(), v.size() * sizeof(T));
  return b;
}

// The rate cuBLAS gets on a bf16 GEMM of 8192^3 (fp32 accumulation, as the
// project's), once per process.
double GemmTflops() {
  static const double tflops = [] {
    constexpr int32_t n = 8192;
    absl::StatusOr<CublasHandle> cublas = CublasHandle::Create(nullptr);
    if (!cublas.ok()) return 0.0;
    const size_t elements = static_cast<size_t>(n) * n;
    DeviceBuffer w = DeviceBuffer::Allocate(elements * 2).value(), x = DeviceBuffer::Allocate(elements * 2).value();
    DeviceBuffer y = DeviceBuffer::Allocate(elements * 4).value();
    cudaMemset(w.data(), 0, w.size());
    cudaMemset(x.data(), 0, x.size());
    const GemmBf16Args args{w.as<uint16_t>(), n, n, x.as<uint16_t>(), n, y.as<float>(), false};
    (void)GemmBf16(*cublas, args);
    const double s = SecondsPerCall([&] { (void)GemmBf16(*cublas, args); }, 10);
    return 2.0 * static_cast<double>(elements) * n / s / 1e12;
  }();
  return tflops;
}

// A chunk's attention over `context` tokens; `hooked` biases every key
// (emphasis with no span over a prompt of the whole sequence), which takes
// each through the per-key hooks, the dense chunk only its diagonal tiles.
void RunPrefill(benchmark::State& state, bool hooked) {
  const int context = static_cast<int>(state.range(0));
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    state.SkipWithError(why.c_str());
    return;
  }
  const int pages = (context + kPageSize - 1) / kPageSize;
  const int64_t elements = static_cast<int64_t>(pages) * kKvHeads * kPageSize * kHeadDim;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<fp16_t> kv(elements);
  for (fp16_t& x : kv) x = FloatToFp16(u(rng));
  const DeviceBuffer keys = Upload(kv), values = Upload(kv);
  std::vector<int32_t> order(pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  const DeviceBuffer table = Upload(order);

  AttentionHeadParams head;
  head.logit_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  head.outside_span_bias = hooked ? std::log(3.0f) : 0.0f;
  const DeviceBuffer heads = Upload(std::vector<AttentionHeadParams>(kQHeads, head));
  // The chunk's queries are the sequence's last kChunk positions.
  std::vector<DecodeSequence> entries(kChunk);
  std::vector<PrefillTile> tiles;
  const int per_tile = PrefillQueriesPerTile(kGroup);
  double flops = 0.0;
  for (int i = 0; i < kChunk; ++i) {
    DecodeSequence& e = entries[i];
    e.kv = PagedKv{keys.as<fp16_t>(), values.as<fp16_t>(), table.as<int32_t>(), kPageSize, kKvHeads, kHeadDim,
                   context};
    e.params.heads = heads.as<AttentionHeadParams>();
    e.params.prompt_tokens = hooked ? context : 0;
    e.query_pos = context - kChunk + i;
    e.row = i;
    if (i % per_tile == 0) tiles.push_back({i, 0});
    ++tiles.back().n_queries;
    flops += 4.0 * kHeadDim * kQHeads * (e.query_pos + 1);
  }
  std::vector<float> qh(static_cast<size_t>(kChunk) * kQHeads * kHeadDim);
  for (float& x : qh) x = u(rng);
  const DeviceBuffer d_entries = Upload(entries), d_tiles = Upload(tiles), q = Upload(qh);
  DeviceBuffer out = DeviceBuffer::Allocate(qh.size() * sizeof(float)).value();
  PrefillAttentionArgs a;
  a.entries = d_entries.as<DecodeSequence>();
  a.tiles = d_tiles.as<PrefillTile>();
  a.n_tiles = static_cast<int32_t>(tiles.size());
  a.q = q.as<float>();
  a.out = out.as<float>();
  a.n_q_heads = kQHeads;
  a.n_kv_heads = kKvHeads;
  a.head_dim = kHeadDim;
  if (absl::Status s = PrefillAttentionCuda(a, nullptr); !s.ok() || !CudaStreamSync(nullptr).ok()) {
    state.SkipWithError(s.ok() ? "the kernel failed" : std::string(s.message()).c_str());
    return;
  }
  double seconds = 0.0;
  for (auto _ : state) {
    seconds = SecondsPerCall([&] { (void)PrefillAttentionCuda(a, nullptr); }, 5);
    state.SetIterationTime(seconds);
  }
  const double tflops = flops / seconds / 1e12;
  state.counters["ms"] = seconds * 1e3;
  state.counters["attn_TFLOPs"] = tflops;
  state.counters["gemm_TFLOPs"] = GemmTflops();
  state.counters["ratio_to_gemm"] = GemmTflops() > 0.0 ? tflops / GemmTflops() : 0.0;
}

void BM_PrefillDense(benchmark::State& state) { RunPrefill(state, false); }
void BM_PrefillHooked(benchmark::State& state) { RunPrefill(state, true); }

BENCHMARK(BM_PrefillDense)
    ->Arg(4096)
    ->Arg(16384)
    ->Arg(32768)
    ->ArgName("context")
    ->UseManualTime()
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PrefillHooked)
    ->Arg(4096)
    ->Arg(32768)
    ->ArgName("context")
    ->UseManualTime()
    ->Iterations(3)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
