#include "kernels/cpu/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

// The kernels also build AVX3_DL; list it among the targets to test.
#define HWY_WANT_AVX3_DL
#include "hwy/targets.h"
#include "kernels/common/half.h"

namespace attnserve {
namespace {

const GgmlType kAllTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                              GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                              GgmlType::kQ8_1, GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ8_K};

std::string Name(GgmlType t) { return std::string(TypeTraits(t)->name); }
int BlockSize(GgmlType t) { return TypeTraits(t)->block_size; }

// Runs fn once per Highway target this machine supports; `best` is the one
// dispatch picks without a mock, i.e. the one production code runs.
void ForEachTarget(const std::function<void(const char* target, bool best)>& fn) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  for (size_t i = 0; i < targets.size(); ++i) {
    hwy::SetSupportedTargetsForTest(targets[i]);
    fn(hwy::TargetName(targets[i]), i == 0);
  }
  hwy::SetSupportedTargetsForTest(0);
}

// Gaussian rows with awkward blocks mixed in: all zero, one outlier, all
// equal, exact rounding ties (x / d = k + 0.5 for d = 1), tiny values.
std::vector<float> TestRow(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  for (int64_t b = 0; b + 32 <= n; b += 32) {
    switch ((b / 32 + seed) % 7) {
      case 0: std::fill(x.begin() + b, x.begin() + b + 32, 0.f); break;
      case 1: x[b + 5] = 40.f; break;
      case 2: std::fill(x.begin() + b, x.begin() + b + 32, -0.75f); break;
      case 3:
        for (int j = 0; j < 32; ++j) x[b + j] = (j == 0) ? 127.f : static_cast<float>(j % 9) - 3.5f;
        break;
      case 4:
        for (int j = 0; j < 32; ++j) x[b + j] *= 1e-6f;
        break;
      default: break;
    }
  }
  return x;
}

std::vector<uint8_t> Quantized(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(RowBytes(*TypeTraits(t), static_cast<int64_t>(x.size())));
  QuantizeRowReference(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return q;
}

TEST(QuantTest, ActivationTypes) {
  EXPECT_EQ(ActivationTypeFor(GgmlType::kF32), GgmlType::kF32);
  // llama.cpp rounds activations to F16 / BF16 for weights of those types.
  EXPECT_EQ(ActivationTypeFor(GgmlType::kF16), GgmlType::kF16);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kBF16), GgmlType::kBF16);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ4_0), GgmlType::kQ8_0);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ5_0), GgmlType::kQ8_0);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ8_0), GgmlType::kQ8_0);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ4_1), GgmlType::kQ8_1);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ5_1), GgmlType::kQ8_1);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ4_K), GgmlType::kQ8_K);
  EXPECT_EQ(ActivationTypeFor(GgmlType::kQ6_K), GgmlType::kQ8_K);
}

// Round trip through each type: a worst-case bound per element where the
// format has a simple one, and for all a bound on the relative RMS error of
// Gaussian data about 1.2x what llama.cpp's quantizers reach on it.
TEST(QuantTest, RoundTripError) {
  struct Case {
    GgmlType type;
    double max_rel_rms;
  };
  const Case cases[] = {
      {GgmlType::kF32, 0},       {GgmlType::kF16, 3e-4},   {GgmlType::kBF16, 2e-3},  {GgmlType::kQ4_0, 0.10},
      {GgmlType::kQ4_1, 0.09},   {GgmlType::kQ5_0, 0.05},  {GgmlType::kQ5_1, 0.045}, {GgmlType::kQ8_0, 0.0065},
      {GgmlType::kQ8_1, 0.0065}, {GgmlType::kQ4_K, 0.085}, {GgmlType::kQ6_K, 0.021}, {GgmlType::kQ8_K, 0.008},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(Name(c.type));
    const int64_t n = 256 * 12;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> x(n), y(n);
    for (float& v : x) v = normal(rng);
    const std::vector<uint8_t> q = Quantized(c.type, x);
    DequantizeRowReference(c.type, q.data(), y.data(), n);
    double err2 = 0, x2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      err2 += (x[i] - y[i]) * (x[i] - y[i]);
      x2 += x[i] * x[i];
    }
    EXPECT_LE(std::sqrt(err2 / x2), c.max_rel_rms);

    // Worst case per 32-block, in units of the block's amax or range.
    for (int64_t b = 0; b < n; b += 32) {
      float amax = 0, lo = x[b], hi = x[b];
      for (int j = 0; j < 32; ++j) {
        amax = std::max(amax, std::fabs(x[b + j]));
        lo = std::min(lo, x[b + j]);
        hi = std::max(hi, x[b + j]);
      }
      double bound;
      switch (c.type) {
        case GgmlType::kQ4_0: bound = 1.01 * amax / 8; break;  // the opposite extreme clips to 7/8
        case GgmlType::kQ5_0: bound = 1.01 * amax / 16; break;
        case GgmlType::kQ4_1: bound = 0.51 * (hi - lo) / 15 + 1e-3 * std::fabs(lo); break;
        case GgmlType::kQ5_1: bound = 0.52 * (hi - lo) / 31 + 1e-3 * std::fabs(lo); break;
        case GgmlType::kQ8_0:
        case GgmlType::kQ8_1: bound = 0.57 * amax / 127; break;  // fp16 d: 127 * 2^-11 of a step
        default: continue;
      }
      for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(x[b + j] - y[b + j]), bound) << "element " << b + j;
    }
  }
}

TEST(QuantTest, Q8_KQuantsAndBlockSums) {
  const int64_t n = 256 * 3;
  const std::vector<float> x = TestRow(n, 3);
  const std::vector<uint8_t> q = Quantized(GgmlType::kQ8_K, x);
  const auto* blocks = reinterpret_cast<const BlockQ8_K*>(q.data());
  for (int64_t i = 0; i < n / 256; ++i) {
    float amax = 0;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(x[i * 256 + j]));
    EXPECT_FLOAT_EQ(std::fabs(blocks[i].d), amax / 127);
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) {
        const int8_t v = blocks[i].qs[16 * g + j];
        ASSERT_GE(v, -127);
        sum += v;
        EXPECT_LE(std::fabs(v * blocks[i].d - x[i * 256 + 16 * g + j]), 0.501 * std::fabs(blocks[i].d));
      }
      EXPECT_EQ(blocks[i].bsums[g], sum);
    }
  }
}

TEST(QuantTest, Q8_1KeepsScaledSum) {
  const std::vector<float> x = TestRow(32 * 9, 5);
  const std::vector<uint8_t> q = Quantized(GgmlType::kQ8_1, x);
  for (int i = 0; i < 9; ++i) {
    const auto& b = reinterpret_cast<const BlockQ8_1*>(q.data())[i];
    int sum = 0;
    float amax = 0;
    for (int j = 0; j < 32; ++j) {
      sum += b.qs[j];
      amax = std::max(amax, std::fabs(x[32 * i + j]));
    }
    EXPECT_EQ(b.s, FloatToFp16(amax / 127 * sum));
  }
}

// The vectorized conversions against the scalar references on every target.
// Dequantization is bit-exact where the target has FMA (the one dispatch
// picks here); without it a*b+c is rounded twice.
TEST(QuantTest, FastMatchesReference) {
  ForEachTarget([](const char* target, bool best) {
    for (GgmlType t : kAllTypes) {
      for (int64_t blocks : {1, 3, 17, 64}) {
        SCOPED_TRACE(std::string(target) + " " + Name(t) + " blocks=" + std::to_string(blocks));
        const int64_t n = blocks * (BlockSize(t) == 1 ? 65 : BlockSize(t));
        const std::vector<float> x = TestRow(n, static_cast<uint32_t>(blocks));
        std::vector<uint8_t> fast(RowBytes(*TypeTraits(t), n)), ref(fast.size());
        QuantizeRow(t, x.data(), fast.data(), n);
        QuantizeRowReference(t, x.data(), ref.data(), n);
        ASSERT_EQ(fast, ref);

        std::vector<float> y_fast(n), y_ref(n);
        DequantizeRow(t, ref.data(), y_fast.data(), n);
        DequantizeRowReference(t, ref.data(), y_ref.data(), n);
        for (int64_t i = 0; i < n; ++i) {
          if (best) {
            ASSERT_EQ(y_fast[i], y_ref[i]) << i;
          } else {
            ASSERT_NEAR(y_fast[i], y_ref[i], 1e-6f * std::fabs(y_ref[i])) << i;
          }
        }
      }
    }
  });
}

