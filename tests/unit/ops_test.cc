#include "kernels/cpu/ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace attnserve {
namespace {

const int64_t kSizes[] = {1, 3, 17, 63, 64, 65, 1000, 576};

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float rel) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], rel * (1.0f + std::fabs(want[i]))) << "at " << i;
  }
}

// Every test runs on each SIMD target the machine supports: the deployment
// CPU dispatches AVX2 while development machines may pick AVX-512.
class OpsTest : public testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_P(OpsTest, RmsNormMatchesReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    const int64_t rows = 3;
    const std::vector<float> x = Random(rows * n, 1, 3.0f), w = Random(n, 2);
    std::vector<float> got(rows * n), want(rows * n);
    RmsNorm(x.data(), w.data(), got.data(), rows, n, 1e-5f);
    RmsNormReference(x.data(), w.data(), want.data(), rows, n, 1e-5f);
    ExpectNear(got, want, 1e-5f);
  }
}

TEST_P(OpsTest, RmsNormInPlaceAndHandChecked) {
  std::vector<float> x = {3.0f, 4.0f};
  const std::vector<float> w = {1.0f, 2.0f};
  // mean(x^2) = 12.5, so x / sqrt(12.5) * w.
  RmsNorm(x.data(), w.data(), x.data(), 1, 2, 0.0f);
  EXPECT_NEAR(x[0], 3.0f / std::sqrt(12.5f), 1e-6f);
  EXPECT_NEAR(x[1], 8.0f / std::sqrt(12.5f), 1e-6f);
}

TEST_P(OpsTest, SwiGluMatchesReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    std::vector<float> g = Random(n, 3, 4.0f);
    const std::vector<float> u = Random(n, 4);
    if (n >= 3) {  // saturated gates: silu(-200) = 0, silu(200) = 200
      g[0] = -200.0f;
      g[1] = 200.0f;
      g[2] = 0.0f;
    }
    std::vector<float> got(n), want(n);
    SwiGlu(g.data(), u.data(), got.data(), n);
    SwiGluReference(g.data(), u.data(), want.data(), n);
    ExpectNear(got, want, 2e-6f);
  }
}

TEST_P(OpsTest, SoftmaxMatchesReference) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    std::vector<float> got = Random(n, 5, 5.0f);
    std::vector<float> want = got;
    const float max_got = Softmax(got.data(), n);
    const float max_want = SoftmaxReference(want.data(), n);
    EXPECT_EQ(max_got, max_want);
    ExpectNear(got, want, 2e-6f);
    double sum = 0.0;
    for (float p : got) sum += p;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST_P(OpsTest, SoftmaxLargeLogitsAndMinusInfinity) {
  std::vector<float> x = {1000.0f, 1000.0f, -INFINITY, 999.0f};
  EXPECT_EQ(Softmax(x.data(), 4), 1000.0f);
  const float e = std::exp(-1.0f);
  EXPECT_NEAR(x[0], 1.0f / (2.0f + e), 1e-6f);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_NEAR(x[3], e / (2.0f + e), 1e-6f);
}

TEST_P(OpsTest, AddInPlaceMatchesScalar) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    std::vector<float> y = Random(n, 6);
    const std::vector<float> x = Random(n, 7);
    std::vector<float> want = y;
    for (int64_t i = 0; i < n; ++i) want[i] += x[i];
    AddInPlace(y.data(), x.data(), n);
    EXPECT_EQ(y, want);
  }
}

struct RopeCase {
  int head_dim;
  int rotary_dim;
  float base;
  float freq_scale;
};

TEST_P(OpsTest, RopeMatchesReference) {
  const RopeCase cases[] = {
      {64, 64, 10000.0f, 1.0f},  {64, 64, 100000.0f, 1.0f}, {64, 32, 10000.0f, 1.0f},
      {128, 96, 500000.0f, 0.25f}, {2, 2, 10000.0f, 1.0f},  {18, 6, 10000.0f, 0.5f},
      {66, 66, 10000.0f, 1.0f},  {40, 18, 1000.0f, 2.0f}};
  const std::vector<int32_t> positions = {0, 1, 7, 63, 1000, 8191, 100000, 1 << 20};
  const int n_heads = 3;
  for (const RopeCase& c : cases) {
    SCOPED_TRACE(testing::Message() << "head_dim " << c.head_dim << " rotary " << c.rotary_dim << " scale "
                                    << c.freq_scale);
    const RopeParams p{c.head_dim, c.rotary_dim, c.base, c.freq_scale};
    const int64_t rows = static_cast<int64_t>(positions.size());
    const std::vector<float> x = Random(rows * n_heads * c.head_dim, 8);
    std::vector<float> got = x, want = x;
    Rope(got.data(), positions.data(), rows, n_heads, p);
    RopeReference(want.data(), positions.data(), rows, n_heads, p);
    ExpectNear(got, want, 1e-6f);
    // Dimensions past rotary_dim pass through untouched.
    for (int64_t r = 0; r < rows * n_heads; ++r) {
      for (int i = c.rotary_dim; i < c.head_dim; ++i) {
        ASSERT_EQ(got[r * c.head_dim + i], x[r * c.head_dim + i]);
      }
    }
  }
}

// The reference against the textbook formula in double: small positions,
// where ggml's float angle is accurate, must agree closely.
TEST(RopeTest, ReferenceMatchesFormula) {
  const RopeParams p{16, 12, 10000.0f, 0.5f};
  const std::vector<int32_t> positions = {0, 3, 50};
  const int n_heads = 2;
  const std::vector<float> x = Random(positions.size() * n_heads * p.head_dim, 9);
  std::vector<float> got = x;
  RopeReference(got.data(), positions.data(), static_cast<int64_t>(positions.size()), n_heads, p);
  for (size_t r = 0; r < positions.size(); ++r) {
    for (int h = 0; h < n_heads; ++h) {
      const size_t base = (r * n_heads + h) * p.head_dim;
      for (int i = 0; i < p.rotary_dim / 2; ++i) {
        const double theta = positions[r] * 0.5 * std::pow(10000.0, -2.0 * i / p.rotary_dim);
        const double x0 = x[base + 2 * i], x1 = x[base + 2 * i + 1];
        EXPECT_NEAR(got[base + 2 * i], x0 * std::cos(theta) - x1 * std::sin(theta), 1e-4);
        EXPECT_NEAR(got[base + 2 * i + 1], x0 * std::sin(theta) + x1 * std::cos(theta), 1e-4);
      }
    }
  }
}

// llama.cpp advances the angle by repeated float multiplication; at large
// positions that differs visibly from the exact angle, and the kernel must
// follow llama.cpp, not the exact value.
TEST_P(OpsTest, RopeFollowsGgmlFloatAngleAtLargePositions) {
  const RopeParams p{64, 64, 10000.0f, 1.0f};
  const int32_t pos = 1000000;
  std::vector<float> x(64, 0.0f);
  for (int i = 0; i < 64; i += 2) x[i] = 1.0f;  // rotated pair i reads (cos, sin) of its angle
  Rope(x.data(), &pos, 1, 1, p);
  const float theta_scale = std::pow(10000.0f, -2.0f / 64.0f);
  float theta = static_cast<float>(pos);
  for (int i = 0; i < 64; i += 2) {
    EXPECT_NEAR(x[i], std::cos(theta), 1e-6f) << i;
    EXPECT_NEAR(x[i + 1], std::sin(theta), 1e-6f) << i;
    theta *= theta_scale;
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, OpsTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) { return hwy::TargetName(info.param); });

}  // namespace
}  // namespace attnserve
