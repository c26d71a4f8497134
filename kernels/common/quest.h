// Quest's page score (DESIGN.md §4, sparse), shared by the CPU and CUDA
// kernels: an upper bound of the group's summed q·k over the page's keys,
// from the page's elementwise key bounds,
//   Σ_h Σ_d max(q_hd · max_d, q_hd · min_d)
// with q after RoPE and before any scaling, summed over the query heads of
// one KV head so that GQA reads each page once.
#pragma once

#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

ATTN_HD float QuestBound(float x) { return x; }
ATTN_HD float QuestBound(uint16_t fp16) { return Fp16ToFloat(fp16); }

// q: [group][head_dim] floats; key_min, key_max: [head_dim] floats or fp16
// bits (as the cache keeps them).
template <typename Bound>
ATTN_HD float QuestPageScore(const float* q, int group, int head_dim, const Bound* key_min, const Bound* key_max) {
  float score = 0.0f;
  for (int h = 0; h < group; ++h) {
    const float* qh = q + h * head_dim;
    for (int d = 0; d < head_dim; ++d) {
      const float a = qh[d] * QuestBound(key_max[d]);
      const float b = qh[d] * QuestBound(key_min[d]);
      score += a > b ? a : b;
    }
  }
  return score;
}

// Whether page `page` holds a key that the query at query_pos may see under
// a (sink_tokens, window_tokens) rule: Quest only ranks such pages.
ATTN_HD bool QuestPageVisible(int32_t page, int32_t page_size, int32_t sink_tokens, int32_t window_tokens,
                              int32_t query_pos) {
  if (window_tokens == 0) return true;
  return page * page_size < sink_tokens || (page + 1) * page_size - 1 > query_pos - window_tokens;
}

}  // namespace attnserve
