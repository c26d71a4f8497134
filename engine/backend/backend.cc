#include "engine/backend/backend.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/sampling/sampler.h"

namespace attnserve {

void PickLogprobs(std::span<const float> row, TokenPick& pick) {
  SampledToken sampled;
  TokenLogprobs(row, pick.token, std::min(pick.top_logprobs, kMaxPickTop), sampled);
  pick.logprob = sampled.logprob;
  pick.n_top = static_cast<int32_t>(sampled.top.size());
  for (int32_t k = 0; k < pick.n_top; ++k) {
    pick.top_tokens[k] = sampled.top[k].token;
    pick.top_logprob_values[k] = sampled.top[k].logprob;
  }
}

int32_t PickToken(std::span<const float> row, const TokenPick& pick) {
  float max = -std::numeric_limits<float>::infinity();
  for (float l : row) max = l > max ? l : max;
  if (pick.temperature <= 0.0f || !std::isfinite(max)) return ArgMax(row);
  const float inv_t = 1.0f / pick.temperature;
  const auto x = [&](size_t i) { return ScaledLogit(row[i], max, inv_t); };
  const auto count_from = [&](float cut) {
    int64_t n = 0;
    for (size_t i = 0; i < row.size(); ++i) n += x(i) >= cut;
    return n;
  };
  const auto mass_from = [&](float cut) {
    float m = 0.0f;
    for (size_t i = 0; i < row.size(); ++i) m += x(i) >= cut ? PickWeight(x(i)) : 0.0f;
    return m;
  };
  const float cut = PickCut(pick, static_cast<int64_t>(row.size()), count_from, mass_from);
  const float target = static_cast<float>(pick.uniform) * mass_from(cut);
  float acc = 0.0f;
  int32_t last = -1;
  for (size_t i = 0; i < row.size(); ++i) {
    if (!(x(i) >= cut)) continue;
    acc += PickWeight(x(i));
    last = static_cast<int32_t>(i);
    if (acc > target) return last;
  }
  return last >= 0 ? last : ArgMax(row);
}

absl::Status CheckSteps(const ModelConfig& c, int32_t page_size, std::span<const SequenceStep> steps) {
  for (const SequenceStep& st : steps) {
    if (st.tokens.empty()) return absl::InvalidArgumentError("a sequence step has no tokens");
    const int64_t end = st.first_pos + static_cast<int64_t>(st.tokens.size());
    if (st.first_pos < 0 || st.pages == nullptr || end > ReservedTokens(*st.pages, page_size)) {
      return absl::InvalidArgumentError("a sequence step's positions are not reserved in its page table");
    }
    if (st.attention != nullptr && (st.attention->n_layers() != c.n_layers || st.attention->n_heads() != c.n_heads)) {
      return absl::InvalidArgumentError("a sequence's attention plan was made for another model");
    }
    if (st.act_sets != nullptr && st.attention == nullptr) {
      return absl::InvalidArgumentError("a sequence has ACT key sets but no attention plan");
    }
    if (st.act_sets != nullptr && !st.act_sets->complete() &&
        (st.first_pos != 0 || static_cast<int32_t>(st.tokens.size()) < st.attention->prompt_tokens())) {
      return absl::InvalidArgumentError("an ACT sequence's first step must cover its whole prompt");
    }
    if (st.linear != nullptr && (st.attention == nullptr || !st.attention->linear())) {
      return absl::InvalidArgumentError("a sequence has linear attention state but no linear plan");
    }
    if (st.logits == LogitsWanted::kLastPick && st.pick == nullptr) {
      return absl::InvalidArgumentError("a sequence step wants its token picked but says not how");
    }
    for (int32_t t : st.tokens) {
      if (t < 0 || t >= c.vocab_size) return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is out of vocabulary"));
    }
  }
  return absl::OkStatus();
}

}  // namespace attnserve
