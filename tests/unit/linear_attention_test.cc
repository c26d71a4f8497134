// The linear mode's state (kernels/cpu/linear_attention.h) against the
// explicit sum it replaces: Σ_j Taylor2(q·k_j) v_j and Σ_j Taylor2(q·k_j).
#include "kernels/cpu/linear_attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "kernels/common/taylor.h"

namespace attnserve {
namespace {

TEST(TaylorFeaturesTest, OneFeatureIsTheMapsEntry) {
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  for (int d : {1, 2, 5, 64}) {
    std::vector<float> x(d), phi(TaylorFeatureCount(d));
    for (float& v : x) v = normal(rng);
    TaylorFeatures(x.data(), d, phi.data());
    for (int f = 0; f < TaylorFeatureCount(d); ++f) ASSERT_EQ(TaylorFeature(x.data(), d, f), phi[f]) << d << " " << f;
  }
}

TEST(TaylorFeaturesTest, DotProductIsTheSecondOrderExpansionOfExp) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  for (int d : {1, 2, 5, 64}) {
    std::vector<float> q(d), k(d), pq(TaylorFeatureCount(d)), pk(TaylorFeatureCount(d));
    for (int c = 0; c < d; ++c) q[c] = normal(rng), k[c] = normal(rng);
    TaylorFeatures(q.data(), d, pq.data());
    TaylorFeatures(k.data(), d, pk.data());
    double dot = 0.0, x = 0.0;
    for (size_t f = 0; f < pq.size(); ++f) dot += static_cast<double>(pq[f]) * pk[f];
    for (int c = 0; c < d; ++c) x += static_cast<double>(q[c]) * k[c];
    EXPECT_NEAR(dot, 1.0 + x + 0.5 * x * x, 1e-5) << d;
    EXPECT_NEAR(Taylor2(static_cast<float>(x)), 1.0 + x + 0.5 * x * x, 1e-6);
  }
}

// On every SIMD target the machine has.
class LinearStateTest : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_P(LinearStateTest, FoldedKeysReadLikeTheirExplicitSum) {
  for (int d : {3, 64, 72}) {
    SCOPED_TRACE(d);
    std::mt19937 rng(2);
    std::normal_distribution<float> normal(0.0f, 0.4f);
    const int n = 300;
    std::vector<float> keys(n * d), values(n * d), q(d);
    for (float& x : keys) x = normal(rng);
    for (float& x : values) x = normal(rng);
    for (float& x : q) x = normal(rng);
    LinearHeadState state;
    state.s.assign(static_cast<size_t>(TaylorFeatureCount(d)) * d, 0.0f);
    state.z.assign(TaylorFeatureCount(d), 0.0f);
    std::vector<float> num(d);
    float den = -1.0f;
    ReadLinearState(state, q.data(), d, num.data(), &den);
    EXPECT_EQ(den, 0.0f) << "an empty state adds nothing";
    for (int j = 0; j < n; ++j) FoldKey(&keys[j * d], &values[j * d], d, state);
    ReadLinearState(state, q.data(), d, num.data(), &den);
    std::vector<double> want_num(d, 0.0);
    double want_den = 0.0;
    for (int j = 0; j < n; ++j) {
      double x = 0.0;
      for (int c = 0; c < d; ++c) x += static_cast<double>(q[c]) * keys[j * d + c];
      const double w = 1.0 + x + 0.5 * x * x;
      for (int c = 0; c < d; ++c) want_num[c] += w * values[j * d + c];
      want_den += w;
    }
    EXPECT_NEAR(den, want_den, 1e-4 * want_den);
    for (int c = 0; c < d; ++c) EXPECT_NEAR(num[c], want_num[c], 1e-4 * want_den) << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, LinearStateTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) { return hwy::TargetName(info.param); });

}  // namespace
}  // namespace attnserve
