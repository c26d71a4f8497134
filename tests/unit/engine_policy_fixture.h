// The fixture of the engine policy tests: the default model loaded once,
// engines, plans and greedy requests on it, and a backend-only greedy
// decoder to compare the engine with.
#pragma once

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
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
  static std::vector<int32_t> BackendGreedy(const GenerationRequest& r, int32_t max_tokens) {
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
      step.first_pos = pos;
      step.attention = r.attention.get();
      step.act_sets = act.get();
      step.linear = linear.get();
      EXPECT_TRUE(backend->Forward({&step, 1}, logits).ok());
      pos = static_cast<int32_t>(tokens.size());
      tokens.push_back(ArgMax(logits));
      generated.push_back(tokens.back());
    }
    return generated;
  }

  static inline std::unique_ptr<Model> model_;
};

}  // namespace attnserve
