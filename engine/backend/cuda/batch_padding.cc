#include "engine/backend/cuda/batch_padding.h"

#include <algorithm>

#include "engine/policy/act_key_sets.h"

namespace attnserve {
namespace {

constexpr int32_t kPaddingToken[1] = {0};

}  // namespace

int32_t PaddedBatchSize(int32_t n_seqs) {
  if (n_seqs <= 2) return n_seqs;
  if (n_seqs <= 4) return 4;
  return (n_seqs + 7) / 8 * 8;
}

bool PadsBatch(std::span<const SequenceStep> steps) {
  return std::all_of(steps.begin(), steps.end(), [](const SequenceStep& st) {
    return st.tokens.size() == 1 && (st.logits == LogitsWanted::kLastPick || st.logits == LogitsWanted::kNone) &&
           (st.act_sets == nullptr || st.act_sets->complete());
  });
}

BatchPadding::BatchPadding(const KvCachePool& pool) {
  const int32_t n = std::min(pool.scratch_pages(), kMaxBatchPadding);
  tables_.resize(n);
  picks_.resize(n);
  for (int32_t i = 0; i < n; ++i) tables_[i].pages = {pool.scratch_page(i)};
}

std::span<const SequenceStep> BatchPadding::Pad(std::span<const SequenceStep> steps) {
  const int32_t n = static_cast<int32_t>(steps.size());
  const int32_t padding = PaddedBatchSize(n) - n;
  if (padding == 0 || padding > static_cast<int32_t>(tables_.size()) || !PadsBatch(steps)) return steps;
  padded_.assign(steps.begin(), steps.end());
  for (int32_t i = 0; i < padding; ++i) {
    SequenceStep st;
    st.pages = &tables_[i];
    st.tokens = kPaddingToken;
    st.first_pos = 0;
    st.logits = LogitsWanted::kLastPick;
    picks_[i] = TokenPick{};
    st.pick = &picks_[i];
    padded_.push_back(st);
  }
  return padded_;
}

}  // namespace attnserve
