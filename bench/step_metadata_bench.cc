// The host's share of a GPU decode step: BuildStepMetadata (the kernels'
// structs, page tables and the policies' parameters staged) at Llama-3-8B's
// shape, batch 1-256, every sequence at 1024 tokens of context; dense, and
// five policies mixed, shared or a plan per sequence; the plans kept on the
// device across steps (PlanStore) or, as the peer, staged again every step.
// Runs on any machine: the device addresses are computed, never touched. Set against the step's weight-bytes roofline on
// an H100-class device (3.35 TB/s of HBM, DESIGN.md §7): the GPU waits for
// this much host time every step, graphs or not.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <vector>

#include "bench/mixed_plans.h"
#include "engine/backend/cuda/step_metadata.h"
#include "engine/model/model_shapes.h"
#include "engine/policy/planner.h"

namespace attnserve {
namespace {

constexpr int32_t kContext = 1024, kPageSize = 16;
constexpr double kHbmBytesPerSecond = 3.35e12;

// policies 0: every sequence dense; 1: the engine benchmarks' five mixed
// policies (bench/mixed_plans.h), one plan each, shared by the sequences;
// 2: the same policies, a plan per sequence (requests of their own, as a
// server sees them).
std::vector<std::shared_ptr<const AttentionPlan>> Plans(const ModelConfig& c, int policies, int32_t batch) {
  if (policies == 0) return {nullptr};
  if (policies == 1) return MixedPlans(c, kContext);
  const std::vector<PolicySpec> specs = MixedPolicySpecs(c);
  PromptInfo prompt;
  prompt.num_tokens = kContext;
  std::vector<std::shared_ptr<const AttentionPlan>> plans;
  for (int32_t i = 0; i < batch; ++i) {
    plans.push_back(i % 5 == 0 ? nullptr : PlanAttention(specs[i % 5], c, prompt).value());
  }
  return plans;
}

void BM_BuildDecodeStep(benchmark::State& state) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const int policies = static_cast<int>(state.range(1));
  const bool plans_kept = state.range(2) != 0;
  const ModelConfig c = ModelShape("llama-3-8b").value();
  const int32_t pages_per_seq = kContext / kPageSize + 1;
  // Addresses only: nothing reads or writes the pool here.
  const KvCachePool::Allocator addresses = [](size_t) -> absl::StatusOr<std::shared_ptr<fp16_t>> {
    return std::shared_ptr<fp16_t>(reinterpret_cast<fp16_t*>(uintptr_t{1} << 40), [](fp16_t*) {});
  };
  KvCachePool pool =
      KvCachePool::Create({c.n_layers, c.n_kv_heads, c.head_dim, kPageSize}, batch * pages_per_seq, addresses, true)
          .value();
  const std::vector<std::shared_ptr<const AttentionPlan>> plans = Plans(c, policies, batch);
  std::vector<PageTable> tables(batch);
  std::vector<TokenPick> picks(batch);
  std::vector<SequenceStep> steps(batch);
  const std::vector<int32_t> token(batch, 1);
  for (int32_t i = 0; i < batch; ++i) {
    for (int32_t p = 0; p < pages_per_seq; ++p) tables[i].pages.push_back(i * pages_per_seq + p);
    tables[i].num_tokens = kContext;
    steps[i] = {&tables[i], std::span<const int32_t>(&token[i], 1), kContext, LogitsWanted::kLastPick,
                plans[i % plans.size()].get()};
    steps[i].pick = &picks[i];
  }
  AttentionHeadParams dense;
  const std::vector<AttentionHeadParams> dense_heads(c.n_heads, dense);
  const std::vector<float*> no_linear(batch, nullptr);
  std::vector<uint8_t> index(1), data(1);
  StepStaging staging;
  size_t staged = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    staging.index.Reset(index.data());
    staging.data.Reset(data.data());
    staging.outputs.Reset(nullptr);  // laid out, never touched
    staging.plans.BeginStep(reinterpret_cast<void*>(uintptr_t{1} << 44), size_t{1} << 30);
    absl::StatusOr<StepMetadata> m = BuildStepMetadata(c, pool, steps, no_linear, dense_heads, staging);
    benchmark::DoNotOptimize(m);
    // What is copied up: both arenas and the plans new this step (none
    // once every request's is on the device).
    staged = staging.index.size() + staging.data.size() + staging.plans.size() - staging.plans.upload_begin();
    if (plans_kept) staging.plans.Uploaded();  // else the next step stages them all again
  }
  const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
                      static_cast<double>(state.iterations());
  // The weight bytes one decode step reads: every matrix in bf16.
  const double weights = 2.0 * (static_cast<double>(c.n_layers) *
                                    (static_cast<double>(c.hidden) * (c.q_dim() + 2 * c.kv_dim() + c.q_dim()) +
                                     3.0 * c.hidden * c.ffn_hidden) +
                                static_cast<double>(c.vocab_size) * c.hidden);
  state.counters["staged_KB"] = static_cast<double>(staged) / 1024.0;
  state.counters["roofline_us"] = weights / kHbmBytesPerSecond * 1e6;
  state.counters["host_to_roofline"] = host / (weights / kHbmBytesPerSecond);
}

BENCHMARK(BM_BuildDecodeStep)
    ->ArgsProduct({{1, 16, 64, 256}, {0, 1, 2}, {0, 1}})
    ->ArgNames({"batch", "policies", "plans_kept"})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
