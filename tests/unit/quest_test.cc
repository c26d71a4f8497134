// Quest's page selection (kernels/cpu/quest.h) against scores computed
// straight from the keys, and the attention kernel restricted to the
// selected key ranges against its naive reference.
#include "kernels/cpu/quest.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "kernels/common/half.h"
#include "kernels/common/quest.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using namespace testing_attention;

// A problem whose pages carry their key bounds, as WriteKv keeps them.
struct QuestProblem : Problem {
  std::vector<fp16_t> key_min, key_max;

  QuestProblem(int num_tokens, uint32_t seed) : Problem(16, 64, 2, 3, num_tokens, 1, seed) {
    const size_t pool = keys.size() / (static_cast<size_t>(page_size) * head_dim * n_kv_heads);
    key_min.assign(pool * n_kv_heads * head_dim, FloatToFp16(NAN));
    key_max = key_min;
    for (int t = 0; t < num_tokens; ++t) {
      for (int g = 0; g < n_kv_heads; ++g) {
        const size_t page = page_table[t / page_size];
        const size_t bounds = (page * n_kv_heads + g) * head_dim;
        const size_t row = ((page * n_kv_heads + g) * page_size + t % page_size) * head_dim;
        for (int c = 0; c < head_dim; ++c) {
          const float x = Fp16ToFloat(keys[row + c]);
          if (t % page_size == 0 || x < Fp16ToFloat(key_min[bounds + c])) key_min[bounds + c] = keys[row + c];
          if (t % page_size == 0 || x > Fp16ToFloat(key_max[bounds + c])) key_max[bounds + c] = keys[row + c];
        }
      }
    }
  }

  PagedKv QuestKv() const {
    PagedKv kv = Kv();
    kv.key_min = key_min.data();
    kv.key_max = key_max.data();
    return kv;
  }
  const float* Group(int kv_head) const { return q.data() + static_cast<size_t>(kv_head) * group * head_dim; }

  // The page's score from its keys: Σ_h Σ_d max over the page's keys' bounds.
  float NaiveScore(int kv_head, int page) const {
    std::vector<float> lo(head_dim, INFINITY), hi(head_dim, -INFINITY);
    for (int t = page * page_size; t < (page + 1) * page_size; ++t) {
      const size_t row = ((static_cast<size_t>(page_table[page]) * n_kv_heads + kv_head) * page_size + t % page_size) *
                         head_dim;
      for (int c = 0; c < head_dim; ++c) {
        lo[c] = std::min(lo[c], Fp16ToFloat(keys[row + c]));
        hi[c] = std::max(hi[c], Fp16ToFloat(keys[row + c]));
      }
    }
    double s = 0.0;
    for (int h = 0; h < group; ++h) {
      for (int c = 0; c < head_dim; ++c) {
        const double qc = Group(kv_head)[h * head_dim + c];
        s += std::max(qc * hi[c], qc * lo[c]);
      }
    }
    return static_cast<float>(s);
  }
};

std::vector<int32_t> PagesOf(const std::vector<KeyRange>& ranges, int page_size) {
  std::vector<int32_t> pages;
  for (const KeyRange& r : ranges) {
    for (int32_t p = r.begin / page_size; p * page_size < r.end; ++p) pages.push_back(p);
  }
  return pages;
}

TEST(QuestTest, SelectsTheBestScoredPagesAndItsOwn) {
  for (int n : {33, 161, 500, 1000}) {
    SCOPED_TRACE(testing::Message() << n << " tokens");
    const QuestProblem pr(n, 21);
    const int32_t pos = n - 1, own = pos / 16;
    for (int g = 0; g < pr.n_kv_heads; ++g) {
      for (int budget : {1, 3, 8}) {
        std::vector<KeyRange> ranges;
        const bool selected = SelectQuestPages(pr.Group(g), pr.group, pr.QuestKv(), g, 0, 0, pos, budget, ranges);
        if (own <= budget) {
          EXPECT_FALSE(selected);
          EXPECT_TRUE(ranges.empty());
          continue;
        }
        ASSERT_TRUE(selected);
        std::vector<std::pair<float, int32_t>> scored;
        for (int p = 0; p < own; ++p) scored.push_back({-pr.NaiveScore(g, p), p});
        std::sort(scored.begin(), scored.end());
        std::vector<int32_t> want;
        for (int k = 0; k < budget; ++k) want.push_back(scored[k].second);
        std::sort(want.begin(), want.end());
        want.push_back(own);
        EXPECT_EQ(PagesOf(ranges, 16), want);
        EXPECT_EQ(ranges.back().end, pos + 1);
        for (size_t r = 1; r < ranges.size(); ++r) EXPECT_LT(ranges[r - 1].end, ranges[r].begin) << "merged";
      }
    }
  }
}

