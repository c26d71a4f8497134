// The CUDA backend's elementwise kernels and token picks against the CPU
// ops and references (DESIGN.md §8), at odd sizes, on the GPU and on the
// host under the emulator (every machine); the bf16 GEMM (cuBLAS) on the GPU
// only. GPU cases skip without a device; argument checks run everywhere.
#include "tests/cuda_emu/device_shims.h"  // first: the kernels compile for the emulator
#include "kernels/cuda/transformer_ops_kernels.cuh"

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
#include "tests/cuda/kernel_memory.h"

namespace attnserve {
namespace {

// The launch's error, else the stream's: a kernel's faults show at a sync.
absl::Status Synced(absl::Status launched) {
  if (!launched.ok()) return launched;
  return CudaStreamSync(nullptr);
}

// Each kernel under the emulator through its Run template, or on the GPU
// through its public function.
absl::Status EmbedRows(KernelBackend backend, const uint16_t* table, const int32_t* tokens, int64_t rows,
                       int32_t hidden, float* x) {
  if (backend == KernelBackend::kEmulator) return RunEmbedRows(table, tokens, rows, hidden, x, emu::Launcher{});
  return Synced(EmbedRowsCuda(table, tokens, rows, hidden, x, nullptr));
}

absl::Status GatherRows(KernelBackend backend, const float* x, const int32_t* rows, int64_t n, int32_t width,
                        float* out) {
  if (backend == KernelBackend::kEmulator) return RunGatherRows(x, rows, n, width, out, emu::Launcher{});
  return Synced(GatherRowsCuda(x, rows, n, width, out, nullptr));
}

absl::Status ToBf16(KernelBackend backend, const float* in, int64_t n, uint16_t* out) {
  if (backend == KernelBackend::kEmulator) return RunToBf16(in, n, out, emu::Launcher{});
  return Synced(ToBf16Cuda(in, n, out, nullptr));
}

absl::Status QkvSplitRope(KernelBackend backend, const QkvSplitArgs& a) {
  if (backend == KernelBackend::kEmulator) return RunQkvSplitRope(a, emu::Launcher{});
  return Synced(QkvSplitRopeCuda(a, nullptr));
}

absl::Status SwiGluBf16(KernelBackend backend, const float* gate_up, int64_t rows, int32_t ffn, uint16_t* out) {
  if (backend == KernelBackend::kEmulator) return RunSwiGluBf16(gate_up, rows, ffn, out, emu::Launcher{});
  return Synced(SwiGluBf16Cuda(gate_up, rows, ffn, out, nullptr));
}

absl::Status FillRandomBf16(KernelBackend backend, uint16_t* out, int64_t n, uint64_t seed, float scale) {
  if (backend == KernelBackend::kEmulator) return RunFillRandomBf16(out, n, seed, scale, emu::Launcher{});
  return Synced(FillRandomBf16Cuda(out, n, seed, scale, nullptr));
}

absl::Status PickTokens(KernelBackend backend, float* logits, int64_t rows, int32_t vocab, const TokenPick* picks,
                        TokenPick* results) {
  if (backend == KernelBackend::kEmulator) return RunPickTokens(logits, rows, vocab, picks, results, emu::Launcher{});
  return Synced(PickTokensCuda(logits, rows, vocab, picks, results, nullptr));
}

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

class TransformerOpsCudaTest : public ::testing::TestWithParam<KernelBackend> {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_BACKEND(backend()); }
  KernelBackend backend() const { return GetParam(); }
};

TEST_P(TransformerOpsCudaTest, EmbedGatherAndBf16) {
  const int32_t vocab = 37, hidden = 67, rows = 5;
  const std::vector<float> table_f = Random(vocab * hidden, 1);
  std::vector<uint16_t> table(table_f.size());
  for (size_t i = 0; i < table.size(); ++i) table[i] = FloatToBf16(table_f[i]);
  const std::vector<int32_t> tokens = {36, 0, 5, 5, 17};
  KernelMemory memory(backend());
  float* x = memory.Allocate<float>(rows * hidden);
  absl::Status s = EmbedRows(backend(), memory.Upload(table), memory.Upload(tokens), rows, hidden, x);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<float> got = memory.Download(x, rows * hidden);
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t c = 0; c < hidden; ++c) {
      ASSERT_EQ(got[r * hidden + c], Bf16ToFloat(table[tokens[r] * hidden + c])) << r << "," << c;
    }
  }
  const std::vector<int32_t> pick = {4, 0, 4};
  float* picked = memory.Allocate<float>(3 * hidden);
  s = GatherRows(backend(), x, memory.Upload(pick), 3, hidden, picked);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<float> rows_got = memory.Download(picked, 3 * hidden);
  for (int i = 0; i < 3; ++i) {
    for (int32_t c = 0; c < hidden; ++c) ASSERT_EQ(rows_got[i * hidden + c], got[pick[i] * hidden + c]);
  }
  uint16_t* halves = memory.Allocate<uint16_t>(rows * hidden);
  s = ToBf16(backend(), x, rows * hidden, halves);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<uint16_t> bits = memory.Download(halves, rows * hidden);
  for (size_t i = 0; i < bits.size(); ++i) ASSERT_EQ(bits[i], FloatToBf16(got[i])) << i;
}

