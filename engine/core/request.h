// What the engine is asked to do and what it reports back, in engine types.
// The server maps protobuf messages onto these at its boundary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/policy/attention_plan.h"
#include "engine/sampling/sampling_options.h"

namespace attnserve {

enum class FinishReason { kNone, kStop, kLength, kAbort };

struct GenerationRequest {
  std::string request_id;
  std::vector<int32_t> prompt_ids;  // validated: non-empty, in vocabulary
  SamplingOptions sampling;         // validated
  int32_t priority = 0;             // higher runs first; FIFO within a priority
  absl::Time arrival = absl::InfinitePast();
  absl::Time deadline = absl::InfiniteFuture();  // the sequence is aborted when it passes
  // Planned for this prompt and the engine's model; null is dense attention
  // over the full cache.
  std::shared_ptr<const AttentionPlan> attention;
};

struct TokenLogprob {
  float logprob = 0.0f;
  std::vector<TopLogprob> top;
};

// Everything produced for one of a request's n completions since the last
// delivery; the engine coalesces deltas while the reader is behind.
struct GenerationDelta {
  int32_t index = 0;
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<TokenLogprob> logprobs;  // one per token when requested
  FinishReason finish_reason = FinishReason::kNone;  // set once, on the last delta
  int32_t prompt_tokens = 0;           // usage, on the last delta
  int32_t completion_tokens = 0;
  int32_t cached_prompt_tokens = 0;
  double queue_seconds = 0.0;
  double time_to_first_token_seconds = 0.0;
  absl::Status error;  // non-OK: the request failed (e.g. DEADLINE_EXCEEDED, CANCELLED)
};

}  // namespace attnserve
