#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "kernels/common/half.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using namespace testing_attention;

// Runs on each SIMD target the machine supports: the deployment CPU
// dispatches AVX2 while development machines may pick AVX-512.
class PagedAttentionTest : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_P(PagedAttentionTest, DenseMatchesReference) {
  const int page_sizes[] = {1, 16, 7};
  const int head_dims[] = {64, 40, 72, 128};
  const int groups[] = {1, 3, 4};
  const int token_counts[] = {1, 15, 16, 17, 100, 1000};
  uint32_t seed = 0;
  for (int ps : page_sizes) {
    for (int hd : head_dims) {
      for (int g : groups) {
        for (int n : token_counts) {
          // Decode (one query) and prefill (a causal run of queries, fewer
          // at long contexts where the reference is slow).
          for (int nq : {1, std::min(n, n >= 1000 ? 9 : 37)}) {
            SCOPED_TRACE(testing::Message() << "page " << ps << " head_dim " << hd << " G " << g << " tokens " << n
                                            << " queries " << nq);
            Problem pr(ps, hd, 2, g, n, nq, ++seed);
            ExpectMatchesReference(pr);
          }
        }
      }
    }
  }
}

TEST_P(PagedAttentionTest, FullPrefill) {
  for (int n : {17, 100, 300}) {
    Problem pr(16, 64, 3, 3, n, n, 100 + n);
    ExpectMatchesReference(pr);
  }
}

// Each hook must change the result (so the comparison means something) and
// the kernel must still match the reference.
class HookTest : public testing::TestWithParam<std::tuple<int64_t, std::tuple<int, int>>> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(std::get<0>(GetParam())); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
  Problem Make(uint32_t seed) {
    const auto [num_tokens, n_queries] = std::get<1>(GetParam());
    return Problem(16, 64, 2, 3, num_tokens, n_queries, seed);
  }
  void Check(Problem& pr, bool expect_effect = true) {
    Problem dense = pr;
    dense.params = SequenceAttentionParams{};
    dense.spans.clear();
    dense.reweight_keys.clear();
    AttentionHeadParams plain;
    plain.logit_scale = 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
    dense.heads.assign(pr.n_q_heads(), plain);
    if (expect_effect) {
      EXPECT_GT(MaxAbsDiff(pr.RunReference(), dense.RunReference()), 1e-3f) << "the hook had no effect";
    }
    ExpectMatchesReference(pr);
  }
};

TEST_P(HookTest, WindowAndSinks) {
  for (auto [sink, window] : {std::pair{4, 32}, {0, 10}, {4, 1}, {1, 100}, {20, 40}}) {
    SCOPED_TRACE(testing::Message() << "sink " << sink << " window " << window);
    Problem pr = Make(1);
    pr.params.sink_tokens = sink;
    pr.params.window_tokens = window;
    if (window >= pr.num_tokens) {
      ExpectMatchesReference(pr);
    } else {
      Check(pr);
    }
  }
}

TEST_P(HookTest, FirstTokenBias) {
  // A large gamma always shows; a small one only where token 0 had mass.
  for (float gamma : {1e4f, 0.05f}) {
    Problem pr = Make(2);
    for (auto& h : pr.heads) h.first_token_bias = std::log(gamma);
    pr.heads[1].first_token_bias = 0.0f;
    Check(pr, gamma > 1.0f);
  }
}

TEST_P(HookTest, OutsideSpanBias) {
  Problem pr = Make(3);
  const int n = pr.num_tokens;
  pr.spans = {{0, 1}, {5, std::min(20, n)}};
  if (n >= 80) pr.spans.push_back({50, 60});
  pr.params.prompt_tokens = std::min(80, n);
  for (int h = 0; h < pr.n_q_heads(); h += 2) pr.heads[h].outside_span_bias = std::log(0.01f);
  Check(pr);
}

TEST_P(HookTest, VirtualSink) {
  Problem pr = Make(4);
  const float logits[] = {-INFINITY, 0.0f, 2.5f, -1.0f, 30.0f, 1.0f};
  for (int h = 0; h < pr.n_q_heads(); ++h) pr.heads[h].virtual_sink_logit = logits[h];
  Check(pr);
}

