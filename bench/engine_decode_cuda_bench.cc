// End-to-end decode steps of the CUDA backend on dummy bf16 weights at the
// shapes of Llama-3-8B, Llama-3.2-1B and Qwen2.5-7B (DESIGN.md §7): each
// step is a whole Backend::Forward (metadata staged and copied up, every
// layer, each sequence's greedy token picked on the device and copied
// back). Batch 1 is set against its roofline, the weight bytes a step reads
// over the device's copy bandwidth measured in the same run (target >= 0.85
// of it); batches 16-256 report decode throughput, every sequence at 1024
// tokens of context. Each runs with its steps replayed from CUDA graphs and
// launched kernel by kernel; batches 16-256 also with five policies mixed
// (dense, streaming, virtual sink, temperature, duo), against the uniform
// dense batch. Run by scripts/gpu-check.sh; without a GPU every case
// reports the skip reason.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "bench/mixed_plans.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/model_shapes.h"
#include "kernels/cuda/device.h"

namespace attnserve {
namespace {

constexpr int32_t kContext = 1024, kPageSize = 16, kSteps = 32;

void BM_Decode(benchmark::State& state, const char* shape) {
  const absl::StatusOr<ModelConfig> config = ModelShape(shape);
  if (!config.ok()) {
    state.SkipWithError(std::string(config.status().message()).c_str());
    return;
  }
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const bool cuda_graphs = state.range(1) != 0;
  const bool mixed = state.range(2) != 0;
  // Planned before the device is looked for: a run without one checks them.
  std::vector<std::shared_ptr<const AttentionPlan>> plans = MixedPlans(*config, kContext);
  if (!mixed) plans.resize(1);
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    state.SkipWithError(why.c_str());
    return;
  }
  Model model;
  model.config = *config;
  CudaBackendOptions options;
  options.dummy_weights = true;
  options.cuda_graphs = cuda_graphs;
  options.max_step_tokens = std::max(batch, 512);
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = CudaBackend::Create(model, options);
  if (!backend.ok()) {
    state.SkipWithError(std::string(backend.status().message()).c_str());
    return;
  }
  absl::StatusOr<KvCachePool> pool = (*backend)->CreateKvPool(kPageSize, 0.9);
  const int32_t pages_per_seq = (kContext + kSteps + 4) / kPageSize + 1;
  if (!pool.ok() || pool->num_pages() < batch * pages_per_seq) {
    state.SkipWithError(pool.ok() ? "the KV cache is too small for this batch" : std::string(pool.status().message()).c_str());
    return;
  }
  // Every sequence holds kContext tokens of (zero) keys; each step adds one.
  std::vector<PageTable> tables(batch);
  for (int32_t i = 0; i < batch; ++i) {
    for (int32_t p = 0; p < pages_per_seq; ++p) tables[i].pages.push_back(i * pages_per_seq + p);
    tables[i].num_tokens = kContext;
  }
  const std::vector<int32_t> token(batch, 1);
  // Greedy picks on the device, as the engine asks for them: no logits row
  // crosses PCIe.
  std::vector<TokenPick> picks(batch);
  std::vector<SequenceStep> steps(batch);
  std::vector<float> logits;
  int32_t pos = kContext;
  auto step = [&] {
    for (int32_t i = 0; i < batch; ++i) {
      steps[i].pages = &tables[i];
      steps[i].tokens = std::span<const int32_t>(&token[i], 1);
      steps[i].first_pos = pos;
      steps[i].logits = LogitsWanted::kLastPick;
      steps[i].pick = &picks[i];
      steps[i].attention = plans[i % plans.size()].get();
    }
    ++pos;
    return (*backend)->Forward(steps, logits);
  };
  // Two steps first: one runs the kernels, the next captures the graph.
  for (int warm = 0; warm < 2; ++warm) {
    if (absl::Status s = step(); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
  }
  double seconds = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = step(); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(t);
    seconds += t;
  }
  const double per_step = seconds / static_cast<double>(state.iterations());
  const double roofline = static_cast<double>((*backend)->decode_weight_bytes()) / (CopyBandwidth() * 1e9);
  state.counters["step_ms"] = per_step * 1e3;
  state.counters["tokens_per_s"] = batch / per_step;
  state.counters["weight_GB"] = (*backend)->decode_weight_bytes() / 1e9;
  state.counters["copy_GBps"] = CopyBandwidth();
  state.counters["roofline_ms"] = roofline * 1e3;
  state.counters["ratio_to_roofline"] = roofline / per_step;
  state.counters["graph_replays"] = static_cast<double>((*backend)->graph_counts().replayed);
}

void Batches(benchmark::internal::Benchmark* b) {
  for (int graphs : {1, 0}) {
    for (int batch : {1, 16, 64, 256}) b->Args({batch, graphs, 0});
  }
  // Against the dense rows of the same batch: DESIGN.md §7's >= 0.9.
  for (int batch : {16, 64, 256}) b->Args({batch, 1, 1});
  b->ArgNames({"batch", "graphs", "mixed"})->UseManualTime()->Iterations(kSteps)->Unit(benchmark::kMillisecond);
}

BENCHMARK_CAPTURE(BM_Decode, llama3_8b, "llama-3-8b")->Apply(Batches);
BENCHMARK_CAPTURE(BM_Decode, llama3_2_1b, "llama-3.2-1b")->Apply(Batches);
BENCHMARK_CAPTURE(BM_Decode, qwen2_5_7b, "qwen2.5-7b")->Apply(Batches);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
