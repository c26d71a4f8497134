// Token selection from one row of (already processed) logits: greedy, or
// temperature -> top_k -> top_p -> min_p -> one seeded draw.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engine/sampling/sampling_options.h"
#include "kernels/common/token_pick.h"

namespace attnserve {

// Index of the largest logit; the lowest index wins a tie.
int32_t ArgMax(std::span<const float> logits);

// log-softmax of one row.
void LogSoftmax(std::span<const float> logits, std::span<float> out);

struct SampledToken {
  int32_t token = 0;
  // Only filled when SamplingOptions::logprobs: log p(token) and the
  // top_logprobs most likely tokens (most likely first, lower id first on a
  // tie), all from the log-softmax of the logits given to Sample, i.e. AFTER
  // logit bias, penalties and min_tokens masking but BEFORE temperature and
  // top-k/top-p/min-p truncation. So they describe the distribution the
  // request's settings actually shaped (a banned or biased token shows it),
  // independent of how wide the draw was; vLLM's default reports the raw
  // model's logprobs instead. Masked tokens (-inf) are never alternatives.
  float logprob = 0.0f;
  std::vector<TopLogprob> top;
};

// out.logprob and out.top for `token` of this row, as Sample reports them
// (the row's log-softmax; top_n most likely, lower id first on a tie).
void TokenLogprobs(std::span<const float> logits, int32_t token, int32_t top_n, SampledToken& out);

// Reproducible: the same seed and the same sequence of logits rows give the
// same tokens, whatever else runs in the batch (one std::mt19937_64 per
// sequence, one draw per sampled token, a portable uniform from its bits).
// Scratch is thread-local, shared by the sequences sampled on a thread (a
// vocab-sized row per sequence would cost 200 KB each): no allocation per
// token in steady state, except the returned `top` when top_logprobs > 0.
// About 0.1-0.3 ms per 49152-token row with top-k/top-p (AVX2).
class Sampler {
 public:
  // Uses temperature, top_k, top_p, min_p, seed, logprobs and top_logprobs.
  explicit Sampler(const SamplingOptions& options);

  SampledToken Sample(std::span<const float> logits);
  bool greedy() const { return temperature_ <= 0.0f; }
  bool logprobs() const { return logprobs_; }
  // This sampler's settings as a TokenPick, with the stream's next uniform
  // at temperature > 0 (one draw per token, as Sample).
  TokenPick NextPick();

 private:
  // The token drawn at temperature > 0.
  int32_t Draw(std::span<const float> logits);
  // Uniform in [0, 1) from 53 bits of the stream.
  double Uniform();

  float temperature_;
  int32_t top_k_;
  float top_p_;
  float min_p_;
  bool logprobs_;
  int32_t top_logprobs_;
  std::mt19937_64 rng_;
};

}  // namespace attnserve
