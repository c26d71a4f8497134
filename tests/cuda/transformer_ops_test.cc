// The CUDA backend's elementwise kernels and bf16 GEMM against the CPU ops
// and references (DESIGN.md §8), at odd sizes. GPU cases skip without a
// device; argument checks run everywhere.
#include "kernels/cuda/transformer_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/sampling/sampler.h"
#include "kernels/common/half.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "tests/cuda/cuda_test_util.h"

namespace attnserve {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

class TransformerOpsCudaTest : public ::testing::Test {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_F(TransformerOpsCudaTest, EmbedGatherAndBf16) {
  const int32_t vocab = 37, hidden = 67, rows = 5;
  const std::vector<float> table_f = Random(vocab * hidden, 1);
  std::vector<uint16_t> table(table_f.size());
  for (size_t i = 0; i < table.size(); ++i) table[i] = FloatToBf16(table_f[i]);
  const std::vector<int32_t> tokens = {36, 0, 5, 5, 17};
  DeviceBuffer d_table = Upload(table), d_tokens = Upload(tokens);
  DeviceBuffer x = DeviceBuffer::Allocate(rows * hidden * sizeof(float)).value();
  ASSERT_TRUE(EmbedRowsCuda(d_table.as<uint16_t>(), d_tokens.as<int32_t>(), rows, hidden, x.as<float>(), nullptr).ok());
  const std::vector<float> got = Download<float>(x, rows * hidden);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < hidden; ++c) {
      ASSERT_EQ(got[r * hidden + c], Bf16ToFloat(table[tokens[r] * hidden + c])) << r << "," << c;
    }
  }
  const std::vector<int32_t> pick = {4, 0, 4};
  DeviceBuffer d_pick = Upload(pick), picked = DeviceBuffer::Allocate(3 * hidden * sizeof(float)).value();
  ASSERT_TRUE(GatherRowsCuda(x.as<float>(), d_pick.as<int32_t>(), 3, hidden, picked.as<float>(), nullptr).ok());
  const std::vector<float> rows_got = Download<float>(picked, 3 * hidden);
  for (int i = 0; i < 3; ++i) {
    for (int32_t c = 0; c < hidden; ++c) ASSERT_EQ(rows_got[i * hidden + c], got[pick[i] * hidden + c]);
  }
  DeviceBuffer halves = DeviceBuffer::Allocate(rows * hidden * sizeof(uint16_t)).value();
  ASSERT_TRUE(ToBf16Cuda(x.as<float>(), rows * hidden, halves.as<uint16_t>(), nullptr).ok());
  const std::vector<uint16_t> bits = Download<uint16_t>(halves, rows * hidden);
  for (size_t i = 0; i < bits.size(); ++i) ASSERT_EQ(bits[i], FloatToBf16(got[i])) << i;
}

