// Served throughput of the CUDA engine under load (DESIGN.md §7): 64, 128
// and 256 concurrent requests of 1024 prompt tokens and 256 generated ones
// (ignore_eos), all submitted at once, on random bf16 weights in
// Llama-3-8B's shape through the whole engine (scheduler, chunked prefill,
// paged KV cache, CUDA graphs, token picks), without gRPC. Reports output
// and total tokens per second over the makespan and the median time to
// first token; at 256 also five policies mixed (dense, streaming, virtual
// sink, temperature, duo) against the dense run. Its tokenizer, written on
// the spot, is byte-level with filler tokens up to Llama-3's 128256, so the
// output projection is Llama-3-8B's too. Run by scripts/gpu-check.sh;
// without a GPU every case reports the skip reason.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "bench/mixed_plans.h"
#include "engine/core/engine.h"
#include "engine/core/output_stream.h"
#include "engine/model/model.h"
#include "engine/model/model_shapes.h"
#include "kernels/cuda/device.h"
#include "tests/unit/synthetic_model.h"

namespace attnserve {
namespace {

constexpr int32_t kPromptTokens = 1024, kOutputTokens = 256;

const Model* DummyLlama3_8B(std::string* why) {
  static const absl::StatusOr<std::unique_ptr<Model>> model = []() -> absl::StatusOr<std::unique_ptr<Model>> {
    // Only its tokenizer is kept: the smallest body that writes.
    SyntheticLlamaShape file;
    file.n_layers = 1;
    file.hidden = 64;
    file.n_heads = 1;
    file.n_kv_heads = 1;
    file.ffn = 64;
    file.vocab = ModelShape("llama-3-8b").value().vocab_size;
    return LoadSyntheticLlama(
        "attnserve_engine_load_bench", [](const std::string& p) { return LoadModelWithoutWeights(p, "llama-3-8b"); },
        file);
  }();
  if (!model.ok()) *why = std::string(model.status().message());
  return model.ok() ? model->get() : nullptr;
}

void BM_ServeLoad(benchmark::State& state) {
  const int32_t streams = static_cast<int32_t>(state.range(0));
  const bool mixed = state.range(1) != 0;
  std::string why;
  if (!CudaDeviceAvailable(&why)) {
    state.SkipWithError(why.c_str());
    return;
  }
  const Model* model = DummyLlama3_8B(&why);
  if (model == nullptr) {
    state.SkipWithError(why.c_str());
    return;
  }
  EngineOptions options;
  options.backend = "cuda";
  options.max_num_seqs = streams;
  options.max_num_batched_tokens = 8192;
  options.max_waiting = streams;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(*model, options, nullptr);
  if (!engine.ok()) {
    state.SkipWithError(std::string(engine.status().message()).c_str());
    return;
  }
  // Distinct prompts of byte tokens: no prefix is shared.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> byte(0, 255);
  const std::vector<std::shared_ptr<const AttentionPlan>> plans = MixedPlans(model->config, kPromptTokens);
  std::vector<GenerationRequest> requests(streams);
  for (int32_t i = 0; i < streams; ++i) {
    GenerationRequest& r = requests[i];
    r.prompt_ids.resize(kPromptTokens);
    for (int32_t& t : r.prompt_ids) t = byte(rng);
    r.sampling.max_tokens = kOutputTokens;
    r.sampling.ignore_eos = true;
    if (mixed) r.attention = plans[i % plans.size()];
  }
  double seconds = 0.0, ttft_median = 0.0;
  int64_t generated = 0;
  for (auto _ : state) {
    std::vector<std::shared_ptr<OutputStream>> outs;
    const auto start = std::chrono::steady_clock::now();
    for (GenerationRequest r : requests) {
      r.arrival = absl::Now();
      outs.push_back(std::make_shared<OutputStream>(nullptr));
      if (absl::Status s = (*engine)->Submit(std::move(r), outs.back()).status(); !s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        return;
      }
    }
    std::vector<double> ttft;
    generated = 0;
    for (const auto& out : outs) {
      while (!out->closed()) absl::SleepFor(absl::Milliseconds(2));
      for (const GenerationDelta& d : out->Take()) {
        generated += static_cast<int64_t>(d.token_ids.size());
        if (!d.error.ok()) {
          state.SkipWithError(std::string(d.error.message()).c_str());
          return;
        }
        if (d.finish_reason != FinishReason::kNone) ttft.push_back(d.time_to_first_token_seconds);
      }
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(seconds);
    std::sort(ttft.begin(), ttft.end());
    ttft_median = ttft.empty() ? 0.0 : ttft[ttft.size() / 2];
  }
  state.counters["output_tok_s"] = static_cast<double>(generated) / seconds;
  state.counters["total_tok_s"] = static_cast<double>(generated + int64_t{streams} * kPromptTokens) / seconds;
  state.counters["ttft_median_s"] = ttft_median;
  state.counters["makespan_s"] = seconds;
}

BENCHMARK(BM_ServeLoad)
    ->Args({64, 0})
    ->Args({128, 0})
    ->Args({256, 0})
    ->Args({256, 1})
    ->ArgNames({"streams", "mixed"})
    ->UseManualTime()
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace
}  // namespace attnserve

BENCHMARK_MAIN();
