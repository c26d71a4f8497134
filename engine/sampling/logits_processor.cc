#include "engine/sampling/logits_processor.h"

#include <limits>

namespace attnserve {

LogitsProcessor::LogitsProcessor(const SamplingOptions& options, std::span<const int32_t> prompt,
                                 std::span<const int32_t> eog_ids)
    : logit_bias_(options.logit_bias),
      repetition_penalty_(options.repetition_penalty),
      presence_penalty_(options.presence_penalty),
      frequency_penalty_(options.frequency_penalty),
      penalized_(options.repetition_penalty != 1.0f || options.presence_penalty != 0.0f ||
                 options.frequency_penalty != 0.0f),
      min_tokens_(options.min_tokens) {
  if (repetition_penalty_ != 1.0f) {
    for (int32_t t : prompt) counts_.try_emplace(t, 0);
  }
  if (min_tokens_ > 0) {
    masked_before_min_tokens_ = options.stop_token_ids;
    if (!options.ignore_eos) masked_before_min_tokens_.insert(masked_before_min_tokens_.end(), eog_ids.begin(), eog_ids.end());
  }
}

void LogitsProcessor::Apply(std::span<float> logits) const {
  const auto in_row = [&](int32_t t) { return t >= 0 && static_cast<size_t>(t) < logits.size(); };
  for (const auto& [token, bias] : logit_bias_) {
    if (in_row(token)) logits[token] += bias;
  }
  if (penalized_) {
    // Each token is touched once, so the map's iteration order does not matter.
    for (const auto& [token, count] : counts_) {
      if (!in_row(token)) continue;
      float& l = logits[token];
      if (repetition_penalty_ != 1.0f) l = l > 0.0f ? l / repetition_penalty_ : l * repetition_penalty_;
      if (count > 0) {
        l -= frequency_penalty_ * static_cast<float>(count);
        l -= presence_penalty_;
      }
    }
  }
  if (generated_ < min_tokens_) {
    for (int32_t t : masked_before_min_tokens_) {
      if (in_row(t)) logits[t] = -std::numeric_limits<float>::infinity();
    }
  }
}

void LogitsProcessor::Edits(std::vector<LogitEdit>& edits) const {
  edits.clear();
  absl::flat_hash_map<int32_t, size_t> at;
  const auto edit = [&](int32_t token) -> LogitEdit& {
    auto [it, inserted] = at.try_emplace(token, edits.size());
    if (inserted) edits.push_back(LogitEdit{token});
    return edits[it->second];
  };
  for (const auto& [token, bias] : logit_bias_) edit(token).bias += bias;
  if (penalized_) {
    for (const auto& [token, count] : counts_) {
      LogitEdit& e = edit(token);
      e.repetition = repetition_penalty_;
      if (count > 0) {
        e.frequency = frequency_penalty_ * static_cast<float>(count);
        e.presence = presence_penalty_;
      }
    }
  }
  if (generated_ < min_tokens_) {
    for (int32_t t : masked_before_min_tokens_) edit(t).mask = true;
  }
}

bool LogitsProcessor::ChangesLogits() const {
  return !logit_bias_.empty() || penalized_ || (generated_ < min_tokens_ && !masked_before_min_tokens_.empty());
}

void LogitsProcessor::Accept(int32_t token) {
  ++generated_;
  if (penalized_) ++counts_[token];
}

SequenceSampler::SequenceSampler(const SamplingOptions& options, std::span<const int32_t> prompt,
                                 std::span<const int32_t> eog_ids)
    : processor_(options, prompt, eog_ids), sampler_(options) {}

SampledToken SequenceSampler::Sample(std::span<float> logits_row) {
  processor_.Apply(logits_row);
  return sampler_.Sample(logits_row);
}

}  // namespace attnserve