TEST_P(HookTest, Temperature) {
  Problem pr = Make(5);
  const float temps[] = {0.5f, 1.0f, 2.0f, 0.25f, 4.0f, 1.5f};
  for (int h = 0; h < pr.n_q_heads(); ++h) pr.heads[h].logit_scale /= temps[h];
  Check(pr);
}

TEST_P(HookTest, ActReweight) {
  Problem pr = Make(6);
  const int n = pr.num_tokens;
  std::vector<int32_t> every_third;  // enough mass for the move to show
  for (int j = 1; j < n; j += 3) every_third.push_back(j);
  pr.SetReweight(0, every_third, 0.4f);
  pr.SetReweight(2, {n / 2, n - 1}, 0.1f);
  pr.SetReweight(3, {0, 3}, 0.4f);  // token 0 in the set: nothing else special about it
  pr.SetReweight(4, {}, 0.4f);      // empty set: no effect
  pr.SetReweight(5, {1, 2, 3}, 1.0f);  // beta 1: no effect
  Check(pr);
}

TEST_P(HookTest, AllCombined) {
  Problem pr = Make(7);
  const int n = pr.num_tokens;
  pr.params.sink_tokens = 4;
  pr.params.window_tokens = 48;
  pr.spans = {{2, 9}};
  if (n >= 60) pr.spans.push_back({30, 45});
  pr.params.prompt_tokens = std::min(60, n);
  const float temps[] = {0.5f, 1.0f, 2.0f, 0.25f, 4.0f, 1.5f};
  const float sinks[] = {-INFINITY, 0.0f, 2.5f, -1.0f, 1.0f, -INFINITY};
  for (int h = 0; h < pr.n_q_heads(); ++h) {
    pr.heads[h].logit_scale /= temps[h];
    pr.heads[h].virtual_sink_logit = sinks[h];
    pr.heads[h].first_token_bias = h % 2 ? std::log(2.0f) : 0.0f;
    pr.heads[h].outside_span_bias = h % 3 ? std::log(0.05f) : 0.0f;
  }
  pr.SetReweight(0, {1, 2, std::max(0, n - 3)}, 0.4f);
  pr.SetReweight(1, {3, std::max(0, n - 2)}, 0.2f);
  pr.SetReweight(4, {1, std::max(0, n - 1)}, 0.6f);
  Check(pr);
}

// DuoAttention: streaming heads with their own sinks and window next to
// heads that see everything, in one KV group and in groups of their own.
TEST_P(HookTest, HeadWindows) {
  for (bool whole_groups : {false, true}) {
    SCOPED_TRACE(whole_groups ? "whole groups streaming" : "mixed groups");
    Problem pr = Make(8);
    const int32_t sinks[] = {4, 0, 2, 4, 1, 16};
    const int32_t windows[] = {8, 0, 40, 8, 1, 3};
    for (int h = 0; h < pr.n_q_heads(); ++h) {
      if (!whole_groups && h % 3 == 1) continue;  // a retrieval head in every group
      pr.heads[h].sink_tokens = sinks[h];
      pr.heads[h].window_tokens = whole_groups && windows[h] == 0 ? 5 : windows[h];
    }
    Check(pr, pr.num_tokens > 17);
  }
}

INSTANTIATE_TEST_SUITE_P(TargetsAndSizes, HookTest,
                         testing::Combine(testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                                          testing::Values(std::tuple{100, 1}, std::tuple{100, 20},
                                                          std::tuple{1000, 1}, std::tuple{1000, 37},
                                                          std::tuple{17, 17})));

// A window that evicts whole pages for every query: the kernel skips them,
// and poisoning them proves it never read them.
TEST_P(PagedAttentionTest, EvictedPagesAreNotRead) {
  Problem pr(16, 64, 1, 3, 1000, 5, 11);
  pr.params.sink_tokens = 4;
  pr.params.window_tokens = 64;
  const std::vector<float> want = pr.RunReference();
  const size_t page_elems = static_cast<size_t>(pr.n_kv_heads) * pr.page_size * pr.head_dim;
  for (int p = 1; p < (1000 - 5 - 64) / 16; ++p) {
    const size_t base = pr.page_table[p] * page_elems;
    std::fill(pr.keys.begin() + base, pr.keys.begin() + base + page_elems, FloatToFp16(NAN));
    std::fill(pr.values.begin() + base, pr.values.begin() + base + page_elems, FloatToFp16(NAN));
  }
  EXPECT_LT(MaxAbsDiff(pr.RunKernel(), want), kTolerance);
}