// The split of a fused QKV row and RoPE against ops' Rope, at positions on
// both sides of the context (the double path past it), with partial rotary
// dimensions and cache slots for the queries.
TEST_F(TransformerOpsCudaTest, QkvSplitRopeMatchesOpsRope) {
  for (const int head_dim : {64, 128}) {
    const int n_heads = 6, n_kv = 2, rotary = head_dim / 2, rows = 7, context = 4096;
    const int q_dim = n_heads * head_dim, kv_dim = n_kv * head_dim, width = q_dim + 2 * kv_dim;
    const std::vector<float> qkv = Random(static_cast<size_t>(rows) * width, head_dim);
    const std::vector<int32_t> positions = {0, 1, 17, 4095, 4096, 100000, 3};
    const std::vector<int32_t> slots = {0, 1, 11, 11, 11, 11, 3};
    const RopeParams p{head_dim, rotary, 10000.0f, 1.0f};
    const RopeAngles angles{std::pow(p.base, -2.0f / static_cast<float>(rotary)), 1.0f, context};
    std::vector<float> want_q(rows * q_dim), want_k(rows * kv_dim), want_v(rows * kv_dim), want_sink(rows * q_dim);
    for (int r = 0; r < rows; ++r) {
      std::copy_n(&qkv[r * width], q_dim, &want_q[r * q_dim]);
      std::copy_n(&qkv[r * width + q_dim], kv_dim, &want_k[r * kv_dim]);
      std::copy_n(&qkv[r * width + q_dim + kv_dim], kv_dim, &want_v[r * kv_dim]);
      std::copy_n(&qkv[r * width], q_dim, &want_sink[r * q_dim]);
    }
    // Reference rotation: the shared angle, applied pair by pair.
    auto rotate = [&](float* x, int32_t pos, int heads) {
      for (int h = 0; h < heads; ++h) {
        for (int i = 0; 2 * i < rotary; ++i) {
          float c, s;
          RopeCosSin(angles, pos, i, &c, &s);
          float* xh = x + h * head_dim + 2 * i;
          const float x0 = xh[0], x1 = xh[1];
          xh[0] = x0 * c - x1 * s;
          xh[1] = x1 * c + x0 * s;
        }
      }
    };
    for (int r = 0; r < rows; ++r) {
      rotate(&want_q[r * q_dim], positions[r], n_heads);
      rotate(&want_k[r * kv_dim], positions[r], n_kv);
      rotate(&want_sink[r * q_dim], slots[r], n_heads);
    }
    // Below the context that is ops' RoPE, to float rounding.
    std::vector<float> ops_q(&qkv[2 * width], &qkv[2 * width + q_dim]);
    Rope(ops_q.data(), &positions[2], 1, n_heads, p);
    for (int i = 0; i < q_dim; ++i) ASSERT_NEAR(ops_q[i], want_q[2 * q_dim + i], 1e-5f * (1 + std::fabs(ops_q[i]))) << i;

    DeviceBuffer d_qkv = Upload(qkv), d_pos = Upload(positions), d_slots = Upload(slots);
    DeviceBuffer q = DeviceBuffer::Allocate(want_q.size() * 4).value(), k = DeviceBuffer::Allocate(want_k.size() * 4).value();
    DeviceBuffer v = DeviceBuffer::Allocate(want_v.size() * 4).value(), sink = DeviceBuffer::Allocate(want_q.size() * 4).value();
    QkvSplitArgs a;
    a.qkv = d_qkv.as<float>();
    a.rows = rows;
    a.positions = d_pos.as<int32_t>();
    a.slots = d_slots.as<int32_t>();
    a.q = q.as<float>();
    a.k = k.as<float>();
    a.v = v.as<float>();
    a.sink_q = sink.as<float>();
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv;
    a.head_dim = head_dim;
    a.rotary_dim = rotary;
    a.rope = angles;
    ASSERT_TRUE(QkvSplitRopeCuda(a, nullptr).ok());
    ExpectNear(Download<float>(q, want_q.size()), want_q, 2e-6f, "q");
    ExpectNear(Download<float>(k, want_k.size()), want_k, 2e-6f, "k");
    ExpectNear(Download<float>(v, want_v.size()), want_v, 0.0f, "v");
    ExpectNear(Download<float>(sink, want_sink.size()), want_sink, 2e-6f, "sink_q");
  }
}

TEST_F(TransformerOpsCudaTest, SwiGluMatchesOpsThenRoundsToBf16) {
  const int rows = 3, ffn = 1001;
  const std::vector<float> gate_up = Random(rows * 2 * ffn, 9, 3.0f);
  std::vector<float> gate(rows * ffn), up(rows * ffn), want(rows * ffn);
  for (int r = 0; r < rows; ++r) {
    std::copy_n(&gate_up[r * 2 * ffn], ffn, &gate[r * ffn]);
    std::copy_n(&gate_up[r * 2 * ffn + ffn], ffn, &up[r * ffn]);
  }
  SwiGluReference(gate.data(), up.data(), want.data(), rows * ffn);
  DeviceBuffer d = Upload(gate_up), out = DeviceBuffer::Allocate(rows * ffn * sizeof(uint16_t)).value();
  ASSERT_TRUE(SwiGluBf16Cuda(d.as<float>(), rows, ffn, out.as<uint16_t>(), nullptr).ok());
  const std::vector<uint16_t> got = Download<uint16_t>(out, rows * ffn);
  std::vector<float> got_f(got.size());
  for (size_t i = 0; i < got.size(); ++i) got_f[i] = Bf16ToFloat(got[i]);
  ExpectNear(got_f, want, 1.0f / 128.0f, "swiglu");
}