// The split of a fused QKV row and RoPE against ops' Rope, at positions on
// both sides of the context (the double path past it), with partial rotary
// dimensions and cache slots for the queries.
TEST_P(TransformerOpsCudaTest, QkvSplitRopeMatchesOpsRope) {
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

    KernelMemory memory(backend());
    QkvSplitArgs a;
    a.qkv = memory.Upload(qkv);
    a.rows = rows;
    a.positions = memory.Upload(positions);
    a.slots = memory.Upload(slots);
    a.q = memory.Allocate<float>(want_q.size());
    a.k = memory.Allocate<float>(want_k.size());
    a.v = memory.Allocate<float>(want_v.size());
    a.sink_q = memory.Allocate<float>(want_sink.size());
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv;
    a.head_dim = head_dim;
    a.rotary_dim = rotary;
    a.rope = angles;
    const absl::Status s = QkvSplitRope(backend(), a);
    ASSERT_TRUE(s.ok()) << s;
    ExpectNear(memory.Download(a.q, want_q.size()), want_q, 2e-6f, "q");
    ExpectNear(memory.Download(a.k, want_k.size()), want_k, 2e-6f, "k");
    ExpectNear(memory.Download(a.v, want_v.size()), want_v, 0.0f, "v");
    ExpectNear(memory.Download(a.sink_q, want_sink.size()), want_sink, 2e-6f, "sink_q");
  }
}

TEST_P(TransformerOpsCudaTest, SwiGluMatchesOpsThenRoundsToBf16) {
  const int rows = 3, ffn = 1001;
  const std::vector<float> gate_up = Random(rows * 2 * ffn, 9, 3.0f);
  std::vector<float> gate(rows * ffn), up(rows * ffn), want(rows * ffn);
  for (int r = 0; r < rows; ++r) {
    std::copy_n(&gate_up[r * 2 * ffn], ffn, &gate[r * ffn]);
    std::copy_n(&gate_up[r * 2 * ffn + ffn], ffn, &up[r * ffn]);
  }
  SwiGluReference(gate.data(), up.data(), want.data(), rows * ffn);
  KernelMemory memory(backend());
  uint16_t* out = memory.Allocate<uint16_t>(rows * ffn);
  const absl::Status s = SwiGluBf16(backend(), memory.Upload(gate_up), rows, ffn, out);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<uint16_t> got = memory.Download(out, rows * ffn);
  std::vector<float> got_f(got.size());
  for (size_t i = 0; i < got.size(); ++i) got_f[i] = Bf16ToFloat(got[i]);
  ExpectNear(got_f, want, 1.0f / 128.0f, "swiglu");
}

// Dummy weights: splitmix64 of (seed, i) scaled into [-scale, scale], then
// rounded to bf16; n is no whole number of blocks.
TEST_P(TransformerOpsCudaTest, FillRandomHashesSeedAndIndex) {
  const int64_t n = 1000;
  const uint64_t seed = 42;
  const float scale = 0.02f;
  KernelMemory memory(backend());
  uint16_t* out = memory.Allocate<uint16_t>(n);
  const absl::Status s = FillRandomBf16(backend(), out, n, seed, scale);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<uint16_t> got = memory.Download(out, n);
  const float bound = Bf16ToFloat(FloatToBf16(scale));  // rounding is monotonic, but scale need not be a bf16
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = seed + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float uniform = static_cast<float>(z >> 40) / 16777216.0f;
    ASSERT_EQ(got[i], FloatToBf16((2.0f * uniform - 1.0f) * scale)) << i;
    ASSERT_LE(std::fabs(Bf16ToFloat(got[i])), bound) << i;
  }
}

