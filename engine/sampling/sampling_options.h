// How a request's tokens are chosen, in engine types: the server maps
// attnserve.v1.SamplingParams onto SamplingOptions field by field (proto
// defaults are the defaults here) and the engine validates it once on submit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace attnserve {

// Limits of sampling.proto; ValidateSamplingOptions enforces them.
inline constexpr float kMaxTemperature = 100.0f;
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr size_t kMaxStopTokenIds = 64;
inline constexpr float kMaxRepetitionPenalty = 2.0f;
inline constexpr float kMaxPresenceFrequencyPenalty = 2.0f;
inline constexpr float kMaxLogitBias = 100.0f;
inline constexpr size_t kMaxLogitBiasEntries = 300;
inline constexpr int32_t kMaxTopLogprobs = 20;
inline constexpr int32_t kMaxCompletions = 16;

struct SamplingOptions {
  int32_t max_tokens = 16;        // tokens generated at most, >= 1
  int32_t min_tokens = 0;         // EOG tokens, stop tokens and stop strings are ignored before this many
  float temperature = 0.0f;       // 0 = greedy
  int32_t top_k = 0;              // 0 = all tokens
  float top_p = 1.0f;             // nucleus mass in (0, 1]
  float min_p = 0.0f;             // drop tokens below min_p * p(top token)
  std::optional<uint64_t> seed;   // unset: each sequence seeds itself from std::random_device
  std::vector<std::string> stop;  // stop strings (not returned)
  std::vector<int32_t> stop_token_ids;  // stop tokens (returned)
  bool ignore_eos = false;
  float repetition_penalty = 1.0f;  // over prompt + output tokens; 1 = off
  float presence_penalty = 0.0f;    // over output tokens
  float frequency_penalty = 0.0f;   // over output tokens, per occurrence
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token, added logit); a repeated token adds up
  bool logprobs = false;
  int32_t top_logprobs = 0;  // needs logprobs
  int32_t n = 1;             // completions of the request
};

// One of the most likely tokens at a position, with its log-probability.
struct TopLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// INVALID_ARGUMENT whose message starts with the proto field path, e.g.
// "sampling.temperature: must be in [0, 100], got nan". Token ids must lie in
// [0, vocab_size); max_tokens in [1, max_new_tokens_allowed] (the model's
// context minus the prompt). The server should saturate uint32 proto values
// above INT32_MAX when it maps them, so they are reported as too large.
absl::Status ValidateSamplingOptions(const SamplingOptions& options, int32_t vocab_size,
                                     int32_t max_new_tokens_allowed);

}  // namespace attnserve