// A KV group whose query heads all have their own windows reads only the
// widest of them.
TEST_P(PagedAttentionTest, StreamingHeadGroupsDoNotReadHiddenPages) {
  Problem pr(16, 64, 2, 3, 1000, 5, 12);
  for (int h = 3; h < 6; ++h) {  // KV head 1's group
    pr.heads[h].sink_tokens = 4 + h;
    pr.heads[h].window_tokens = 40 + 8 * h;
  }
  const std::vector<float> want = pr.RunReference();
  const size_t head_elems = static_cast<size_t>(pr.page_size) * pr.head_dim;
  for (int p = 1; p < (1000 - 5 - 80) / 16; ++p) {
    const size_t base = (static_cast<size_t>(pr.page_table[p]) * pr.n_kv_heads + 1) * head_elems;
    std::fill(pr.keys.begin() + base, pr.keys.begin() + base + head_elems, FloatToFp16(NAN));
    std::fill(pr.values.begin() + base, pr.values.begin() + base + head_elems, FloatToFp16(NAN));
  }
  EXPECT_LT(MaxAbsDiff(pr.RunKernel(), want), kTolerance);
}

// The reference against formulas written out by hand for one query over five
// keys, so a mistake shared by the reference and the hooks cannot hide.
TEST_P(PagedAttentionTest, ReferenceMatchesHandComputedCase) {
  // head_dim 2, one head, page size 2: keys and values exact in fp16.
  const float k[5][2] = {{1, 0}, {0, 1}, {1, 1}, {-1, 0}, {0.5f, 0.5f}};
  std::vector<fp16_t> keys(3 * 2 * 2, 0), values(3 * 2 * 2, 0);
  const std::vector<int32_t> page_table = {2, 0, 1};
  for (int t = 0; t < 5; ++t) {
    const int base = (page_table[t / 2] * 2 + t % 2) * 2;
    keys[base] = FloatToFp16(k[t][0]);
    keys[base + 1] = FloatToFp16(k[t][1]);
    values[base] = FloatToFp16(static_cast<float>(t));
    values[base + 1] = FloatToFp16(1.0f);
  }
  const float q[2] = {2.0f, 0.0f};
  const int32_t pos = 4;
  const PagedKv kv{keys.data(), values.data(), page_table.data(), 2, 1, 2, 5};
  const AttentionQueries queries{q, &pos, 1, 1};
  AttentionHeadParams head;
  head.logit_scale = 0.5f;  // logits q·k/2: 1, 0, 1, -1, 0.5
  SequenceAttentionParams params;
  params.heads = &head;

  auto run = [&](float* ref, float* fast) {
    PagedAttentionReference(queries, kv, params, ref);
    PagedAttentionKvHead(queries, kv, params, 0, fast);
  };
  float ref[2], fast[2];

  // Dense.
  {
    const double e[5] = {std::exp(1.0), 1.0, std::exp(1.0), std::exp(-1.0), std::exp(0.5)};
    const double d = e[0] + e[1] + e[2] + e[3] + e[4];
    const double o0 = (e[1] * 1 + e[2] * 2 + e[3] * 3 + e[4] * 4) / d;
    run(ref, fast);
    EXPECT_NEAR(ref[0], o0, 1e-6);
    EXPECT_NEAR(ref[1], 1.0, 1e-6);
    EXPECT_NEAR(fast[0], o0, kTolerance);
    EXPECT_NEAR(fast[1], 1.0, kTolerance);
  }

  // Every hook: sink 1 + window 2 leave keys {0, 3, 4}; key 0 gets ln 2 and,
  // being outside the span [3, 4) of a 5-token prompt, ln 0.5 (net 0), as does
  // key 4; a virtual sink of logit 0 adds 1 to the denominator; ACT with set
  // {3} and beta 0.5 halves key 3 and gives its loss to keys 0 and 4.
  {
    const KeyRange span{3, 4};
    const int32_t set[] = {3};
    params.sink_tokens = 1;
    params.window_tokens = 2;
    params.spans = &span;
    params.num_spans = 1;
    params.prompt_tokens = 5;
    params.reweight_keys = set;
    head.first_token_bias = std::log(2.0f);
    head.outside_span_bias = std::log(0.5f);
    head.virtual_sink_logit = 0.0f;
    head.reweight_beta = 0.5f;
    head.reweight_keys_size = 1;
    const double e0 = std::exp(1.0), e3 = std::exp(-1.0), e4 = 0.5 * std::exp(0.5);
    const double d = e0 + e3 + e4 + 1.0;
    const double p0 = e0 / d, p3 = e3 / d, p4 = e4 / d;
    const double lift = 1.0 + 0.5 * p3 / (p0 + p4);
    const double w0 = p0 * lift, w3 = 0.5 * p3, w4 = p4 * lift;
    run(ref, fast);
    EXPECT_NEAR(ref[0], w3 * 3 + w4 * 4, 1e-6);
    EXPECT_NEAR(ref[1], w0 + w3 + w4, 1e-6);
    EXPECT_NEAR(fast[0], w3 * 3 + w4 * 4, kTolerance);
    EXPECT_NEAR(fast[1], w0 + w3 + w4, kTolerance);
  }
}

