// The linear mode's GPU kernels against the CPU's FoldKey and
// ReadLinearState: the state after folds in two steps, and the joined output
// of decode queries. GPU cases skip without a device; argument checks run
// everywhere.
#include "kernels/cuda/linear_state.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "kernels/common/taylor.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

class LinearStateCudaTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_P(LinearStateCudaTest, FoldsAndJoinsAsTheCpu) {
  const int head_dim = GetParam(), n_kv = 2, group = 3, tokens = 77;
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

  // GPU: the same keys in two folds.
  DeviceBuffer keys = Upload(pr.keys), values = Upload(pr.values), table = Upload(pr.page_table);
  DeviceBuffer states = Upload(std::vector<float>(per_head * n_kv, 0.0f));
  for (const auto& [begin, end] : {std::pair{4, 41}, std::pair{41, 60}}) {
    LinearFoldSequence s;
    s.kv = host_kv;
    s.kv.keys = keys.as<fp16_t>();
    s.kv.values = values.as<fp16_t>();
    s.kv.page_table = table.as<int32_t>();
    s.fold_begin = begin;
    s.fold_end = end;
    s.states = states.as<float>();
    DeviceBuffer d_seq = Upload(std::vector<LinearFoldSequence>{s});
    ASSERT_TRUE(FoldKeysCuda(d_seq.as<LinearFoldSequence>(), 1, n_kv, head_dim, nullptr).ok());
    ASSERT_TRUE(CudaStreamSync(nullptr).ok());
  }
  ExpectNear(Download<float>(states, want.size()), want, 1e-4f, "state");

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
  DeviceBuffer heads = Upload(pr.heads), d_q = Upload(pr.q), d_lse = Upload(lse), out = Upload(exact);
  LinearReadSequence rs;
  rs.states = states.as<float>();
  rs.heads = heads.as<AttentionHeadParams>();
  DeviceBuffer d_rs = Upload(std::vector<LinearReadSequence>{rs});
  LinearReadArgs a;
  a.seqs = d_rs.as<LinearReadSequence>();
  a.n_seqs = 1;
  a.q = d_q.as<float>();
  a.lse = d_lse.as<float>();
  a.out = out.as<float>();
  a.n_q_heads = n_q;
  a.n_kv_heads = n_kv;
  a.head_dim = head_dim;
  ASSERT_TRUE(JoinLinearStateCuda(a, nullptr).ok());
  ASSERT_TRUE(CudaStreamSync(nullptr).ok());
  ExpectNear(Download<float>(out, exact.size()), joined, 1e-4f, "output");

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
  DeviceBuffer d_q2 = Upload(q2), d_lse2 = Upload(lse2), out2 = Upload(exact2);
  rs.row = 1;
  rs.kv = host_kv;
  rs.kv.keys = keys.as<fp16_t>();
  rs.kv.values = values.as<fp16_t>();
  rs.kv.page_table = table.as<int32_t>();
  rs.pending_begin = pending_begin;
  rs.pending_end = pending_end;
  DeviceBuffer d_rs2 = Upload(std::vector<LinearReadSequence>{rs});
  a.seqs = d_rs2.as<LinearReadSequence>();
  a.q = d_q2.as<float>();
  a.lse = d_lse2.as<float>();
  a.out = out2.as<float>();
  ASSERT_TRUE(JoinLinearStateCuda(a, nullptr).ok());
  ASSERT_TRUE(CudaStreamSync(nullptr).ok());
  ExpectNear(Download<float>(out2, exact2.size()), joined2, 1e-4f, "output with pending keys");
}

INSTANTIATE_TEST_SUITE_P(HeadDims, LinearStateCudaTest, ::testing::Values(32, 64, 128));

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