// Under a streaming window, pages the window hides are no candidates.
TEST(QuestTest, RanksOnlyVisiblePages) {
  const QuestProblem pr(800, 22);
  std::vector<KeyRange> ranges;
  const int32_t pos = 799;
  ASSERT_TRUE(SelectQuestPages(pr.Group(0), pr.group, pr.QuestKv(), 0, 20, 100, pos, 4, ranges));
  for (int32_t p : PagesOf(ranges, 16)) {
    EXPECT_TRUE(QuestPageVisible(p, 16, 20, 100, pos)) << p;
  }
  // Sinks (pages 0, 1) and window (pages 43 .. 49) are 9 candidates.
  EXPECT_FALSE(SelectQuestPages(pr.Group(0), pr.group, pr.QuestKv(), 0, 20, 100, pos, 9, ranges));
}

TEST(QuestTest, EqualScoresGoToTheEarlierPage) {
  QuestProblem pr(200, 23);
  std::fill(pr.key_min.begin(), pr.key_min.end(), FloatToFp16(0.5f));
  std::fill(pr.key_max.begin(), pr.key_max.end(), FloatToFp16(0.5f));
  std::vector<KeyRange> ranges;
  ASSERT_TRUE(SelectQuestPages(pr.Group(1), pr.group, pr.QuestKv(), 1, 0, 0, 199, 3, ranges));
  EXPECT_EQ(PagesOf(ranges, 16), (std::vector<int32_t>{0, 1, 2, 12}));
}

class QuestAttentionTest : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

// The vector scores against the scalar QuestPageScore, head_dim with a tail.
TEST_P(QuestAttentionTest, VectorScoresMatchTheScalarScore) {
  for (int head_dim : {64, 72, 5}) {
    Problem pr(16, head_dim, 2, 3, 300, 1, 25);
    std::vector<fp16_t> lo(pr.keys.size() / 16), hi(lo.size());
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < lo.size(); ++i) {
      const float a = normal(rng), b = normal(rng);
      lo[i] = FloatToFp16(std::min(a, b));
      hi[i] = FloatToFp16(std::max(a, b));
    }
    PagedKv kv = pr.Kv();
    kv.key_min = lo.data();
    kv.key_max = hi.data();
    std::vector<int32_t> pages(18);
    std::iota(pages.begin(), pages.end(), 0);
    for (int g = 0; g < 2; ++g) {
      const float* q = pr.q.data() + static_cast<size_t>(g) * 3 * head_dim;
      std::vector<float> got(pages.size());
      QuestScores(q, 3, kv, g, pages.data(), static_cast<int32_t>(pages.size()), got.data());
      for (int32_t p : pages) {
        const size_t base = (static_cast<size_t>(pr.page_table[p]) * 2 + g) * head_dim;
        std::vector<float> l(head_dim), h(head_dim);
        for (int c = 0; c < head_dim; ++c) l[c] = Fp16ToFloat(lo[base + c]), h[c] = Fp16ToFloat(hi[base + c]);
        const float want = QuestPageScore(q, 3, head_dim, l.data(), h.data());
        EXPECT_NEAR(got[p], want, 1e-4f * (1.0f + std::fabs(want))) << head_dim << " " << g << " " << p;
      }
    }
  }
}

// The kernel over the selected ranges equals the reference over the same
// keys, while keys outside them may hold anything.
TEST_P(QuestAttentionTest, ReadsOnlyTheSelectedKeys) {
  QuestProblem pr(700, 24);
  pr.heads[1].first_token_bias = std::log(3.0f);
  pr.heads[4].virtual_sink_logit = 0.5f;
  std::vector<float> out(pr.q.size(), NAN), want(pr.q.size(), NAN);
  const SequenceAttentionParams params = pr.Params();
  for (int g = 0; g < pr.n_kv_heads; ++g) {
    std::vector<KeyRange> ranges;
    ASSERT_TRUE(SelectQuestPages(pr.Group(g), pr.group, pr.QuestKv(), g, 0, 0, 699, 5, ranges));
    AttentionQueries q = pr.Queries();
    q.key_ranges = ranges.data();
    q.num_key_ranges = static_cast<int32_t>(ranges.size());
    std::vector<float> all(pr.q.size());
    PagedAttentionReference(q, pr.Kv(), params, all.data());
    const size_t head = static_cast<size_t>(pr.group) * pr.head_dim;
    std::copy_n(all.begin() + g * head, head, want.begin() + g * head);
    // Keys outside the ranges turn to NaN: the kernel must not read them.
    Problem poisoned = pr;
    for (int p = 0; p * 16 < 700; ++p) {
      const std::vector<int32_t> chosen = PagesOf(ranges, 16);
      if (std::find(chosen.begin(), chosen.end(), p) != chosen.end()) continue;
      const size_t base = (static_cast<size_t>(pr.page_table[p]) * pr.n_kv_heads + g) * 16 * pr.head_dim;
      std::fill_n(poisoned.keys.begin() + base, 16 * pr.head_dim, FloatToFp16(NAN));
      std::fill_n(poisoned.values.begin() + base, 16 * pr.head_dim, FloatToFp16(NAN));
    }
    PagedAttentionKvHead(q, poisoned.Kv(), poisoned.Params(), g, out.data());
  }
  EXPECT_LT(MaxAbsDiff(out, want), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Targets, QuestAttentionTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) { return hwy::TargetName(info.param); });

}  // namespace
}  // namespace attnserve