float RoundFp16(double x) { return Fp16ToFloat(FloatToFp16(static_cast<float>(x))); }

// The kernel's own numerics, which mirror its reference implementation
// (llama.cpp's CPU attention): q rounded to fp16 before the dot products; the
// softmax of the whole row, ACT applied to the normalised weights, then each
// weight rounded to fp16 before it multiplies v. The expected outputs follow
// that two-pass formula in double; the queries are not fp16 values and one
// weight falls below fp16's normal range, so each rounding shows.
TEST_P(PagedAttentionTest, RoundsQueryAndWeightsToFp16) {
  const int hd = 8, n = 6;
  const float q[hd] = {3.0007f, -1.23456f, 0.50003f, 2.71828f, -0.33331f, 1.41421f, -2.2222f, 0.1111f};
  const float k[n][hd] = {{0.5f, 0.25f, -1, 1, 0, 0.75f, -0.5f, 2},
                          {1, -1, 0.5f, 0.5f, 1.5f, 0, 0.25f, -1},
                          {-1, 0.5f, 1, -0.5f, 0, 1, 1, 0.5f},
                          {0.25f, 0.25f, 0.25f, 0.5f, -1, -1, 0, 0},
                          {-2, -1.5f, -1, -2, 1, -1, 2, -1},
                          {0.75f, -0.25f, 0.5f, 1.25f, 0.5f, 0.5f, -0.75f, 0.25f}};
  std::vector<fp16_t> keys(n * hd), values(n * hd);
  for (int t = 0; t < n; ++t) {
    for (int c = 0; c < hd; ++c) {
      keys[t * hd + c] = FloatToFp16(k[t][c]);
      // Key 4's logit is ~15 below the maximum: its weight is an fp16
      // subnormal, and a large value makes its rounding visible.
      const float v = 0.37f * static_cast<float>(t + 1) - 0.11f * static_cast<float>(c);
      values[t * hd + c] = FloatToFp16(t == 4 ? 2048.0f : v);
    }
  }
  const std::vector<int32_t> page_table = {1, 0};
  std::vector<fp16_t> paged_keys(2 * 4 * hd), paged_values(2 * 4 * hd);
  for (int t = 0; t < n; ++t) {
    std::copy_n(&keys[t * hd], hd, &paged_keys[(page_table[t / 4] * 4 + t % 4) * hd]);
    std::copy_n(&values[t * hd], hd, &paged_values[(page_table[t / 4] * 4 + t % 4) * hd]);
  }
  const int32_t pos = n - 1;
  const PagedKv kv{paged_keys.data(), paged_values.data(), page_table.data(), 4, 1, hd, n};
  const AttentionQueries queries{q, &pos, 1, 1};
  AttentionHeadParams head;
  head.logit_scale = 0.6f;
  SequenceAttentionParams params;
  params.heads = &head;
  const int32_t set[] = {1, 3};
  params.reweight_keys = set;

  // Expected output, with or without each fp16 rounding.
  auto expected = [&](bool round_q, bool round_p) {
    std::vector<double> s(n), p(n);
    double max = head.virtual_sink_logit;
    for (int t = 0; t < n; ++t) {
      double dot = 0.0;
      for (int c = 0; c < hd; ++c) dot += (round_q ? RoundFp16(q[c]) : q[c]) * static_cast<double>(k[t][c]);
      s[t] = dot * head.logit_scale + (t == 0 ? head.first_token_bias : 0.0f);
      max = std::max(max, s[t]);
    }
    double denom = std::isinf(head.virtual_sink_logit) ? 0.0 : std::exp(head.virtual_sink_logit - max);
    for (int t = 0; t < n; ++t) denom += p[t] = std::exp(s[t] - max);
    double mass_set = 0.0, mass_rest = 0.0;
    for (int t = 0; t < n; ++t) {
      p[t] /= denom;
      (t == 1 || t == 3 ? mass_set : mass_rest) += p[t];
    }
    const ReweightScales w = ComputeReweightScales(head.reweight_beta, static_cast<float>(mass_set),
                                                   static_cast<float>(mass_rest));
    std::vector<double> o(hd, 0.0);
    for (int t = 0; t < n; ++t) {
      const double pt = p[t] * (t == 1 || t == 3 ? w.in_set : w.rest);
      for (int c = 0; c < hd; ++c) o[c] += (round_p ? RoundFp16(pt) : pt) * Fp16ToFloat(values[t * hd + c]);
    }
    return o;
  };
  auto check = [&] {
    float got[hd];
    PagedAttentionKvHead(queries, kv, params, 0, got);
    const std::vector<double> want = expected(true, true);
    const std::vector<double> without_q = expected(false, true), without_p = expected(true, false);
    double effect_q = 0.0, effect_p = 0.0;
    for (int c = 0; c < hd; ++c) {
      EXPECT_NEAR(got[c], want[c], 1e-6 * std::max(1.0, std::fabs(want[c]))) << "component " << c;
      effect_q = std::max(effect_q, std::fabs(want[c] - without_q[c]));
      effect_p = std::max(effect_p, std::fabs(want[c] - without_p[c]));
    }
    EXPECT_GT(effect_q, 1e-5) << "rounding q does not show in this case";
    EXPECT_GT(effect_p, 1e-5) << "rounding p does not show in this case";
  };
  check();  // dense
  // ACT scales the normalised weights before they are rounded; the virtual
  // sink and the bias enter before the normalisation.
  head.virtual_sink_logit = 1.5f;
  head.first_token_bias = std::log(3.0f);
  head.reweight_beta = 0.4f;
  head.reweight_keys_size = 2;
  check();
}

