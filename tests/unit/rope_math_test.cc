// RopeCosSin (the CUDA kernels' and the CPU backend's past-context RoPE
// angle) against ops' RoPE below the context, and its offsets far past it.
#include "kernels/common/rope_math.h"

#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/ops.h"

namespace attnserve {
namespace {

constexpr int kHeadDim = 64;

RopeAngles AnglesOf(const RopeParams& p, int32_t context) {
  return {std::pow(p.base, -2.0f / static_cast<float>(p.rotary_dim)), p.freq_scale, context};
}

void Rotate(const RopeAngles& r, int32_t pos, int rotary_dim, float* x) {
  for (int i = 0; 2 * i < rotary_dim; ++i) {
    float c, s;
    RopeCosSin(r, pos, i, &c, &s);
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    x[2 * i] = x0 * c - x1 * s;
    x[2 * i + 1] = x1 * c + x0 * s;
  }
}

std::vector<float> RandomRow(std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> x(kHeadDim);
  for (float& v : x) v = normal(rng);
  return x;
}

TEST(RopeMathTest, BelowTheContextItIsOpsRopeReference) {
  std::mt19937 rng(7);
  for (const RopeParams p : {RopeParams{kHeadDim, kHeadDim, 10000.0f, 1.0f}, RopeParams{kHeadDim, 32, 500000.0f, 0.25f}}) {
    const RopeAngles angles = AnglesOf(p, 8192);
    for (const int32_t pos : {0, 1, 7, 100, 4095, 8191}) {
      std::vector<float> expected = RandomRow(rng), got = expected;
      RopeReference(expected.data(), &pos, 1, 1, p);
      Rotate(angles, pos, p.rotary_dim, got.data());
      for (int d = 0; d < kHeadDim; ++d) {
        EXPECT_NEAR(got[d], expected[d], 1e-6f * (1.0f + std::fabs(expected[d]))) << "pos " << pos << " d " << d;
      }
    }
  }
}

// Past the context, q·k depends on the offset alone: the same offset at
// millions of tokens scores as it does from position 0.
TEST(RopeMathTest, PastTheContextOffsetsStayExact) {
  std::mt19937 rng(11);
  const RopeParams p{kHeadDim, kHeadDim, 10000.0f, 1.0f};
  const RopeAngles angles = AnglesOf(p, 1);  // every position > 0 on the double path
  const std::vector<float> q0 = RandomRow(rng), k0 = RandomRow(rng);
  auto score = [&](int32_t q_pos, int32_t k_pos) {
    std::vector<float> q = q0, k = k0;
    Rotate(angles, q_pos, kHeadDim, q.data());
    Rotate(angles, k_pos, kHeadDim, k.data());
    double dot = 0.0;
    for (int d = 0; d < kHeadDim; ++d) dot += static_cast<double>(q[d]) * k[d];
    return dot;
  };
  for (const int32_t offset : {0, 1, 37, 1000}) {
    const double near = score(1 + offset, 1);
    for (const int32_t base : {100000, 3000000, 2000000000 - 2000}) {
      EXPECT_NEAR(score(base + offset, base), near, 1e-4 * (1.0 + std::fabs(near))) << "offset " << offset << " at " << base;
    }
  }
}

}  // namespace
}  // namespace attnserve
