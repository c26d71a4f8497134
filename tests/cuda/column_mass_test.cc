// ColumnMassCuda (ACT's prompt statistic) against the CPU's
// AttentionColumnMassKvHead over every query of a prompt, with the hooks
// that change the probabilities (bias, virtual sink, a head's window), at
// both head dims. GPU cases skip without a device; argument checks run
// everywhere.
#include "kernels/cuda/column_mass.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

class ColumnMassCudaTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_P(ColumnMassCudaTest, SumsTheProbabilitiesTheCpuSums) {
  const int head_dim = GetParam(), n_kv = 2, group = 3, tokens = 77;
  Problem pr(16, head_dim, n_kv, group, tokens, tokens, 21, 1.0f);
  pr.heads[0].first_token_bias = 1.5f;
  pr.heads[1].virtual_sink_logit = 0.5f;
  pr.heads[4].sink_tokens = 4;
  pr.heads[4].window_tokens = 16;
  const int n_q = n_kv * group;

  std::vector<double> want(static_cast<size_t>(n_q) * tokens, 0.0);
  for (int g = 0; g < n_kv; ++g) {
    AttentionColumnMassKvHead(pr.Queries(), pr.Kv(), pr.Params(), g, &want[static_cast<size_t>(g) * group * tokens]);
  }

  DeviceBuffer keys = Upload(pr.keys), values = Upload(pr.values), table = Upload(pr.page_table);
  DeviceBuffer heads = Upload(pr.heads), q = Upload(pr.q);
  SequenceAttentionParams params = pr.Params();
  params.heads = heads.as<AttentionHeadParams>();
  params.spans = nullptr;
  params.reweight_keys = nullptr;
  std::vector<DecodeSequence> seqs(tokens);
  for (int i = 0; i < tokens; ++i) {
    seqs[i].kv = pr.Kv();
    seqs[i].kv.keys = keys.as<fp16_t>();
    seqs[i].kv.values = values.as<fp16_t>();
    seqs[i].kv.page_table = table.as<int32_t>();
    seqs[i].params = params;
    seqs[i].query_pos = pr.positions[i];
  }
  DeviceBuffer d_seqs = Upload(seqs);
  DeviceBuffer out = DeviceBuffer::Allocate(pr.q.size() * sizeof(float)).value();
  DeviceBuffer lse = DeviceBuffer::Allocate(static_cast<size_t>(tokens) * n_q * sizeof(float)).value();
  DecodeAttentionArgs a;
  a.seqs = d_seqs.as<DecodeSequence>();
  a.n_seqs = tokens;
  a.max_tokens = tokens;
  a.q = q.as<float>();
  a.n_q_heads = n_q;
  a.n_kv_heads = n_kv;
  a.head_dim = head_dim;
  a.out = out.as<float>();
  a.lse = lse.as<float>();
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(tokens, n_q, head_dim, tokens);
  DeviceBuffer ws = DeviceBuffer::Allocate(ws_bytes).value();
  ASSERT_TRUE(DecodeAttentionCuda(a, ws.data(), ws_bytes, nullptr).ok());

  DeviceBuffer mass = Upload(std::vector<double>(want.size(), 0.0));
  ColumnMassArgs m;
  m.seqs = d_seqs.as<DecodeSequence>();
  m.n_queries = tokens;
  m.q = q.as<float>();
  m.lse = lse.as<float>();
  m.n_q_heads = n_q;
  m.n_kv_heads = n_kv;
  m.head_dim = head_dim;
  m.mass = mass.as<double>();
  m.n_keys = tokens;
  ASSERT_TRUE(ColumnMassCuda(m, nullptr).ok());
  ASSERT_TRUE(CudaStreamSync(nullptr).ok());
  const std::vector<double> got = Download<double>(mass, want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= 1e-3 * (1.0 + want[i]))) {
      ADD_FAILURE() << "mass[head " << i / tokens << "][key " << i % tokens << "]: " << got[i] << " vs " << want[i];
      ++bad;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, ColumnMassCudaTest, ::testing::Values(64, 128));

TEST(ColumnMassCudaArgsTest, BadShapesAreRejected) {
  ColumnMassArgs a;
  a.n_queries = 1;
  a.n_keys = 4;
  a.n_q_heads = 6;
  a.n_kv_heads = 4;  // not a divisor
  a.head_dim = 64;
  EXPECT_EQ(ColumnMassCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.n_kv_heads = 2;
  EXPECT_EQ(ColumnMassCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);  // null pointers
  a.n_queries = 0;
  EXPECT_TRUE(ColumnMassCuda(a, nullptr).ok());
}

}  // namespace
}  // namespace attnserve