// Without a window, a query's output depends on nothing else in a call of
// several queries: prefill in chunks of any size >= 2 gives the same bits as
// one call, as the reference's batched matmul computes each row alone. (One
// query is a decode step, which has its own order; see DecodeSumsValuesInVecDotOrder.)
TEST_P(PagedAttentionTest, DenseRowsDoNotDependOnTheCall) {
  Problem pr(16, 64, 2, 3, 300, 37, 21);
  const std::vector<float> together = pr.RunKernel();
  std::vector<float> in_pairs(together.size(), NAN), pair(together.size(), NAN);
  const SequenceAttentionParams params = pr.Params();
  const PagedKv kv = pr.Kv();
  const size_t row = static_cast<size_t>(pr.n_q_heads()) * pr.head_dim;
  for (int i = 0; i < pr.n_queries; ++i) {
    const int first = std::min(i, pr.n_queries - 2);
    const AttentionQueries two{&pr.q[first * row], &pr.positions[first], 2, pr.n_q_heads()};
    for (int g = 0; g < pr.n_kv_heads; ++g) PagedAttentionKvHead(two, kv, params, g, pair.data());
    std::copy_n(&pair[(i - first) * row], row, &in_pairs[i * row]);
  }
  EXPECT_EQ(together, in_pairs);
}

