// DecodeAttentionCuda against the CPU reference (PagedAttentionReference,
// in double) over odd sizes, both head dims, every policy hook, packed
// (by-head) page tables and a batch whose sequences all have different
// policies; on the GPU, and on the host under the emulator (every machine).
// GPU cases skip with the reason where no device is present (fail when
// ATTNSERVE_REQUIRE_GPU is set, as scripts/gpu-check.sh does).
#include "tests/cuda_emu/device_shims.h"  // first: the kernels compile for the emulator
#include "kernels/cuda/paged_decode_kernels.cuh"

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

absl::Status Run(KernelBackend backend, const DecodeAttentionArgs& a, void* workspace, size_t bytes) {
  if (backend == KernelBackend::kEmulator) return RunDecodeAttention(a, workspace, bytes, emu::Launcher{});
  if (absl::Status s = DecodeAttentionCuda(a, workspace, bytes, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

// Runs the cases as one batch (same heads and head_dim) and checks each
// output against its reference (and that every lse was written).
void ExpectBatchMatches(KernelBackend backend, std::vector<Case>& cases) {
  KernelMemory memory(backend);
  KernelBatch batch{memory};
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
  a.seqs = memory.Upload(batch.seqs);
  a.n_seqs = static_cast<int32_t>(cases.size());
  a.max_tokens = max_tokens;
  a.q = memory.Upload(q);
  a.sink_q = any_sink_q ? memory.Upload(sink_q) : nullptr;
  a.n_q_heads = first.n_q_heads();
  a.n_kv_heads = first.n_kv_heads;
  a.head_dim = first.head_dim;
  a.out = memory.Allocate<float>(q.size());
  a.lse = memory.Allocate<float>(cases.size() * first.n_q_heads());
  const size_t bytes = DecodeAttentionWorkspaceBytes(a.n_seqs, a.n_q_heads, a.head_dim, a.max_tokens);
  void* workspace = memory.Allocate<unsigned char>(bytes);
  const absl::Status s = Run(backend, a, workspace, bytes);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<float> got = memory.Download(a.out, q.size());
  const std::vector<float> lse_got = memory.Download(a.lse, cases.size() * first.n_q_heads());
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

std::string SizeName(const ::testing::TestParamInfo<std::tuple<KernelBackend, int, int, int>>& info) {
  const auto [backend, num_tokens, head_dim, group] = info.param;
  return absl::StrCat(KernelBackendName({backend, 0}), "_", num_tokens, "_d", head_dim, "_g", group);
}

class DecodeAttentionCudaTest : public ::testing::TestWithParam<std::tuple<KernelBackend, int, int, int>> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(std::get<0>(GetParam())); }
};

TEST_P(DecodeAttentionCudaTest, EveryPolicyMatchesTheReference) {
  const auto [backend, num_tokens, head_dim, group] = GetParam();
  uint32_t seed = 1;
  for (const auto& [name, apply] : Policies()) {
    SCOPED_TRACE(name);
    std::vector<Case> cases;
    cases.push_back(MakeCase(num_tokens, head_dim, group, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    ExpectBatchMatches(backend, cases);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, DecodeAttentionCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator),
                                            ::testing::Values(1, 3, 17, 63, 64, 65, 255, 257, 1000, 4099),
                                            ::testing::Values(64, 128), ::testing::Values(1, 3, 4)),
                         SizeName);

class DecodeAttentionCudaBatchTest : public ::testing::TestWithParam<KernelBackend> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(GetParam()); }
};

// One launch, every sequence its own policy and length.
TEST_P(DecodeAttentionCudaBatchTest, MixedPoliciesInOneBatch) {
  std::vector<Case> cases;
  uint32_t seed = 100;
  int length = 5;
  for (const auto& [name, apply] : Policies()) {
    cases.push_back(MakeCase(length, 64, 3, seed));
    std::mt19937 rng(seed++);
    apply(cases.back(), rng);
    length = length * 2 + 7;
  }
  ExpectBatchMatches(GetParam(), cases);
}

INSTANTIATE_TEST_SUITE_P(Backends, DecodeAttentionCudaBatchTest,
                         ::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator), KernelBackendName);

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