// cuBLAS bf16 GEMM against the double reference on the same bf16 values,
// with and without accumulating into y.
TEST_F(TransformerOpsCudaTest, GemmBf16MatchesTheReference) {
  absl::StatusOr<CublasHandle> handle = CublasHandle::Create(nullptr);
  ASSERT_TRUE(handle.ok()) << handle.status();
  for (const auto& [out, in, rows] : {std::tuple{67, 96, 1}, std::tuple{130, 64, 5}, std::tuple{576, 1536, 33}}) {
    std::vector<float> w_f = Random(out * in, out), x_f = Random(rows * in, in), y0 = Random(rows * out, rows);
    std::vector<uint16_t> w(w_f.size()), x(x_f.size());
    for (size_t i = 0; i < w.size(); ++i) w_f[i] = Bf16ToFloat(w[i] = FloatToBf16(w_f[i]));
    for (size_t i = 0; i < x.size(); ++i) x_f[i] = Bf16ToFloat(x[i] = FloatToBf16(x_f[i]));
    std::vector<float> want(rows * out);
    const WeightMatrix wm{GgmlType::kF32, w_f.data(), out, in, static_cast<size_t>(in) * sizeof(float)};
    MatMulReference(wm, x_f.data(), rows, want.data());
    for (const bool accumulate : {false, true}) {
      DeviceBuffer d_w = Upload(w), d_x = Upload(x), d_y = Upload(y0);
      ASSERT_TRUE(GemmBf16(*handle, {d_w.as<uint16_t>(), out, in, d_x.as<uint16_t>(), rows, d_y.as<float>(), accumulate}).ok());
      ASSERT_TRUE(CudaStreamSync(nullptr).ok());
      std::vector<float> expected = want;
      if (accumulate) {
        for (size_t i = 0; i < expected.size(); ++i) expected[i] += y0[i];
      }
      ExpectNear(Download<float>(d_y, expected.size()), expected, 1e-4f * std::sqrt(static_cast<float>(in)), "gemm");
    }
  }
}

// Greedy picks: the largest value's id, lowest on ties, NaN skipped, 0 for
// rows of NaN (ArgMax's rule), over rows longer than a block.
TEST_F(TransformerOpsCudaTest, GreedyPicksTakeTheFirstLargest) {
  const float nan = NAN, inf = INFINITY;
  const int32_t width = 1000;
  std::vector<std::vector<float>> rows(6, std::vector<float>(width, 0.0f));
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> small(-3, 3);
  for (float& x : rows[0]) x = static_cast<float>(small(rng));  // ties everywhere
  rows[1].assign(width, nan);
  rows[2].assign(width, -inf);
  rows[2][700] = nan;
  rows[3][999] = 1.0f;
  rows[4][3] = inf;
  rows[4][900] = inf;
  for (int i = 0; i < width; ++i) rows[5][i] = i % 2 ? nan : -static_cast<float>(i);
  std::vector<float> flat;
  std::vector<int32_t> want;
  for (const auto& row : rows) {
    flat.insert(flat.end(), row.begin(), row.end());
    want.push_back(ArgMax(row));
  }
  DeviceBuffer x = Upload(flat), picks = Upload(std::vector<TokenPick>(rows.size()));
  DeviceBuffer out = DeviceBuffer::Allocate(rows.size() * sizeof(TokenPick)).value();
  ASSERT_TRUE(PickTokensCuda(x.as<float>(), static_cast<int64_t>(rows.size()), width, picks.as<TokenPick>(),
                             out.as<TokenPick>(), nullptr)
                  .ok());
  const std::vector<TokenPick> got = Download<TokenPick>(out, rows.size());
  for (size_t r = 0; r < rows.size(); ++r) EXPECT_EQ(got[r].token, want[r]) << "row " << r;
}