// A one-query call (decode) sums Σ p v in the order of ggml_vec_dot_f16 on
// x86: key position t in virtual lane t mod 4N, the lanes folded by halves
// (AVX2: down to four, then (l0+l1)+(l2+l3)). With q = 0 every weight is
// exactly 1/256, so the output is that order's sum of the values, scaled.
TEST_P(PagedAttentionTest, DecodeSumsValuesInVecDotOrder) {
  const int64_t target = GetParam();
  int N = 0;
#if HWY_ARCH_X86
  if (target == HWY_AVX2) N = 8;
  if (target == HWY_AVX3 || target == HWY_AVX3_DL) N = 16;
#ifdef HWY_AVX3_ZEN4
  if (target == HWY_AVX3_ZEN4) N = 16;
#endif
#endif
  if (N == 0) GTEST_SKIP() << "the batched order applies on this target";
  const int n = 256, L = 4 * N;
  Problem pr(16, 64, 1, 2, n, 1, 5);
  std::fill(pr.q.begin(), pr.q.end(), 0.0f);
  const std::vector<float> got = pr.RunKernel();
  for (int c = 0; c < pr.head_dim; ++c) {
    std::vector<float> lane(L, 0.0f);
    for (int t = 0; t < n; ++t) {
      const size_t at = ((static_cast<size_t>(pr.page_table[t / pr.page_size]) * pr.n_kv_heads) * pr.page_size +
                         t % pr.page_size) * pr.head_dim + c;
      lane[t % L] += Fp16ToFloat(pr.values[at]);
    }
    for (int half = L / 2; half >= (N == 8 ? 4 : 1); half /= 2) {
      for (int l = 0; l < half; ++l) lane[l] += lane[l + half];
    }
    if (N == 8) lane[0] = (lane[0] + lane[1]) + (lane[2] + lane[3]);
    const float want = lane[0] / n;
    for (int h = 0; h < pr.n_q_heads(); ++h) EXPECT_EQ(got[h * pr.head_dim + c], want) << "dim " << c << " head " << h;
  }
}

// Streaming positions=CACHE: sink keys take the sink queries, every other
// key the queries; the kernel against the reference that does the same.
TEST_P(PagedAttentionTest, SinkQueriesReplaceQueriesForSinkKeysOnly) {
  for (auto [num_tokens, n_queries] : {std::pair{1000, 1}, {1000, 37}, {300, 300}, {70, 9}}) {
    SCOPED_TRACE(testing::Message() << "tokens " << num_tokens << " queries " << n_queries);
    Problem pr(16, 64, 2, 3, num_tokens, n_queries, 31 + num_tokens + n_queries);
    pr.params.sink_tokens = 4;
    pr.params.window_tokens = 48;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> sink_q(pr.q.size());
    for (float& x : sink_q) x = Fp16ToFloat(FloatToFp16(normal(rng)));
    const std::vector<float> plain = pr.RunKernel();
    const SequenceAttentionParams params = pr.Params();
    AttentionQueries q = pr.Queries();
    q.sink_q = sink_q.data();
    std::vector<float> got(pr.q.size(), NAN), want(pr.q.size(), NAN);
    for (int g = 0; g < pr.n_kv_heads; ++g) PagedAttentionKvHead(q, pr.Kv(), params, g, got.data());
    PagedAttentionReference(q, pr.Kv(), params, want.data());
    EXPECT_LT(MaxAbsDiff(got, want), kTolerance);
    EXPECT_GT(MaxAbsDiff(got, plain), 1e-3f) << "the sink queries had no effect";
    // Sink queries equal to the queries change no bit: splitting a block's
    // logits between the two is exact.
    q.sink_q = pr.q.data();
    std::vector<float> same(pr.q.size(), NAN);
    for (int g = 0; g < pr.n_kv_heads; ++g) PagedAttentionKvHead(q, pr.Kv(), params, g, same.data());
    EXPECT_EQ(same, plain);
  }
}

