#include "kernels/cpu/quest.h"

#include <algorithm>
#include <utility>

#include "kernels/common/half.h"
#include "kernels/common/quest.h"

namespace attnserve {

bool SelectQuestPages(const float* q_group, int group, const PagedKv& kv, int kv_head, int32_t sink_tokens,
                      int32_t window_tokens, int32_t pos, int32_t budget_pages, std::vector<KeyRange>& ranges) {
  ranges.clear();
  const int32_t own = pos / kv.page_size;
  thread_local std::vector<int32_t> candidates;
  candidates.clear();
  for (int32_t p = 0; p < own; ++p) {
    if (QuestPageVisible(p, kv.page_size, sink_tokens, window_tokens, pos)) candidates.push_back(p);
  }
  if (static_cast<int32_t>(candidates.size()) <= budget_pages) return false;

  const int hd = kv.head_dim;
  thread_local std::vector<float> lo, hi;
  thread_local std::vector<std::pair<float, int32_t>> scored;
  lo.resize(hd);
  hi.resize(hd);
  scored.clear();
  for (int32_t p : candidates) {
    const int64_t base = (static_cast<int64_t>(kv.page_table[p]) * kv.n_kv_heads + kv_head) * hd;
    for (int d = 0; d < hd; ++d) {
      lo[d] = Fp16ToFloat(kv.key_min[base + d]);
      hi[d] = Fp16ToFloat(kv.key_max[base + d]);
    }
    scored.push_back({QuestPageScore(q_group, group, hd, lo.data(), hi.data()), p});
  }
  const auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  std::nth_element(scored.begin(), scored.begin() + budget_pages, scored.end(), better);
  scored.resize(budget_pages);
  std::sort(scored.begin(), scored.end(),
            [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) { return a.second < b.second; });
  auto add = [&](int32_t begin, int32_t end) {
    if (!ranges.empty() && ranges.back().end == begin) {
      ranges.back().end = end;
    } else {
      ranges.push_back({begin, end});
    }
  };
  for (const auto& [score, p] : scored) add(p * kv.page_size, (p + 1) * kv.page_size);
  add(own * kv.page_size, pos + 1);
  return true;
}

}  // namespace attnserve
