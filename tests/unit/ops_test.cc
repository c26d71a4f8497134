#include "kernels/cpu/ops.h"

#include <cmath>
#include <cstring>
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

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Activations with a heavy tail, like a residual stream: mostly N(0, 1), some
// tiny values, a few large ones.
std::vector<float> HeavyTailed(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) {
    const float u = uniform(rng);
    x = normal(rng) * (u < 0.05f ? 1e-4f : (u > 0.99f ? 40.0f : 1.0f));
  }
  return v;
}

// llama.cpp's rms_norm followed by its mul by the weight, rounding for
// rounding: squares rounded to float, summed in order in double, the mean
// rounded to float, y = (x * scale) * w.
std::vector<float> GgmlRmsNorm(const std::vector<float>& x, const std::vector<float>& w, int64_t rows, int64_t n,
                               float eps) {
  std::vector<float> y(rows * n);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[r * n + i] * x[r * n + i]);
    const float mean = static_cast<float>(sum / static_cast<double>(n));
    const float scale = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * scale * w[i];
  }
  return y;
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

TEST_P(OpsTest, RmsNormRoundsAsGgml) {
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    const int64_t rows = 11;  // a block of eight rows and three single ones
    std::vector<float> x = HeavyTailed(rows * n, 10 + static_cast<uint32_t>(n));
    x[0] = 3000.0f;  // an outlier channel
    const std::vector<float> w = Random(n, 11, 0.3f);
    const std::vector<float> want = GgmlRmsNorm(x, w, rows, n, 1e-5f);
    std::vector<float> got(rows * n);
    RmsNorm(x.data(), w.data(), got.data(), rows, n, 1e-5f);
    for (int64_t i = 0; i < rows * n; ++i) ASSERT_EQ(Bits(got[i]), Bits(want[i])) << "at " << i;
    RmsNorm(x.data(), w.data(), x.data(), rows, n, 1e-5f);  // in place
    for (int64_t i = 0; i < rows * n; ++i) ASSERT_EQ(Bits(x[i]), Bits(want[i])) << "at " << i;
  }
}

