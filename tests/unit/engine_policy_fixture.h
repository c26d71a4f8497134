// The fixture of the engine policy tests: the default model loaded once,
// engines, plans and greedy requests on it, and a backend-only greedy
// decoder to compare the engine with.
#pragma once

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/engine.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/planner.h"
#include "engine/sampling/sampler.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "tests/unit/engine_test_util.h"

namespace attnserve {

inline StreamingSpec Original(uint32_t sink, uint32_t window) {
  StreamingSpec s;
  s.sink_tokens = sink;
  s.window_tokens = window;
  s.positions = StreamingPositions::kOriginal;
  return s;
}

inline StreamingSpec Cache(uint32_t sink, uint32_t window) {
  StreamingSpec s = Original(sink, window);
  s.positions = StreamingPositions::kCache;
  return s;
}

// The value of a counter series of `metrics` (0 when absent).
inline double CounterValue(const Metrics& metrics, const std::string& name,
                    const std::vector<std::pair<std::string, std::string>>& labels = {}) {
  for (const prometheus::MetricFamily& family : metrics.registry()->Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& m : family.metric) {
      bool match = true;
      for (const auto& [key, value] : labels) {
        match &= std::any_of(m.label.begin(), m.label.end(),
                             [&](const prometheus::ClientMetric::Label& l) { return l.name == key && l.value == value; });
      }
      if (match) return m.counter.value;
    }
  }
  return 0.0;
}

class EnginePolicyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ModelPath())) return;
    model_ = std::move(LoadModel(ModelPath())).value();
  }
  static void TearDownTestSuite() { model_.reset(); }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "model missing: run scripts/setup.sh (" << ModelPath() << ")";
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}, Metrics* metrics = nullptr) {
    absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(*model_, options, metrics);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  static std::shared_ptr<const AttentionPlan> Plan(const PolicySpec& spec, int32_t prompt_tokens) {
    PromptInfo prompt;
    prompt.num_tokens = prompt_tokens;
    absl::StatusOr<std::shared_ptr<const AttentionPlan>> plan = PlanAttention(spec, model_->config, prompt);
    EXPECT_TRUE(plan.ok()) << plan.status();
    return plan.ok() ? *plan : nullptr;
  }

  static GenerationRequest Greedy(const std::string& prompt, int32_t max_tokens, const PolicySpec* spec = nullptr) {
    GenerationRequest r;
    r.prompt_ids = model_->tokenizer->Encode(prompt, true, true);
    r.sampling.max_tokens = max_tokens;
    r.sampling.ignore_eos = true;
    r.arrival = absl::Now();
    if (spec != nullptr) r.attention = Plan(*spec, static_cast<int32_t>(r.prompt_ids.size()));
    return r;
  }

  // Greedy tokens from the backend alone: one sequence, no scheduler, and
  // no page ever released, so it checks that releasing pages changes nothing.
  // The prompt runs in steps of prefill_chunk tokens (0: in one step).
  static std::vector<int32_t> BackendGreedy(const GenerationRequest& r, int32_t max_tokens,
                                            int32_t prefill_chunk = 0) {
    const ModelConfig& c = model_->config;
    const int32_t page_size = 16;
    const int32_t pages = (static_cast<int32_t>(r.prompt_ids.size()) + max_tokens) / page_size + 1;
    KvCachePool pool = KvCachePool::Create({c.n_layers, c.n_kv_heads, c.head_dim, page_size}, pages).value();
    PageAllocator allocator(pages);
    std::unique_ptr<CpuBackend> backend = CpuBackend::Create(*model_, pool, {2, 512}).value();
    PageTable table;
    EXPECT_TRUE(ReservePages(table, pages * page_size, page_size, allocator).ok());
    std::vector<int32_t> tokens = r.prompt_ids, generated;
    std::vector<float> logits;
    std::unique_ptr<ActKeySets> act;
    if (r.attention != nullptr && r.attention->act()) act = std::make_unique<ActKeySets>(*r.attention);
    std::unique_ptr<LinearAttentionState> linear;
    if (r.attention != nullptr && r.attention->linear()) {
      linear = std::make_unique<LinearAttentionState>(c.n_layers, c.n_kv_heads, c.head_dim);
    }
    int32_t pos = 0;
    while (static_cast<int32_t>(generated.size()) < max_tokens) {
      SequenceStep step;
      step.pages = &table;
      step.tokens = std::span<const int32_t>(tokens).subspan(pos);
      if (prefill_chunk > 0 && static_cast<int32_t>(step.tokens.size()) > prefill_chunk) {
        step.tokens = step.tokens.first(prefill_chunk);
      }
      step.first_pos = pos;
      step.attention = r.attention.get();
      step.act_sets = act.get();
      step.linear = linear.get();
      EXPECT_TRUE(backend->Forward({&step, 1}, logits).ok());
      pos += static_cast<int32_t>(step.tokens.size());
      if (pos < static_cast<int32_t>(tokens.size())) continue;
      tokens.push_back(ArgMax(logits));
      generated.push_back(tokens.back());
    }
    return generated;
  }

  // Greedy tokens and logprobs of `prompt` under `spec` equal dense's, bit
  // for bit (a policy whose parameters leave attention as it is).
  void ExpectSameAsDense(const std::string& prompt, const PolicySpec& spec, int32_t tokens) {
    std::unique_ptr<Engine> engine = MakeEngine();
    const auto run = [&](const PolicySpec* s) {
      GenerationRequest r = Greedy(prompt, tokens, s);
      r.sampling.logprobs = true;
      Collector c;
      EXPECT_TRUE(engine->Submit(r, c.stream).ok());
      return c.Wait()[0];
    };
    const GenerationDelta want = run(nullptr);
    const GenerationDelta got = run(&spec);
    EXPECT_EQ(got.token_ids, want.token_ids);
    ASSERT_EQ(got.logprobs.size(), want.logprobs.size());
    for (size_t i = 0; i < got.logprobs.size(); ++i) EXPECT_EQ(got.logprobs[i].logprob, want.logprobs[i].logprob) << i;
  }

  // Sequences of `spec` in an engine whose KV cache holds `pages` pages, so
  // that they preempt each other: each gives what it gives alone, but for
  // near-ties (a recompute rounds differently).
  void ExpectSurvivesPreemption(const PolicySpec& spec, const std::vector<std::string>& prompts, int32_t tokens,
                                int32_t pages) {
    std::unique_ptr<Engine> reference = MakeEngine();
    EngineOptions tiny;
    tiny.page_size = 16;
    tiny.kv_cache_bytes = pages * KvCachePool::PageBytes({30, 3, 64, 16});
    tiny.max_num_batched_tokens = 64;
    std::unique_ptr<Engine> engine = MakeEngine(tiny);
    std::vector<GenerationDelta> expected;
    for (const std::string& prompt : prompts) {
      GenerationRequest r = Greedy(prompt, tokens, &spec);
      r.sampling.logprobs = true;
      r.sampling.top_logprobs = 2;
      Collector alone;
      ASSERT_TRUE(reference->Submit(std::move(r), alone.stream).ok());
      expected.push_back(alone.Wait()[0]);
    }
    std::vector<std::unique_ptr<Collector>> runs;
    for (const std::string& prompt : prompts) {
      runs.push_back(std::make_unique<Collector>());
      ASSERT_TRUE(engine->Submit(Greedy(prompt, tokens, &spec), runs.back()->stream).ok());
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      ExpectSameOrNearTie(runs[i]->Wait()[0].token_ids, expected[i], 0.05f, "sequence " + std::to_string(i));
    }
    EXPECT_GT(engine->stats().preemptions_total, 0);
    EXPECT_EQ(engine->stats().kv_pages_used, 0);
  }

  // Runs `r` alone in `engine`; also returns the most KV pages in use seen
  // while it ran.
  static std::pair<GenerationDelta, int32_t> RunWatchingPages(Engine& engine, const GenerationRequest& r) {
    Collector c;
    EXPECT_TRUE(engine.Submit(r, c.stream).ok());
    int32_t max_pages = 0;
    while (!c.stream->closed()) {
      max_pages = std::max(max_pages, engine.stats().kv_pages_used);
      absl::SleepFor(absl::Milliseconds(2));
    }
    return {c.Wait()[0], max_pages};
  }

  static inline std::unique_ptr<Model> model_;
};

}  // namespace attnserve
