// Token selection from one row of logits.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace attnserve {

struct SamplingConfig {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = all tokens
  float top_p = 1.0f;        // nucleus mass kept
  float min_p = 0.0f;        // drop tokens below min_p * p(top token)
  uint64_t seed = 0;
};

// Index of the largest logit; the lowest index wins a tie.
int32_t ArgMax(std::span<const float> logits);

// log-softmax of one row, in double for the normaliser.
void LogSoftmax(std::span<const float> logits, std::span<float> out);

// Seeded sampling: the same seed and logits give the same tokens.
class Sampler {
 public:
  explicit Sampler(const SamplingConfig& config);
  int32_t Sample(std::span<const float> logits);

 private:
  SamplingConfig config_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // (logit, token)
};

}  // namespace attnserve
