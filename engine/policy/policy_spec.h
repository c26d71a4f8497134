// The engine's mirror of attnserve.v1.AttentionPolicy (proto/attnserve/v1/
// attention.proto): plain structs, so that the engine never sees protobuf.
// The server fills one in from the request; PlanAttention (planner.h)
// validates it and resolves defaults. Fields keep the proto's presence:
// std::optional where the proto has `optional` or a message field, so the
// planner can tell "not given" (use the default) from a given value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace attnserve {

// sink: keep every token up to the model's context.
struct FullCacheSpec {};

enum class StreamingPositions {
  kCache,     // RoPE positions are slots of the kept cache (the proto's default)
  kOriginal,  // absolute positions
};

// sink: StreamingLLM, the first sink_tokens and the last window_tokens.
struct StreamingSpec {
  std::optional<uint32_t> sink_tokens;  // default 4
  uint32_t window_tokens = 0;           // required, >= 1
  StreamingPositions positions = StreamingPositions::kCache;
};

// exp(logit) joins every softmax denominator; per_head_logits (layer-major,
// n_layers * n_heads) replaces logit when given.
struct VirtualSinkSpec {
  float logit = 0.0f;
  std::vector<float> per_head_logits;
};

// Empty layers/heads lists mean the policy's default set.
struct ActSpec {
  std::optional<float> beta;  // default 0.4
  std::optional<float> tau;   // default 0.1
  std::vector<uint32_t> layers;
  std::vector<uint32_t> heads;
};

struct ZeroTuningSpec {
  float gamma = 0.0f;  // required, > 0
  std::vector<uint32_t> layers;
  std::vector<uint32_t> heads;
};

// factors[l * n_heads + h] divides head (l, h)'s logits.
struct TemperatureSpec {
  std::vector<float> factors;
};

enum class SpanUnit {
  kChars,   // byte offsets into the prompt text (the proto's default)
  kTokens,  // token indices of the prompt
};

// [begin, end) of the prompt.
struct SpanSpec {
  uint32_t begin = 0;
  uint32_t end = 0;
  SpanUnit unit = SpanUnit::kChars;
};

struct EmphasisSpec {
  std::vector<SpanSpec> spans;
  std::optional<float> alpha;  // default 0.01
  std::vector<uint32_t> layers;
  std::vector<uint32_t> heads;
};

// mode: read every visible token.
struct DenseSpec {};

struct HeadRefSpec {
  uint32_t layer = 0;
  uint32_t head = 0;
};

struct DuoSpec {
  std::vector<HeadRefSpec> retrieval_heads;
  std::optional<uint32_t> sink_tokens;    // default 64
  std::optional<uint32_t> recent_tokens;  // default 256
};

// Quest is the only method.
struct SparseSpec {
  uint32_t token_budget = 0;             // required
  std::optional<uint32_t> dense_layers;  // default 2
};

// The second-order Taylor feature map is the only one.
struct LinearSpec {
  uint32_t window_tokens = 0;
  uint32_t sink_tokens = 0;
};

struct PolicySpec {
  std::variant<FullCacheSpec, StreamingSpec> sink;
  std::optional<VirtualSinkSpec> virtual_sink;
  std::optional<ActSpec> act;
  std::optional<ZeroTuningSpec> zero_tuning;
  std::optional<TemperatureSpec> temperature;
  std::optional<EmphasisSpec> emphasis;
  std::variant<DenseSpec, DuoSpec, SparseSpec, LinearSpec> mode;
  std::string profile;  // empty: none
};

}  // namespace attnserve
