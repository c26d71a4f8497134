// Per-sequence logits processing and sampling, as vLLM does it. The engine
// calls SequenceSampler::Sample on each sequence's row of the batch's logits,
// then Accept with the token it keeps.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/sampling/sampler.h"
#include "engine/sampling/sampling_options.h"
#include "kernels/common/token_pick.h"

namespace attnserve {

// In order, on one row of logits (vocab entries):
// 1. logit_bias: logit[t] += bias.
// 2. repetition_penalty r over every token of the prompt and the output:
//    a positive logit is divided by r, a negative one multiplied by r.
// 3. frequency_penalty f and presence_penalty p over output tokens only:
//    logit[t] -= f * count(t), then logit[t] -= p.
// 4. min_tokens: until min_tokens tokens are generated, the EOG ids (unless
//    ignore_eos) and stop_token_ids are set to -inf.
// Token ids outside the row are skipped (ValidateSamplingOptions rejects
// them). Memory is proportional to the distinct tokens seen, not the vocab.
class LogitsProcessor {
 public:
  LogitsProcessor(const SamplingOptions& options, std::span<const int32_t> prompt,
                  std::span<const int32_t> eog_ids);

  void Apply(std::span<float> logits) const;
  // What Apply would do to the next row, one edit per token it touches
  // (EditLogit applies one): for a backend that processes the row itself.
  // Biases of a repeated token are summed before they are added.
  void Edits(std::vector<LogitEdit>& edits) const;
  // Apply would change the next row (a bias, a penalty, min_tokens' mask).
  bool ChangesLogits() const;
  // A token was appended to the output.
  void Accept(int32_t token);

 private:
  std::vector<std::pair<int32_t, float>> logit_bias_;
  float repetition_penalty_;
  float presence_penalty_;
  float frequency_penalty_;
  bool penalized_;  // any penalty on: counts_ is kept
  // Every prompt or output token -> its occurrences in the output.
  absl::flat_hash_map<int32_t, int32_t> counts_;
  int32_t min_tokens_;
  std::vector<int32_t> masked_before_min_tokens_;
  int32_t generated_ = 0;
};

class SequenceSampler {
 public:
  // prompt: the sequence's prompt ids; eog_ids: the model's end-of-generation
  // tokens (masked by min_tokens).
  SequenceSampler(const SamplingOptions& options, std::span<const int32_t> prompt,
                  std::span<const int32_t> eog_ids);

  // Processes `logits_row` in place (it is overwritten) and draws a token.
  SampledToken Sample(std::span<float> logits_row);
  // Sample would draw from the row as the model gave it (no logit bias,
  // penalties or min_tokens mask): a backend can pick the token
  // (LogitsWanted::kLastPick) without sending the row back.
  bool DrawsFromTheRowAsItIs() const { return !processor_.ChangesLogits(); }
  void Edits(std::vector<LogitEdit>& edits) const { processor_.Edits(edits); }
  bool greedy() const { return sampler_.greedy(); }
  bool logprobs() const { return sampler_.logprobs(); }
  // The pick to hand the backend instead of calling Sample; at temperature
  // > 0 it takes the stream's next uniform, as Sample would.
  TokenPick NextPick() { return sampler_.NextPick(); }
  void Accept(int32_t token) { processor_.Accept(token); }

 private:
  LogitsProcessor processor_;
  Sampler sampler_;
};

}  // namespace attnserve
