// Every attention policy once, at a model's shape: the CUDA tests run each
// alone and all of them in one batch.
#pragma once

#include <string>
#include <vector>

#include "engine/model/model_config.h"
#include "engine/policy/policy_spec.h"

namespace attnserve {

struct PolicyCase {
  std::string name;
  PolicySpec spec;
};

inline std::vector<PolicyCase> Policies(const ModelConfig& config) {
  std::vector<PolicyCase> cases;
  cases.push_back({"dense", PolicySpec{}});
  PolicySpec s;
  StreamingSpec streaming;
  streaming.sink_tokens = 4;
  streaming.window_tokens = 24;
  streaming.positions = StreamingPositions::kOriginal;
  s.sink = streaming;
  cases.push_back({"streaming original", s});
  streaming.positions = StreamingPositions::kCache;
  s.sink = streaming;
  cases.push_back({"streaming cache", s});
  s = {};
  s.virtual_sink = VirtualSinkSpec{1.5f, {}};
  cases.push_back({"virtual sink", s});
  s = {};
  s.zero_tuning = ZeroTuningSpec{1.5f, {}, {}};
  cases.push_back({"zero tuning", s});
  s = {};
  s.temperature = TemperatureSpec{std::vector<float>(static_cast<size_t>(config.n_layers) * config.n_heads, 0.8f)};
  cases.push_back({"temperature", s});
  s = {};
  DuoSpec duo;
  const uint32_t layers = config.n_layers, heads = config.n_heads;
  duo.retrieval_heads = {{0, 0}, {layers / 2, heads - 1}, {layers - 1, 1 % heads}};
  duo.sink_tokens = 4;
  duo.recent_tokens = 16;
  s.mode = duo;
  cases.push_back({"duo", s});
  s = {};
  s.mode = SparseSpec{32, 1};
  cases.push_back({"quest", s});
  s = {};
  s.mode = LinearSpec{16, 4};
  cases.push_back({"linear", s});
  s = {};
  s.act = ActSpec{};
  cases.push_back({"act", s});
  return cases;
}

}  // namespace attnserve
