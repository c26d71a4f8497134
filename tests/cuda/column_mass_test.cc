// ColumnMassCuda (ACT's prompt statistic) against the CPU's
// AttentionColumnMassKvHead over every query of a prompt, with the hooks
// that change the probabilities (bias, virtual sink, a head's window,
// streaming's sinks scored with cache-slot queries), at both head dims, for
// prompts of one key tile and of several; on the GPU,
// and on the host under the emulator (every machine). GPU cases skip
// without a device; argument checks run everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernels compile for the emulator
#include "kernels/cuda/column_mass_kernels.cuh"
#include "kernels/cuda/paged_decode_kernels.cuh"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/kernel_memory.h"
#include "tests/unit/attention_problem.h"

namespace attnserve {
namespace {

using testing_attention::Problem;

// The attention's lse of the entries, then their column sums into mass.
absl::Status RunKernels(KernelBackend backend, const DecodeAttentionArgs& attention, void* workspace, size_t bytes,
                        const ColumnMassArgs& m) {
  if (backend == KernelBackend::kEmulator) {
    if (absl::Status s = RunDecodeAttention(attention, workspace, bytes, emu::Launcher{}); !s.ok()) return s;
    return RunColumnMass(m, emu::Launcher{});
  }
  if (absl::Status s = DecodeAttentionCuda(attention, workspace, bytes, nullptr); !s.ok()) return s;
  if (absl::Status s = ColumnMassCuda(m, nullptr); !s.ok()) return s;
  return CudaStreamSync(nullptr);
}

using SizeParam = std::tuple<KernelBackend, int, int>;  // backend, head_dim, tokens

std::string SizeName(const ::testing::TestParamInfo<SizeParam>& info) {
  const auto [backend, head_dim, tokens] = info.param;
  return absl::StrCat(KernelBackendName({backend, 0}), "_d", head_dim, "_", tokens);
}

class ColumnMassCudaTest : public ::testing::TestWithParam<SizeParam> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(std::get<0>(GetParam())); }
};

TEST_P(ColumnMassCudaTest, SumsTheProbabilitiesTheCpuSums) {
  const auto [backend, head_dim, tokens] = GetParam();
  const int n_kv = 2, group = 3;
  Problem pr(16, head_dim, n_kv, group, tokens, tokens, 21, 1.0f);
  pr.heads[0].first_token_bias = 1.5f;
  pr.heads[1].virtual_sink_logit = 0.5f;
  pr.heads[4].sink_tokens = 4;
  pr.heads[4].window_tokens = 16;
  pr.params.sink_tokens = 4;
  pr.params.window_tokens = 200;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> sink_q(pr.q.size());
  for (float& x : sink_q) x = Fp16ToFloat(FloatToFp16(normal(rng)));
  const int n_q = n_kv * group;

  AttentionQueries queries = pr.Queries();
  queries.sink_q = sink_q.data();
  std::vector<double> want(static_cast<size_t>(n_q) * tokens, 0.0);
  for (int g = 0; g < n_kv; ++g) {
    AttentionColumnMassKvHead(queries, pr.Kv(), pr.Params(), g, &want[static_cast<size_t>(g) * group * tokens]);
  }

  KernelMemory memory(backend);
  SequenceAttentionParams params = pr.Params();
  params.heads = memory.Upload(pr.heads);
  params.spans = nullptr;
  params.reweight_keys = nullptr;
  PagedKv kv = pr.Kv();
  kv.keys = memory.Upload(pr.keys);
  kv.values = memory.Upload(pr.values);
  kv.page_table = memory.Upload(pr.page_table);
  std::vector<DecodeSequence> seqs(tokens);
  for (int i = 0; i < tokens; ++i) {
    seqs[i].kv = kv;
    seqs[i].params = params;
    seqs[i].query_pos = pr.positions[i];
  }
  const DecodeSequence* d_seqs = memory.Upload(seqs);
  const float* q = memory.Upload(pr.q);
  const float* d_sink_q = memory.Upload(sink_q);
  float* lse = memory.Allocate<float>(static_cast<size_t>(tokens) * n_q);
  DecodeAttentionArgs a;
  a.seqs = d_seqs;
  a.n_seqs = tokens;
  a.max_tokens = tokens;
  a.q = q;
  a.sink_q = d_sink_q;
  a.n_q_heads = n_q;
  a.n_kv_heads = n_kv;
  a.head_dim = head_dim;
  a.out = memory.Allocate<float>(pr.q.size());
  a.lse = lse;
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(tokens, n_q, head_dim, tokens);
  void* ws = memory.Allocate<unsigned char>(ws_bytes);

  ColumnMassArgs m;
  m.seqs = d_seqs;
  m.n_queries = tokens;
  m.q = q;
  m.sink_q = d_sink_q;
  m.lse = lse;
  m.n_q_heads = n_q;
  m.n_kv_heads = n_kv;
  m.head_dim = head_dim;
  m.mass = memory.Upload(std::vector<double>(want.size(), 0.0));
  m.n_keys = tokens;
  const absl::Status s = RunKernels(backend, a, ws, ws_bytes, m);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<double> got = memory.Download(m.mass, want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= 1e-3 * (1.0 + want[i]))) {
      ADD_FAILURE() << "mass[head " << i / tokens << "][key " << i % tokens << "]: " << got[i] << " vs " << want[i];
      ++bad;
    }
  }
}

// 77 keys fit one tile of the kernel's; 300 take three, the last partial.
INSTANTIATE_TEST_SUITE_P(Sizes, ColumnMassCudaTest,
                         ::testing::Combine(::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator),
                                            ::testing::Values(64, 128), ::testing::Values(77, 300)),
                         SizeName);

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