// cuBLAS bf16 GEMM against the double reference on the same bf16 values,
// with and without accumulating into y. cuBLAS has no emulator: GPU only.
class GemmBf16CudaTest : public ::testing::Test {
 protected:
  void SetUp() override { ATTNSERVE_SKIP_WITHOUT_GPU(); }
};

TEST_F(GemmBf16CudaTest, MatchesTheReference) {
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
TEST_P(TransformerOpsCudaTest, GreedyPicksTakeTheFirstLargest) {
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
  KernelMemory memory(backend());
  TokenPick* out = memory.Allocate<TokenPick>(rows.size());
  const absl::Status s = PickTokens(backend(), memory.Upload(flat), static_cast<int64_t>(rows.size()), width,
                                    memory.Upload(std::vector<TokenPick>(rows.size())), out);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<TokenPick> got = memory.Download(out, rows.size());
  for (size_t r = 0; r < rows.size(); ++r) EXPECT_EQ(got[r].token, want[r]) << "row " << r;
}

// Sampled picks against the host's PickToken: the same token, but where
// the two sums' rounding moves the draw across a boundary (the host's pick
// at uniform +- 1e-5 then); and their log-probabilities against
// PickLogprobs.
TEST_P(TransformerOpsCudaTest, SampledPicksAreTheHostsPicks) {
  const int32_t vocab = 49152;
  std::mt19937 rng(8);
  std::vector<float> flat;
  std::vector<TokenPick> picks;
  for (int r = 0; r < 24; ++r) {
    std::vector<float> row = Random(vocab, 100 + r, 1.0f + r % 4);
    if (r % 3 == 0) {
      // Tokens the edits below mask, each the row's certain pick unmasked:
      // 513 is read by a thread before the edit's own thread, 510 after it.
      row[513] = 50.0f;
      row[510] = 50.0f;
    }
    if (r == 4) {
      // The four most likely tokens all read by one thread of the pick's
      // block, which must take each pass's winner from the block.
      for (int k = 0; k < 4; ++k) row[1 + 512 * k] = 40.0f - static_cast<float>(k);
    }
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
  // Logit processing on every third row: tokens 0, 513 and 510 masked, a
  // bias, penalties.
  const std::vector<LogitEdit> edits = {{0, 0.0f, 1.0f, 0.0f, 0.0f, true},
                                        {11, 3.0f},
                                        {12, 0.0f, 1.3f, 0.8f, 0.4f, false},
                                        {513, 0.0f, 1.0f, 0.0f, 0.0f, true},
                                        {510, 0.0f, 1.0f, 0.0f, 0.0f, true}};
  KernelMemory memory(backend());
  const LogitEdit* kernel_edits = memory.Upload(edits);
  for (size_t r = 0; r < picks.size(); r += 3) {
    picks[r].edits = kernel_edits;
    picks[r].n_edits = static_cast<int32_t>(edits.size());
  }
  TokenPick* out = memory.Allocate<TokenPick>(picks.size());
  const absl::Status s = PickTokens(backend(), memory.Upload(flat), static_cast<int64_t>(picks.size()), vocab,
                                    memory.Upload(picks), out);
  ASSERT_TRUE(s.ok()) << s;
  const std::vector<TokenPick> got = memory.Download(out, picks.size());
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

INSTANTIATE_TEST_SUITE_P(Backends, TransformerOpsCudaTest,
                         ::testing::Values(KernelBackend::kGpu, KernelBackend::kEmulator), KernelBackendName);

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
  EXPECT_EQ(FillRandomBf16Cuda(nullptr, -1, 0, 1.0f, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(FillRandomBf16Cuda(nullptr, 0, 0, 1.0f, nullptr).ok());
  // Silu is ggml's x / (1 + e^-x), on the host too.
  EXPECT_FLOAT_EQ(Silu(0.0f), 0.0f);
  EXPECT_NEAR(Silu(2.0f), 2.0f / (1.0f + std::exp(-2.0f)), 1e-7f);
}

}  // namespace
}  // namespace attnserve
