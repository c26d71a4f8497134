// StackBf16: the GPU backend's bf16 weights are the CPU's dequantized rows,
// stacked in order and rounded.
#include "engine/model/bf16_weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/common/half.h"

namespace attnserve {
namespace {

WeightMatrix F32Matrix(const std::vector<float>& data, int64_t rows, int64_t cols) {
  return WeightMatrix{GgmlType::kF32, data.data(), rows, cols, static_cast<size_t>(cols) * sizeof(float)};
}

TEST(Bf16WeightsTest, StacksRowsInOrderAndRoundsToNearestEven) {
  const std::vector<float> a = {1.0f, -2.5f, 3.0f, 1.00390625f, 0.1f, 65504.0f};  // 2 x 3
  const std::vector<float> b = {7.0f, 1.01171875f, -0.0f};                        // 1 x 3
  const WeightMatrix ma = F32Matrix(a, 2, 3), mb = F32Matrix(b, 1, 3);
  const WeightMatrix* both[] = {&ma, &mb};
  absl::StatusOr<std::vector<uint16_t>> out = StackBf16(both);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 9u);
  std::vector<float> want(a);
  want.insert(want.end(), b.begin(), b.end());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(Bf16ToFloat((*out)[i]), want[i], std::fabs(want[i]) / 256.0f) << i;
  }
  // Halfway cases go to the even mantissa: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6.
  EXPECT_EQ(Bf16ToFloat((*out)[3]), 1.0f);
  EXPECT_EQ(Bf16ToFloat((*out)[7]), 1.015625f);
}

TEST(Bf16WeightsTest, MismatchedColumnsAreRejected) {
  const std::vector<float> a(6, 1.0f);
  const WeightMatrix ma = F32Matrix(a, 2, 3), mb = F32Matrix(a, 3, 2);
  const WeightMatrix* both[] = {&ma, &mb};
  EXPECT_EQ(StackBf16(both).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StackBf16({}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnserve
