#include "kernels/cpu/quest.h"

#include "kernels/common/half.h"
#include "kernels/common/quest.h"

#include <algorithm>
#include <utility>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/quest.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attnserve {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// scores[i] = QuestPageScore of page pages[i] for KV head kv_head, with the
// bounds converted from fp16 a vector at a time (the scalar conversions
// would cost more than the attention Quest saves).
void QuestScoresImpl(const float* q_group, int group, const PagedKv& kv, int kv_head, const int32_t* pages,
                     int32_t n, float* scores) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<hwy::float16_t, decltype(d)> dh;
  const int N = static_cast<int>(hn::Lanes(d));
  const int hd = kv.head_dim;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t base = kv.Slice(kv_head, pages[i]) * hd;
    const auto* lo16 = reinterpret_cast<const hwy::float16_t*>(kv.key_min + base);
    const auto* hi16 = reinterpret_cast<const hwy::float16_t*>(kv.key_max + base);
    auto acc = hn::Zero(d);
    int c = 0;
    for (; c + N <= hd; c += N) {
      const auto lo = hn::PromoteTo(d, hn::LoadU(dh, lo16 + c));
      const auto hi = hn::PromoteTo(d, hn::LoadU(dh, hi16 + c));
      for (int h = 0; h < group; ++h) {
        const auto qv = hn::LoadU(d, q_group + h * hd + c);
        acc = hn::Add(acc, hn::Max(hn::Mul(qv, hi), hn::Mul(qv, lo)));
      }
    }
    float score = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; c < hd; ++c) {
      const float lo = Fp16ToFloat(kv.key_min[base + c]), hi = Fp16ToFloat(kv.key_max[base + c]);
      for (int h = 0; h < group; ++h) score += std::max(q_group[h * hd + c] * hi, q_group[h * hd + c] * lo);
    }
    scores[i] = score;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attnserve
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attnserve {

HWY_EXPORT(QuestScoresImpl);

void QuestScores(const float* q_group, int group, const PagedKv& kv, int kv_head, const int32_t* pages, int32_t n,
                 float* scores) {
  HWY_DYNAMIC_DISPATCH(QuestScoresImpl)(q_group, group, kv, kv_head, pages, n, scores);
}

bool SelectQuestPages(const float* q_group, int group, const PagedKv& kv, int kv_head, int32_t sink_tokens,
                      int32_t window_tokens, int32_t pos, int32_t budget_pages, std::vector<KeyRange>& ranges) {
  ranges.clear();
  const int32_t own = pos / kv.page_size;
  thread_local std::vector<int32_t> candidates;
  candidates.clear();
  for (int32_t p = 0; p < own; ++p) {
    if (QuestPageVisible(p, kv.page_size, sink_tokens, window_tokens, pos)) candidates.push_back(p);
  }
  const int32_t n = static_cast<int32_t>(candidates.size());
  if (n <= budget_pages) return false;

  thread_local std::vector<float> scores;
  thread_local std::vector<std::pair<float, int32_t>> scored;
  scores.resize(n);
  QuestScores(q_group, group, kv, kv_head, candidates.data(), n, scores.data());
  scored.clear();
  for (int32_t i = 0; i < n; ++i) scored.push_back({scores[i], candidates[i]});
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
#endif  // HWY_ONCE
