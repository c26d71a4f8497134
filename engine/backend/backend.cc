#include "engine/backend/backend.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace attnserve {

int32_t LargestLogit(std::span<const float> row) {
  int32_t best = -1;
  float max = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] > max || (best < 0 && row[i] == max)) {
      max = row[i];
      best = static_cast<int32_t>(i);
    }
  }
  return best < 0 ? 0 : best;
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
    if (st.logits == LogitsWanted::kLastArgMax && st.argmax == nullptr) {
      return absl::InvalidArgumentError("a sequence step wants its argmax but gives no place for it");
    }
    for (int32_t t : st.tokens) {
      if (t < 0 || t >= c.vocab_size) return absl::InvalidArgumentError(absl::StrCat("token id ", t, " is out of vocabulary"));
    }
  }
  return absl::OkStatus();
}

}  // namespace attnserve
