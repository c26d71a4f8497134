// HiddenKeys, the band of keys the GPU prefill kernel skips: no key in it is
// visible to any head of the group at the query or after, and it covers the
// band a streaming sequence or a group of duo streaming heads hides.
// PlainKeysFrom, where the prefill kernel's hook-free tiles start: every key
// from there to the query is plain, and each hook's bound is where it stops.
// InRanges,
// the binary search of emphasis spans and Quest's selected ranges, against
// a scan; CloseSoftmax, the GPU kernels' last step, against the softmax
// written out.
#include "kernels/common/attention_hooks.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace attnserve {
namespace {

TEST(AttentionHooksTest, HiddenKeysAreVisibleToNoLaterQuery) {
  std::mt19937 rng(17);
  std::uniform_int_distribution<int32_t> small(0, 40);
  for (int trial = 0; trial < 2000; ++trial) {
    const int group = 1 + trial % 4;
    std::vector<AttentionHeadParams> heads(group);
    for (AttentionHeadParams& h : heads) {
      h.sink_tokens = small(rng) % 8;
      h.window_tokens = small(rng) % 3 == 0 ? 0 : 1 + small(rng);
    }
    SequenceAttentionParams p;
    p.heads = heads.data();
    p.sink_tokens = small(rng) % 6;
    p.window_tokens = small(rng) % 2 == 0 ? 0 : 1 + small(rng);
    const int32_t pos = small(rng) * 3;
    const KeyRange band = HiddenKeys(p, 0, group, pos);
    ASSERT_LE(band.begin, band.end);
    for (int32_t j = band.begin; j < band.end; ++j) {
      for (int32_t later = pos; later < pos + 64; ++later) {
        for (const AttentionHeadParams& h : heads) ASSERT_FALSE(HeadKeyVisible(p, h, later, j)) << trial;
      }
    }
  }
}

TEST(AttentionHooksTest, HiddenKeysCoverAStreamingWindowAndAStreamingGroup) {
  std::vector<AttentionHeadParams> heads(2);
  SequenceAttentionParams p;
  p.heads = heads.data();
  p.sink_tokens = 4;
  p.window_tokens = 100;
  KeyRange band = HiddenKeys(p, 0, 2, 1000);
  EXPECT_EQ(band.begin, 4);
  EXPECT_EQ(band.end, 901);
  p.window_tokens = 0;
  heads[0] = {0.1f, 0, 0, -INFINITY, 1.0f, 0, 0, 16, 64};
  heads[1] = {0.1f, 0, 0, -INFINITY, 1.0f, 0, 0, 8, 128};
  band = HiddenKeys(p, 0, 2, 1000);
  EXPECT_EQ(band.begin, 16);
  EXPECT_EQ(band.end, 873);
  heads[1].window_tokens = 0;  // a retrieval head sees everything
  band = HiddenKeys(p, 0, 2, 1000);
  EXPECT_EQ(band.begin, band.end);
}

TEST(AttentionHooksTest, PlainKeysFromStartsWhereEveryKeyToTheQueryIsPlain) {
  std::mt19937 rng(23);
  std::uniform_int_distribution<int32_t> small(0, 40);
  int checked = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const std::vector<KeyRange> spans = {{3, 9}, {20, 26}};
    const std::vector<int32_t> set = {2, 5, 30};
    AttentionHeadParams h;
    h.first_token_bias = small(rng) % 2 == 0 ? 0.0f : 0.7f;
    h.outside_span_bias = small(rng) % 3 == 0 ? -0.4f : 0.0f;
    h.sink_tokens = small(rng) % 5;
    h.window_tokens = small(rng) % 3 == 0 ? 1 + small(rng) : 0;
    if (small(rng) % 5 == 0) {
      h.reweight_beta = 0.5f;
      h.reweight_keys_size = static_cast<int32_t>(set.size());
    }
    SequenceAttentionParams p;
    p.heads = &h;
    p.sink_tokens = small(rng) % 5;
    p.window_tokens = small(rng) % 3 == 0 ? 1 + small(rng) : 0;
    p.spans = spans.data();
    p.num_spans = static_cast<int32_t>(spans.size());
    p.prompt_tokens = small(rng);
    p.reweight_keys = set.data();
    const int32_t pos = small(rng) * 2;
    const auto plain = [&](int32_t j) {
      return HeadKeyVisible(p, h, pos, j) && KeyBias(p, h, j) == 0.0f && !InReweightSet(p, h, j);
    };
    const int32_t from = PlainKeysFrom(p, h, pos);
    if (h.reweight_beta != 1.0f) {
      EXPECT_EQ(from, INT32_MAX);
      continue;
    }
    for (int32_t j = from; j <= pos; ++j) ASSERT_TRUE(plain(j)) << trial << " key " << j;
    checked += from <= pos;
  }
  EXPECT_GT(checked, 1000);
}