// The reason sink queries suffice: with keys rotated at their original
// positions, the queries at theirs and the sink queries at the query's cache
// slot, the logits are those of StreamingLLM's positions inside the cache
// (every kept key at its rank, the query at its own), computed here directly
// in double from unrotated vectors, as tests/python/policy_reference.py does.
TEST_P(PagedAttentionTest, SinkQueriesGiveCachePositions) {
  const int hd = 64, page = 16, n = 400, nq = 5, sink = 4, window = 40;
  const double base = 10000.0;
  auto rotate = [&](const float* x, double pos, double* out) {
    for (int i = 0; i < hd; i += 2) {
      const double a = pos * std::pow(base, -static_cast<double>(i) / hd);
      out[i] = x[i] * std::cos(a) - x[i + 1] * std::sin(a);
      out[i + 1] = x[i] * std::sin(a) + x[i + 1] * std::cos(a);
    }
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k_raw(n * hd), v(n * hd), q_raw(nq * hd);
  for (float& x : k_raw) x = 1.5f * normal(rng);
  for (float& x : v) x = normal(rng);
  for (float& x : q_raw) x = 1.5f * normal(rng);
  // The cache: keys at original positions, one KV head, pages in order.
  std::vector<fp16_t> keys(n * hd), values(n * hd);
  std::vector<int32_t> table(n / page), positions(nq);
  std::iota(table.begin(), table.end(), 0);
  std::vector<double> tmp(hd);
  for (int t = 0; t < n; ++t) {
    rotate(&k_raw[t * hd], t, tmp.data());
    for (int c = 0; c < hd; ++c) keys[t * hd + c] = FloatToFp16(static_cast<float>(tmp[c]));
    for (int c = 0; c < hd; ++c) values[t * hd + c] = FloatToFp16(v[t * hd + c]);
  }
  AttentionHeadParams head;
  head.logit_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  SequenceAttentionParams params;
  params.heads = &head;
  params.sink_tokens = sink;
  params.window_tokens = window;
  std::vector<float> q(nq * hd), sink_q(nq * hd);
  for (int i = 0; i < nq; ++i) {
    positions[i] = n - nq + i;
    rotate(&q_raw[i * hd], positions[i], tmp.data());
    for (int c = 0; c < hd; ++c) q[i * hd + c] = static_cast<float>(tmp[c]);
    rotate(&q_raw[i * hd], CacheSlot(params, positions[i]), tmp.data());
    for (int c = 0; c < hd; ++c) sink_q[i * hd + c] = static_cast<float>(tmp[c]);
  }
  const PagedKv kv{keys.data(), values.data(), table.data(), page, 1, hd, n};
  AttentionQueries queries{q.data(), positions.data(), nq, 1};
  std::vector<float> original(nq * hd), got(nq * hd);
  PagedAttentionKvHead(queries, kv, params, 0, original.data());
  queries.sink_q = sink_q.data();
  PagedAttentionKvHead(queries, kv, params, 0, got.data());

  std::vector<float> want(nq * hd);
  std::vector<double> qs(hd), ks(hd);
  for (int i = 0; i < nq; ++i) {
    const int32_t pos = positions[i];
    std::vector<int32_t> kept;
    for (int32_t j = 0; j <= pos; ++j) {
      if (KeyVisible(params, pos, j)) kept.push_back(j);
    }
    const int32_t own = static_cast<int32_t>(kept.size()) - 1;  // the query's rank
    rotate(&q_raw[i * hd], own, qs.data());
    std::vector<double> logit(kept.size());
    double max = -INFINITY;
    for (size_t r = 0; r < kept.size(); ++r) {
      rotate(&k_raw[kept[r] * hd], static_cast<double>(r), ks.data());
      double dot = 0.0;
      for (int c = 0; c < hd; ++c) dot += qs[c] * ks[c];
      logit[r] = dot / std::sqrt(static_cast<double>(hd));
      max = std::max(max, logit[r]);
    }
    double denom = 0.0;
    for (double& l : logit) denom += l = std::exp(l - max);
    for (int c = 0; c < hd; ++c) {
      double o = 0.0;
      for (size_t r = 0; r < kept.size(); ++r) o += logit[r] / denom * Fp16ToFloat(values[kept[r] * hd + c]);
      want[i * hd + c] = static_cast<float>(o);
    }
  }
  // fp16 keys and the kernel's fp16 queries and weights: ~1e-3 on logits of a few units.
  EXPECT_LT(MaxAbsDiff(got, want), 5e-3f);  // measured 1.2e-3
  EXPECT_GT(MaxAbsDiff(original, want), 0.1f) << "original positions should differ from cache positions";
}

INSTANTIATE_TEST_SUITE_P(Targets, PagedAttentionTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) { return hwy::TargetName(info.param); });

}  // namespace
}  // namespace attnserve
