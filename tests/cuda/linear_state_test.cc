// The linear mode's GPU kernels against the CPU's FoldKey and
// ReadLinearState: the state after folds in two steps, and the joined output
// of decode queries; on the GPU, and on the host under the emulator (every
// machine, head_dim 96 in place of 128: its fold is slow to emulate). GPU
// cases skip without a device; argument checks run everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernels compile for the emulator
#include "kernels/cuda/linear_state_kernels.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/taylor.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

absl::Status Fold(KernelBackend backend, const LinearFoldSequence* seq, int32_t n_kv_heads, int32_t head_dim) {
  if (backend == KernelBackend::kEmulator) return RunFoldKeys(seq, 1, n_kv_heads, head_dim, emu::Launcher{});
  if (absl::Status s = FoldKeysCuda(seq, 1, n_kv_heads, head_dim, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

absl::Status Join(KernelBackend backend, const LinearReadArgs& a) {
  if (backend == KernelBackend::kEmulator) return RunJoinLinearState(a, emu::Launcher{});
  if (absl::Status s = JoinLinearStateCuda(a, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

using SizeParam = std::tuple<KernelBackend, int>;  // backend, head_dim

class LinearStateCudaTest : public ::testing::TestWithParam<SizeParam> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(std::get<0>(GetParam())); }
};

TEST_P(LinearStateCudaTest, FoldsAndJoinsAsTheCpu) {
  const auto [backend, head_dim] = GetParam();
  const int n_kv = 2, group = 3, tokens = 77;
  KernelMemory memory(backend);
  Problem pr(16, head_dim, n_kv, group, tokens, 1, 9, 0.3f);
  const PagedKv host_kv = pr.Kv();
  const int features = TaylorFeatureCount(head_dim);
  const size_t per_head = LinearStateFloats(head_dim);

  // CPU: keys [4, 60) folded; its states laid out as the device's (S, then z).
  std::vector<float> want(per_head * n_kv);
  std::vector<LinearHeadState> cpu(n_kv);
  for (int g = 0; g < n_kv; ++g) {
    cpu[g].s.assign(static_cast<size_t>(features) * head_dim, 0.0f);
    cpu[g].z.assign(features, 0.0f);
    std::vector<float> k(head_dim), v(head_dim);
    for (int32_t j = 4; j < 60; ++j) {
      for (int c = 0; c < head_dim; ++c) {
        k[c] = Fp16ToFloat(host_kv.Row(host_kv.keys, g, j)[c]);
        v[c] = Fp16ToFloat(host_kv.Row(host_kv.values, g, j)[c]);
      }
      FoldKey(k.data(), v.data(), head_dim, cpu[g]);
    }
    std::copy(cpu[g].s.begin(), cpu[g].s.end(), want.begin() + g * per_head);
    std::copy(cpu[g].z.begin(), cpu[g].z.end(), want.begin() + g * per_head + cpu[g].s.size());
  }

  // The kernel: the same keys in three folds (passes of 8 keys and a part;
  // a decode step's one key).
  PagedKv kv = host_kv;
  kv.keys = memory.Upload(pr.keys);
  kv.values = memory.Upload(pr.values);
  kv.page_table = memory.Upload(pr.page_table);
  float* states = memory.Upload(std::vector<float>(per_head * n_kv, 0.0f));
  for (const auto& [begin, end] : {std::pair{4, 41}, std::pair{41, 59}, std::pair{59, 60}}) {
    LinearFoldSequence s;
    s.kv = kv;
    s.fold_begin = begin;
    s.fold_end = end;
    s.states = states;
    const absl::Status st = Fold(backend, memory.Upload(std::vector<LinearFoldSequence>{s}), n_kv, head_dim);
    ASSERT_TRUE(st.ok()) << st;
  }
  ExpectNear(memory.Download(states, want.size()), want, 1e-4f, "state");

  // Join: out = (o · e^lse + φ(q)ᵀS) / (e^lse + φ(q)·z) per query head.
  const int n_q = n_kv * group;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  std::vector<float> exact(static_cast<size_t>(n_q) * head_dim), lse(n_q);
  for (float& x : exact) x = normal(rng);
  for (float& x : lse) x = 3.0f + normal(rng);
  std::vector<float> joined = exact;
  for (int h = 0; h < n_q; ++h) {
    std::vector<float> q(head_dim), num(head_dim);
    for (int c = 0; c < head_dim; ++c) q[c] = pr.q[h * head_dim + c] * pr.heads[h].logit_scale;
    float den = 0.0f;
    ReadLinearState(cpu[h / group], q.data(), head_dim, num.data(), &den);
    const double w = 1.0 / (1.0 + den * std::exp(-lse[h]));
    for (int c = 0; c < head_dim; ++c) {
      joined[h * head_dim + c] = static_cast<float>(w * exact[h * head_dim + c] + (1.0 - w) * num[c] / den);
    }
  }
  LinearReadSequence rs;
  rs.states = states;
  rs.heads = memory.Upload(pr.heads);
  LinearReadArgs a;
  a.seqs = memory.Upload(std::vector<LinearReadSequence>{rs});
  a.n_seqs = 1;
  a.q = memory.Upload(pr.q);
  a.lse = memory.Upload(lse);
  a.out = memory.Upload(exact);
  a.n_q_heads = n_q;
  a.n_kv_heads = n_kv;
  a.head_dim = head_dim;
  absl::Status st = Join(backend, a);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(memory.Download(a.out, exact.size()), joined, 1e-4f, "output");

  // A prefill query whose window has left keys [60, 70) behind since the
  // fold: they join with their Taylor weights. Its row is 1 of 2.
  const int32_t pending_begin = 60, pending_end = 70;
  std::vector<float> q2(2 * exact.size()), exact2(2 * exact.size()), lse2(2 * n_q);
  std::copy(pr.q.begin(), pr.q.begin() + exact.size(), q2.begin() + exact.size());
  std::copy(exact.begin(), exact.end(), exact2.begin() + exact.size());
  std::copy(lse.begin(), lse.end(), lse2.begin() + n_q);
  std::vector<float> joined2 = exact2;
  for (int h = 0; h < n_q; ++h) {
    std::vector<float> q(head_dim), num(head_dim);
    for (int c = 0; c < head_dim; ++c) q[c] = pr.q[h * head_dim + c] * pr.heads[h].logit_scale;
    float den_f = 0.0f;
    ReadLinearState(cpu[h / group], q.data(), head_dim, num.data(), &den_f);
    double den = den_f;
    for (int32_t j = pending_begin; j < pending_end; ++j) {
      float x = 0.0f;
      for (int c = 0; c < head_dim; ++c) x += q[c] * Fp16ToFloat(host_kv.Row(host_kv.keys, h / group, j)[c]);
      const float w = Taylor2(x);
      for (int c = 0; c < head_dim; ++c) num[c] += w * Fp16ToFloat(host_kv.Row(host_kv.values, h / group, j)[c]);
      den += w;
    }
    const double w = 1.0 / (1.0 + den * std::exp(-lse[h]));
    for (int c = 0; c < head_dim; ++c) {
      joined2[exact.size() + h * head_dim + c] = static_cast<float>(w * exact[h * head_dim + c] + (1.0 - w) * num[c] / den);
    }
  }
  rs.row = 1;
  rs.kv = kv;
  rs.pending_begin = pending_begin;
  rs.pending_end = pending_end;
  a.seqs = memory.Upload(std::vector<LinearReadSequence>{rs});
  a.q = memory.Upload(q2);
  a.lse = memory.Upload(lse2);
  a.out = memory.Upload(exact2);
  st = Join(backend, a);
  ASSERT_TRUE(st.ok()) << st;
  ExpectNear(memory.Download(a.out, exact2.size()), joined2, 1e-4f, "output with pending keys");
}

std::string SizeName(const ::testing::TestParamInfo<SizeParam>& info) {
  const auto [backend, head_dim] = info.param;
  return absl::StrCat(KernelBackendName({backend, 0}), "_d", head_dim);
}

// 96 as well: the join's blocks of an odd number of warps, more than two.
INSTANTIATE_TEST_SUITE_P(HeadDims, LinearStateCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator),
                                            ::testing::Values(32, 64, 96, 128)),
                         SizeName);

TEST(LinearStateCudaArgsTest, BadShapesAreRejected) {
  EXPECT_EQ(FoldKeysCuda(nullptr, 1, 2, 256, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FoldKeysCuda(nullptr, 1, 2, 64, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(FoldKeysCuda(nullptr, 0, 2, 64, nullptr).ok());
  LinearReadArgs a;
  a.n_seqs = 1;
  a.n_q_heads = 6;
  a.n_kv_heads = 2;
  a.head_dim = 48;  // not whole warps
  EXPECT_EQ(JoinLinearStateCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.head_dim = 64;
  EXPECT_EQ(JoinLinearStateCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);  // null pointers
  EXPECT_EQ(LinearStateFloats(2), size_t{(1 + 2 + 3) * 3});
}

}  // namespace
}  // namespace attnserve
