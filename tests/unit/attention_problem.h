// A random paged-attention problem for the CPU kernel tests: one sequence's
// layer over a scattered page table, and helpers to run the kernel and its
// naive reference on it.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/common/half.h"
#include "kernels/cpu/attention.h"

namespace attnserve::testing_attention {

// One sequence's layer: a scattered page table over a pool with spare pages,
// random fp16 keys and values, random queries at the last n_queries positions.
// Keys are uniform in [-2, 2] (variance 4/3), queries scaled so that logits
// spread over a few units and softmax is far from uniform. Queries are fp16
// values, so that the kernel's rounding of q (see RoundsQueryAndWeightsToFp16)
// leaves them as the reference sees them.
struct Problem {
  int page_size, head_dim, n_kv_heads, group, num_tokens, n_queries;
  std::vector<fp16_t> keys, values;
  std::vector<int32_t> page_table, positions;
  std::vector<float> q;
  std::vector<AttentionHeadParams> heads;
  std::vector<int32_t> reweight_keys;
  std::vector<KeyRange> spans;
  SequenceAttentionParams params;

  Problem(int page_size, int head_dim, int n_kv_heads, int group, int num_tokens, int n_queries, uint32_t seed,
          float q_scale = 3.0f)
      : page_size(page_size), head_dim(head_dim), n_kv_heads(n_kv_heads), group(group), num_tokens(num_tokens),
        n_queries(n_queries) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int used = (num_tokens + page_size - 1) / page_size;
    const int pool = used * 2 + 3;
    std::vector<int32_t> perm(pool);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    page_table.assign(perm.begin(), perm.begin() + used);
    // NaN wherever the sequence has no token, so any stray read shows.
    const size_t elements = static_cast<size_t>(pool) * n_kv_heads * page_size * head_dim;
    keys.assign(elements, FloatToFp16(NAN));
    values.assign(elements, FloatToFp16(NAN));
    std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
    for (int t = 0; t < num_tokens; ++t) {
      for (int g = 0; g < n_kv_heads; ++g) {
        const size_t row = ((static_cast<size_t>(page_table[t / page_size]) * n_kv_heads + g) * page_size +
                            t % page_size) * head_dim;
        for (int c = 0; c < head_dim; ++c) {
          keys[row + c] = FloatToFp16(uniform(rng));
          values[row + c] = FloatToFp16(uniform(rng));
        }
      }
    }
    for (int i = 0; i < n_queries; ++i) positions.push_back(num_tokens - n_queries + i);
    q.resize(static_cast<size_t>(n_queries) * n_q_heads() * head_dim);
    for (float& x : q) x = Fp16ToFloat(FloatToFp16(q_scale * normal(rng)));
    AttentionHeadParams dense;
    dense.logit_scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    heads.assign(n_q_heads(), dense);
  }

  int n_q_heads() const { return n_kv_heads * group; }

  PagedKv Kv() const {
    return PagedKv{keys.data(), values.data(), page_table.data(), page_size, n_kv_heads, head_dim, num_tokens};
  }
  AttentionQueries Queries() const { return AttentionQueries{q.data(), positions.data(), n_queries, n_q_heads()}; }
  SequenceAttentionParams Params() {
    SequenceAttentionParams p = params;
    p.heads = heads.data();
    p.spans = spans.data();
    p.num_spans = static_cast<int32_t>(spans.size());
    p.reweight_keys = reweight_keys.data();
    return p;
  }

  std::vector<float> RunKernel() {
    std::vector<float> out(q.size(), NAN);
    const SequenceAttentionParams p = Params();
    for (int g = 0; g < n_kv_heads; ++g) PagedAttentionKvHead(Queries(), Kv(), p, g, out.data());
    return out;
  }
  std::vector<float> RunReference() {
    std::vector<float> out(q.size(), NAN);
    PagedAttentionReference(Queries(), Kv(), Params(), out.data());
    return out;
  }

  // Each head gets its own sorted set of keys for ACT.
  void SetReweight(int h, std::vector<int32_t> set, float beta) {
    std::sort(set.begin(), set.end());
    heads[h].reweight_beta = beta;
    heads[h].reweight_keys_begin = static_cast<int32_t>(reweight_keys.size());
    heads[h].reweight_keys_size = static_cast<int32_t>(set.size());
    reweight_keys.insert(reweight_keys.end(), set.begin(), set.end());
  }
};

// The kernel rounds each weight p to fp16 before it multiplies v, as the
// reference implementation it mirrors does: relative error 2^-11 per weight,
// so |Δo| <= 2^-11 · Σ p |v| <= 2^-11 · 2 for values in [-2, 2]. Weights below
// fp16's normal range move by up to 2^-25 each, and float accumulation adds
// ~1e-5 over 1000 keys.
constexpr float kTolerance = 2.0f * 0x1p-11f + 1e-4f;

// Infinite where either side has a NaN (an output never written, say).
inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

inline void ExpectMatchesReference(Problem& pr) {
  const std::vector<float> got = pr.RunKernel();
  const std::vector<float> want = pr.RunReference();
  for (float x : got) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LT(MaxAbsDiff(got, want), kTolerance);
}

}  // namespace attnserve::testing_attention
