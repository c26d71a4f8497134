// The five policies the benchmarks mix in one batch, sequence i taking
// plans[i % 5]: dense (null), streaming (4 sinks, 256 window), a virtual
// sink, per-head temperatures, DuoAttention (every other head a retrieval
// head, the rest 4 sinks + 256 recent).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/model/model_config.h"
#include "engine/policy/planner.h"

namespace attnserve {

// The specs; specs[0] is dense.
inline std::vector<PolicySpec> MixedPolicySpecs(const ModelConfig& c) {
  std::vector<PolicySpec> specs(5);
  StreamingSpec streaming;
  streaming.window_tokens = 256;
  specs[1].sink = streaming;
  specs[2].virtual_sink = VirtualSinkSpec{1.5f, {}};
  specs[3].temperature = TemperatureSpec{std::vector<float>(static_cast<size_t>(c.n_layers) * c.n_heads, 0.8f)};
  DuoSpec duo;
  for (uint32_t l = 0; l < static_cast<uint32_t>(c.n_layers); ++l) {
    for (uint32_t h = 0; h < static_cast<uint32_t>(c.n_heads); h += 2) duo.retrieval_heads.push_back({l, h});
  }
  duo.sink_tokens = 4;
  duo.recent_tokens = 256;
  specs[4].mode = duo;
  return specs;
}

// Their plans for a prompt of `prompt_tokens`; plans[0] is null (dense).
inline std::vector<std::shared_ptr<const AttentionPlan>> MixedPlans(const ModelConfig& c, int32_t prompt_tokens) {
  const std::vector<PolicySpec> specs = MixedPolicySpecs(c);
  PromptInfo prompt;
  prompt.num_tokens = prompt_tokens;
  std::vector<std::shared_ptr<const AttentionPlan>> plans(1);
  for (size_t i = 1; i < specs.size(); ++i) plans.push_back(PlanAttention(specs[i], c, prompt).value());
  return plans;
}

}  // namespace attnserve