bool IsFp16NaN(fp16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

TEST(QuantTest, Fp16ToFloatRowAllValues) {
  std::vector<fp16_t> h(65536 + 7);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<fp16_t>(i);
  ForEachTarget([&](const char* target, bool) {
    SCOPED_TRACE(target);
    std::vector<float> f(h.size());
    Fp16ToFloatRow(h.data(), f.data(), static_cast<int64_t>(h.size()));
    for (size_t i = 0; i < h.size(); ++i) {
      const float want = Fp16ToFloat(h[i]);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(f[i])) << i;
      } else {
        ASSERT_EQ(std::memcmp(&f[i], &want, sizeof(float)), 0) << "bits " << h[i];
      }
    }
  });
}

std::vector<float> SpecialFloats() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {0.f,
                          -0.f,
                          1.f,
                          -1.f,
                          65504.f,
                          65519.f,
                          65520.f,
                          1e6f,
                          -1e6f,
                          inf,
                          -inf,
                          std::numeric_limits<float>::quiet_NaN(),
                          5.9604645e-08f /* 2^-24 */,
                          2.9802322e-08f /* 2^-25: ties to 0 */,
                          4.4703484e-08f /* 1.5 * 2^-25 */,
                          6.1035156e-05f /* 2^-14 */,
                          6.0975552e-05f /* largest subnormal */,
                          std::numeric_limits<float>::denorm_min(),
                          1e-40f,
                          1.00048828125f /* tie */,
                          1.00146484375f /* tie, odd */};
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 4000; ++i) {
    uint32_t b = bits(rng);
    if (i % 2) b = (b & 0x807fffffu) | ((100 + (b >> 24) % 50) << 23);  // around the fp16 range
    float f;
    memcpy(&f, &b, sizeof(f));
    v.push_back(f);
  }
  return v;
}

TEST(QuantTest, FloatToFp16RowRoundsToNearestEven) {
  const std::vector<float> v = SpecialFloats();
  ForEachTarget([&](const char* target, bool) {
    SCOPED_TRACE(target);
    for (size_t n : {size_t{1}, size_t{7}, size_t{17}, v.size()}) {
      std::vector<fp16_t> h(n);
      FloatToFp16Row(v.data(), h.data(), static_cast<int64_t>(n));
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(v[i])) {
          ASSERT_TRUE(IsFp16NaN(h[i])) << i;
        } else {
          ASSERT_EQ(h[i], FloatToFp16(v[i])) << "value " << v[i];
        }
      }
    }
  });
  EXPECT_EQ(FloatToFp16(65520.f), 0x7c00);         // rounds up to inf
  EXPECT_EQ(FloatToFp16(2.9802322e-08f), 0);       // 2^-25 ties to even (zero)
  EXPECT_EQ(FloatToFp16(4.4703484e-08f), 1);       // above the tie: smallest subnormal
  EXPECT_EQ(FloatToFp16(1.00048828125f), 0x3c00);  // tie to even
  EXPECT_EQ(FloatToFp16(1.00146484375f), 0x3c02);
}

TEST(QuantTest, Bf16RowRoundTrip) {
  const std::vector<float> v = SpecialFloats();
  const int64_t n = static_cast<int64_t>(v.size());
  std::vector<bf16_t> b(n);
  QuantizeRow(GgmlType::kBF16, v.data(), b.data(), n);
  std::vector<float> back(n);
  DequantizeRow(GgmlType::kBF16, b.data(), back.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(b[i], FloatToBf16(v[i]));
    if (std::isnan(v[i])) {
      EXPECT_TRUE(std::isnan(back[i]));
    } else if (std::isinf(v[i]) || v[i] == 0) {
      EXPECT_EQ(back[i], v[i]);
    } else if (std::fabs(v[i]) < 3e38f) {
      // Half a bf16 step: 2^-8 relative, or 2^-134 among f32 subnormals.
      EXPECT_LE(std::fabs(back[i] - v[i]), std::max(std::ldexp(std::fabs(v[i]), -8), std::ldexp(1.f, -134))) << v[i];
    }
  }
  EXPECT_EQ(FloatToBf16(1.00390625f), 0x3f80);  // tie to even
  EXPECT_EQ(FloatToBf16(1.01171875f), 0x3f82);
}

}  // namespace
}  // namespace attnserve