TEST(AttentionHooksTest, PlainKeysFromIsWhereEachHookStops) {
  AttentionHeadParams h;
  SequenceAttentionParams p;
  p.heads = &h;
  EXPECT_EQ(PlainKeysFrom(p, h, 500), 0);  // dense
  h.first_token_bias = 0.7f;               // zero tuning
  EXPECT_EQ(PlainKeysFrom(p, h, 500), 1);
  p.sink_tokens = 4;                       // streaming
  p.window_tokens = 100;
  EXPECT_EQ(PlainKeysFrom(p, h, 500), 401);
  h.window_tokens = 30;                    // a duo streaming head
  EXPECT_EQ(PlainKeysFrom(p, h, 500), 471);
  h = AttentionHeadParams{};
  p = SequenceAttentionParams{};
  p.heads = &h;
  h.outside_span_bias = -0.4f;             // emphasis
  p.prompt_tokens = 90;
  EXPECT_EQ(PlainKeysFrom(p, h, 500), 90);
  h.reweight_beta = 0.5f;                  // ACT
  EXPECT_EQ(PlainKeysFrom(p, h, 500), INT32_MAX);
}

TEST(AttentionHooksTest, InRangesFindsTheKeysOfSortedDisjointRanges) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> gap(0, 6), width(1, 6);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<KeyRange> ranges(trial % 9);
    int32_t at = gap(rng);
    for (KeyRange& r : ranges) {
      r.begin = at;
      r.end = at + width(rng);
      at = r.end + gap(rng);  // adjacent ranges too
    }
    const int32_t n = static_cast<int32_t>(ranges.size());
    for (int32_t key = -1; key <= at + 2; ++key) {
      bool want = false;
      for (const KeyRange& r : ranges) want = want || (key >= r.begin && key < r.end);
      ASSERT_EQ(InRanges(ranges.data(), n, key), want) << "trial " << trial << " key " << key;
    }
  }
}

TEST(AttentionHooksTest, CloseSoftmaxNormalisesWithTheSinkAndActsScales) {
  // Keys with logits 1, 2 (ACT's set) and 3, the virtual sink at 0.5.
  AttentionHeadParams h;
  h.virtual_sink_logit = 0.5f;
  h.reweight_beta = 0.4f;
  const double e1 = std::exp(1.0 - 3.0), e2 = std::exp(2.0 - 3.0), e3 = 1.0, sink = std::exp(0.5 - 3.0);
  const SoftmaxTotals t = CloseSoftmax(h, 3.0f, static_cast<float>(e2), static_cast<float>(e1 + e3));
  const double den = e1 + e2 + e3 + sink;
  EXPECT_NEAR(t.den, den, 1e-6);
  EXPECT_NEAR(t.lse, 3.0 + std::log(den), 1e-6);
  // The set's probability times beta; what it gave up goes to the others.
  const double p_set = e2 / den, p_rest = (e1 + e3) / den;
  EXPECT_NEAR(t.scales.in_set * e2 / den, 0.4 * p_set, 1e-6);
  EXPECT_NEAR(t.scales.rest * (e1 + e3) / den, p_rest + 0.6 * p_set, 1e-6);
  EXPECT_NEAR(t.Output(static_cast<float>(e2 * 10.0), static_cast<float>(e1 * 20.0 + e3 * 30.0)),
              (t.scales.in_set * e2 * 10.0 + t.scales.rest * (e1 * 20.0 + e3 * 30.0)) / den, 1e-5);
  // Nothing seen and no sink: zeros, and a log denominator of -inf.
  const SoftmaxTotals none = CloseSoftmax(AttentionHeadParams{}, -INFINITY, 0.0f, 0.0f);
  EXPECT_EQ(none.Output(0.0f, 0.0f), 0.0f);
  EXPECT_EQ(none.lse, -INFINITY);
}

}  // namespace
}  // namespace attnserve
