#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>

namespace attnserve {

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

void LogSoftmax(std::span<const float> logits, std::span<float> out) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max));
  const float log_z = max + static_cast<float>(std::log(sum));
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_z;
}

Sampler::Sampler(const SamplingConfig& config) : config_(config), rng_(config.seed) {}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (config_.temperature <= 0.0f) return ArgMax(logits);
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  const auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = candidates_.size();
  if (config_.top_k > 0 && static_cast<size_t>(config_.top_k) < keep) {
    keep = config_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Probabilities at the request's temperature over the kept candidates.
  const float inv_t = 1.0f / config_.temperature;
  const float max = candidates_[0].first;
  std::vector<double> probs(keep);
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += probs[i] = std::exp(static_cast<double>((candidates_[i].first - max) * inv_t));
  size_t n = keep;
  if (config_.min_p > 0.0f) {
    const double floor = config_.min_p * probs[0];
    while (n > 1 && probs[n - 1] < floor) --n;
  }
  if (config_.top_p < 1.0f) {
    double mass = 0.0;
    for (size_t i = 0; i < n; ++i) {
      mass += probs[i] / sum;
      if (mass >= config_.top_p) { n = i + 1; break; }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < n; ++i) kept += probs[i];
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
  for (size_t i = 0; i < n; ++i) {
    u -= probs[i];
    if (u < 0.0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace attnserve