// Sampled picks against the host's PickToken: the same token, but where
// the two sums' rounding moves the draw across a boundary (the host's pick
// at uniform +- 1e-5 then); and their log-probabilities against
// PickLogprobs.
TEST_F(TransformerOpsCudaTest, SampledPicksAreTheHostsPicks) {
  const int32_t vocab = 49152;
  std::mt19937 rng(8);
  std::vector<float> flat;
  std::vector<TokenPick> picks;
  for (int r = 0; r < 24; ++r) {
    const std::vector<float> row = Random(vocab, 100 + r, 1.0f + r % 4);
    flat.insert(flat.end(), row.begin(), row.end());
    TokenPick p;
    p.temperature = 0.3f + 0.2f * (r % 5);
    p.top_k = r % 3 == 0 ? 0 : 1 + static_cast<int32_t>(rng() % 200);
    p.top_p = r % 4 == 0 ? 1.0f : 0.5f + 0.1f * (r % 5);
    p.min_p = r % 5 == 0 ? 0.05f : 0.0f;
    p.uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    p.logprobs = r % 2 == 0;
    p.top_logprobs = p.logprobs ? r % kMaxPickTop : 0;
    picks.push_back(p);
  }
  // Logit processing on every third row: token 0 masked, a bias, penalties.
  const std::vector<LogitEdit> edits = {{0, 0.0f, 1.0f, 0.0f, 0.0f, true}, {11, 3.0f}, {12, 0.0f, 1.3f, 0.8f, 0.4f, false}};
  DeviceBuffer d_edits = Upload(edits);
  for (size_t r = 0; r < picks.size(); r += 3) {
    picks[r].edits = d_edits.as<LogitEdit>();
    picks[r].n_edits = static_cast<int32_t>(edits.size());
  }
  DeviceBuffer x = Upload(flat), d_picks = Upload(picks);
  DeviceBuffer out = DeviceBuffer::Allocate(picks.size() * sizeof(TokenPick)).value();
  ASSERT_TRUE(PickTokensCuda(x.as<float>(), static_cast<int64_t>(picks.size()), vocab, d_picks.as<TokenPick>(),
                             out.as<TokenPick>(), nullptr)
                  .ok());
  const std::vector<TokenPick> got = Download<TokenPick>(out, picks.size());
  for (size_t r = 0; r < picks.size(); ++r) {
    std::vector<float> edited(&flat[r * vocab], &flat[(r + 1) * vocab]);
    if (picks[r].n_edits > 0) {
      for (const LogitEdit& e : edits) edited[e.token] = EditLogit(edited[e.token], e);
    }
    const std::span<const float> row(edited);
    TokenPick lo = picks[r], hi = picks[r];
    lo.uniform = std::max(0.0, lo.uniform - 1e-5);
    hi.uniform = std::min(0.999999, hi.uniform + 1e-5);
    const int32_t want = PickToken(row, picks[r]);
    EXPECT_TRUE(got[r].token == want || got[r].token == PickToken(row, lo) || got[r].token == PickToken(row, hi))
        << "row " << r << ": " << got[r].token << " vs " << want;
    if (!picks[r].logprobs) continue;
    TokenPick host = picks[r];
    host.token = got[r].token;
    PickLogprobs(row, host);
    EXPECT_NEAR(got[r].logprob, host.logprob, 1e-4f) << "row " << r;
    ASSERT_EQ(got[r].n_top, host.n_top) << "row " << r;
    for (int k = 0; k < host.n_top; ++k) {
      EXPECT_EQ(got[r].top_tokens[k], host.top_tokens[k]) << "row " << r << " top " << k;
      EXPECT_NEAR(got[r].top_logprob_values[k], host.top_logprob_values[k], 1e-4f) << "row " << r << " top " << k;
    }
  }
}

TEST(TransformerOpsCudaArgsTest, BadShapesAreRejected) {
  EXPECT_EQ(EmbedRowsCuda(nullptr, nullptr, -1, 8, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(EmbedRowsCuda(nullptr, nullptr, 0, 8, nullptr, nullptr).ok());
  QkvSplitArgs a;
  a.rows = 1;
  a.n_heads = 2;
  a.n_kv_heads = 1;
  a.head_dim = 64;
  a.rotary_dim = 66;
  EXPECT_EQ(QkvSplitRopeCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.rotary_dim = 64;
  a.slots = reinterpret_cast<const int32_t*>(16);
  EXPECT_EQ(QkvSplitRopeCuda(a, nullptr).code(), absl::StatusCode::kInvalidArgument);  // slots without sink_q
  EXPECT_EQ(SwiGluBf16Cuda(nullptr, 1, 0, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GatherRowsCuda(nullptr, nullptr, 1, 0, nullptr, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // Silu is ggml's x / (1 + e^-x), on the host too.
  EXPECT_FLOAT_EQ(Silu(0.0f), 0.0f);
  EXPECT_NEAR(Silu(2.0f), 2.0f / (1.0f + std::exp(-2.0f)), 1e-7f);
}

}  // namespace
}  // namespace attnserve
