// DecodeAttentionCuda against the CPU reference (PagedAttentionReference,
// in double) over odd sizes, both head dims, every policy hook, packed
// (by-head) page tables and a batch whose sequences all have different
// policies. GPU cases skip with the reason where no device is present (fail
// when ATTNSERVE_REQUIRE_GPU is set, as scripts/gpu-check.sh does); argument
// checks run everywhere.
#include "kernels/cuda/paged_decode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/attention_cases.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

// The GPU keeps weights in fp32 and uses the fast exp; the reference rounds
// nothing. Values are in [-2, 2].
constexpr float kTolerance = 2e-3f;

// Runs the cases as one batch (same heads and head_dim) and checks each
// output against its reference (and that every lse was written).
void ExpectBatchMatches(std::vector<Case>& cases) {
  DeviceBatch batch;
  std::vector<float> q, sink_q;
  int32_t max_tokens = 1;
  bool any_sink_q = false;
  for (Case& c : cases) any_sink_q |= !c.sink_q.empty();
  for (Case& c : cases) {
    batch.Add(c);
    q.insert(q.end(), c.pr->q.begin(), c.pr->q.end());
    const std::vector<float>& sq = c.sink_q.empty() ? c.pr->q : c.sink_q;
    sink_q.insert(sink_q.end(), sq.begin(), sq.end());
    max_tokens = std::max(max_tokens, c.pr->num_tokens);
  }
  const Problem& first = *cases[0].pr;
  DecodeAttentionArgs a;
  DeviceBuffer seqs = Upload(batch.seqs), d_q = Upload(q), d_sink_q = Upload(sink_q);
  auto out = DeviceBuffer::Allocate(q.size() * sizeof(float));
  auto lse = DeviceBuffer::Allocate(cases.size() * first.n_q_heads() * sizeof(float));
  ASSERT_TRUE(out.ok() && lse.ok());
  a.seqs = seqs.as<DecodeSequence>();
  a.n_seqs = static_cast<int32_t>(cases.size());
  a.max_tokens = max_tokens;
  a.q = d_q.as<float>();
  a.sink_q = any_sink_q ? d_sink_q.as<float>() : nullptr;
  a.n_q_heads = first.n_q_heads();
  a.n_kv_heads = first.n_kv_heads;
  a.head_dim = first.head_dim;
  a.out = out->as<float>();
  a.lse = lse->as<float>();
  const size_t bytes = DecodeAttentionWorkspaceBytes(a.n_seqs, a.n_q_heads, a.head_dim, a.max_tokens);
  auto workspace = DeviceBuffer::Allocate(bytes);
  ASSERT_TRUE(workspace.ok()) << workspace.status();
  absl::Status s = DecodeAttentionCuda(a, workspace->data(), bytes, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  s = CudaStreamSync(nullptr);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<float> got = Download<float>(*out, q.size());
  const std::vector<float> lse_got = Download<float>(*lse, cases.size() * first.n_q_heads());
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<float> want = cases[i].Reference();
    const std::vector<float> mine(got.begin() + i * want.size(), got.begin() + (i + 1) * want.size());
    EXPECT_LT(testing_attention::MaxAbsDiff(mine, want), kTolerance) << "sequence " << i;
    for (int h = 0; h < first.n_q_heads(); ++h) EXPECT_FALSE(std::isnan(lse_got[i * first.n_q_heads() + h]));
  }
}

Case MakeCase(int num_tokens, int head_dim, int group, uint32_t seed) {
  Case c;
  c.pr = std::make_unique<Problem>(16, head_dim, 2, group, num_tokens, 1, seed);
  return c;
}

class DecodeAttentionCudaTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_P(DecodeAttentionCudaTest, EveryPolicyMatchesTheReference) {
  const auto [num_tokens, head_dim, group] = GetParam();
  uint32_t seed = 1;
  for (const auto& [name, apply] : Policies()) {
    SCOPED_TRACE(name);
    std::vector<Case> cases;
    cases.push_back(MakeCase(num_tokens, head_dim, group, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    ExpectBatchMatches(cases);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, DecodeAttentionCudaTest,
                         ::testing::Combine(::testing::Values(1, 3, 17, 63, 64, 65, 255, 257, 1000, 4099),
                                            ::testing::Values(64, 128), ::testing::Values(1, 3, 4)));

class DecodeAttentionCudaBatchTest : public DecodeAttentionCudaTest {};

// One launch, every sequence its own policy and length.
TEST_F(DecodeAttentionCudaBatchTest, MixedPoliciesInOneBatch) {
  std::vector<Case> cases;
  uint32_t seed = 100;
  int length = 5;
  for (const auto& [name, apply] : Policies()) {
    cases.push_back(MakeCase(length, 64, 3, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    length = length * 2 + 7;
  }
  ExpectBatchMatches(cases);
}

TEST(DecodeAttentionCudaArgsTest, ShapesTheKernelsDoNotCoverAreRejected) {
  DecodeAttentionArgs a;
  a.n_seqs = 1;
  a.max_tokens = 10;
  a.n_q_heads = 8;
  a.n_kv_heads = 2;
  a.head_dim = 96;
  float dummy = 0.0f;
  DecodeSequence seq;
  a.seqs = &seq;
  a.q = &dummy;
  a.out = &dummy;
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 1 << 20, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 64;
  a.n_q_heads = 7;  // not a multiple of the KV heads
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 1 << 20, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_q_heads = 8;
  EXPECT_EQ(DecodeAttentionCuda(a, &dummy, 4, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_seqs = 0;
  EXPECT_TRUE(DecodeAttentionCuda(a, nullptr, 0, nullptr).ok());
}

}  // namespace
}  // namespace attnserve