// One large value and 63 ones: in float, every 1 added to 2^24 is lost and
// mean(x^2) = 2^18; ggml's double sum keeps them, 2^24 + 63, whose mean
// rounds to 2^18 + 1.
TEST_P(OpsTest, RmsNormSumsSquaresInDouble) {
  std::vector<float> x(64, 1.0f);
  x[0] = 4096.0f;
  const std::vector<float> w(64, 1.0f);
  std::vector<float> y(64);
  RmsNorm(x.data(), w.data(), y.data(), 1, 64, 0.0f);
  const float scale = 1.0f / std::sqrt(262145.0f);
  ASSERT_NE(scale, 1.0f / 512.0f);
  EXPECT_EQ(Bits(y[0]), Bits(4096.0f * scale));
  EXPECT_EQ(Bits(y[1]), Bits(scale));
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

// silu through ggml's vectorised expf: outputs of llama.cpp's own swiglu on
// this input (AVX-512 build) and of its AVX2 variant, which round differently
// from each other and from libm's expf. The second half are exp's special
// cases: overflow to infinity, and exp(88.7) = j·2^128 with j < 1, finite.
TEST_P(OpsTest, SwiGluRoundsAsGgml) {
  const float gate[32] = {
      -0x1.60b98p+6f,  -0x1.5f6dp+6f,   -0x1.3cd99ep+4f, -0x1.3fe2p+4f,   -0x1.a2cea4p+2f, -0x1.160f04p+2f,
      -0x1.6ab1c4p+2f, -0x1.ef609p+0f,  -0x1.73c7e6p+3f, -0x1.03d4b8p+2f, -0x1.6dbfb8p+1f, -0x1.48e198p+1f,
      -0x1.6cabdcp+2f, -0x1.6ce09cp+3f, -0x1.787b94p+2f, -0x1.f4a7acp+2f, -88.9f,          -88.7f,
      -88.6f,          -100.0f,         -130.0f,         -200.0f,         -1e30f,          87.5f,
      88.5f,           90.0f,           100.0f,          130.0f,          150.0f,          200.0f,
      1e30f,           -87.0f};
  float up[32];
  for (int i = 0; i < 16; ++i) up[i] = i % 3 == 0 ? 1.0f : 0.75f - 0.125f * static_cast<float>(i);
  for (int i = 16; i < 32; ++i) up[i] = 1.0f;
  up[19] = 0.5f;
  up[25] = -2.0f;
  const uint32_t avx512[32] = {
      0x83179330, 0x8302981a, 0xb2d5742d, 0xb33249b8, 0xbb1a0d37, 0xbbe3f4f5, 0xbc9ffa7b, 0x3cfa0c54,
      0x37db5012, 0xbd8d019c, 0x3d9ee128, 0x3de9f314, 0xbc9bf962, 0x38e9ae3f, 0x3c85f6f3, 0xbb4d415d,
      0x80000000, 0x82b57fb3, 0x82c85c5d, 0x80000000, 0x80000000, 0x80000000, 0x80000000, 0x42af0000,
      0x42b10000, 0xc3340000, 0x42c80000, 0x43020000, 0x43160000, 0x43480000, 0x7149f2ca, 0x83f39e20};
  uint32_t avx2[32];
  std::memcpy(avx2, avx512, sizeof avx2);
  avx2[0] = 0x8317932f, avx2[1] = 0x8302981b, avx2[2] = 0xb2d5742c, avx2[7] = 0x3cfa0c53, avx2[14] = 0x3c85f6f4;
  float out[32];
  SwiGlu(gate, up, out, 32);
  const uint32_t* want = nullptr;
#if HWY_ARCH_X86
  if (GetParam() <= HWY_AVX3) want = avx512;
  else if (GetParam() == HWY_AVX2) want = avx2;
#endif
  for (int i = 0; i < 32; ++i) {
    if (want != nullptr) {
      EXPECT_EQ(Bits(out[i]), want[i]) << "at " << i << ": " << out[i] << " vs " << FromBits(want[i]);
    } else {
      EXPECT_NEAR(out[i], FromBits(avx512[i]), 2e-6f * (1.0f + std::fabs(out[i]))) << "at " << i;
    }
  }
}

// Elements past the last full vector go through libm's expf, as ggml's do.
TEST_P(OpsTest, SwiGluTailUsesLibmExp) {
  const float gate[3] = {-0x1.a2cea4p+2f, -0x1.6ab1c4p+2f, 0x1.3cd99ep+1f};
  const float up[3] = {1.0f, -0.5f, 0.25f};
  float out[3];
  SwiGlu(gate, up, out, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Bits(out[i]), Bits(gate[i] / (1.0f + std::exp(-gate[i])) * up[i])) << i;
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

// llama.cpp's compiled rope loop (GCC, FMA contraction) computes each pair
// as y0 = fma(x0, cos, -(x1 * sin)), y1 = fma(x0, sin, x1 * cos) in its
// vectorised body, four pairs at a time, and with two rounded products in
// the scalar remainder; built for a target without FMA, with rounded
// products throughout.
TEST_P(OpsTest, RopeRoundsAsGgml) {
  bool fma = false;
#if HWY_ARCH_X86
  fma = GetParam() <= HWY_AVX2;
#endif
  const RopeParams cases[] = {{64, 64, 100000.0f, 1.0f}, {40, 18, 1000.0f, 2.0f}, {14, 14, 10000.0f, 1.0f}};
  const int n_heads = 3;
  const std::vector<int32_t> positions = {0, 1, 2, 17, 100, 511, 4000, 65536};
  const int64_t rows = static_cast<int64_t>(positions.size());
  for (const RopeParams& p : cases) {
    SCOPED_TRACE(testing::Message() << "head_dim " << p.head_dim << " rotary " << p.rotary_dim);
    const std::vector<float> x = Random(rows * n_heads * p.head_dim, 12, 2.0f);
    std::vector<float> got = x;
    Rope(got.data(), positions.data(), rows, n_heads, p);
    const float theta_scale = std::pow(p.base, -2.0f / static_cast<float>(p.rotary_dim));
    for (int64_t r = 0; r < rows; ++r) {
      float theta = static_cast<float>(positions[r]);
      for (int i = 0; i < p.rotary_dim; i += 2) {
        const float angle = p.freq_scale * theta;
        const float c = std::cos(angle), s = std::sin(angle);
        theta *= theta_scale;
        const bool fused = fma && i < (p.rotary_dim & ~7);
        for (int h = 0; h < n_heads; ++h) {
          const int64_t at = (r * n_heads + h) * p.head_dim + i;
          const float x0 = x[at], x1 = x[at + 1];
          const float p1 = x1 * s, p2 = x1 * c;
          const float y0 = fused ? std::fma(x0, c, -p1) : x0 * c - p1;
          const float y1 = fused ? std::fma(x0, s, p2) : x0 * s + p2;
          ASSERT_EQ(Bits(got[at]), Bits(y0)) << "row " << r << " head " << h << " dim " << i;
          ASSERT_EQ(Bits(got[at + 1]), Bits(y1)) << "row " << r << " head " << h << " dim " << i + 1;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, OpsTest, testing::ValuesIn(hwy::SupportedAndGeneratedTargets()),
                         [](const testing::TestParamInfo<int64_t>& info) { return hwy::TargetName(info.param); });

}  // namespace
}  // namespace attnserve
