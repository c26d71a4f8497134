#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

// The kernels also build AVX3_DL; list it among the targets to test.
#define HWY_WANT_AVX3_DL
#include "hwy/targets.h"
#include "kernels/common/half.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace attnserve {
namespace {

const GgmlType kWeightTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                                 GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                                 GgmlType::kQ8_1, GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ8_K};

std::string Name(GgmlType t) { return std::string(TypeTraits(t)->name); }

// Row lengths: 1, 3 and 17 blocks (odd super-block counts for the K types,
// odd element counts for the float types).
std::vector<int64_t> TestCols(GgmlType t) {
  const int block = TypeTraits(t)->block_size;
  if (block == 1) return {1, 3, 17, 63, 64, 65, 1000};
  return {block, 3 * block, 17 * block};
}

std::vector<float> Gaussian(int64_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

struct Matrix {
  std::vector<uint8_t> bytes;
  WeightMatrix w;
};

Matrix RandomMatrix(GgmlType t, int64_t rows, int64_t cols, uint32_t seed) {
  Matrix m;
  const size_t row_bytes = RowBytes(*TypeTraits(t), cols);
  m.bytes.resize(rows * row_bytes);
  // An offset per row, so that the *_1 types' mins matter.
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row = Gaussian(cols, seed + static_cast<uint32_t>(r), 0.05f);
    for (float& v : row) v += 0.01f * static_cast<float>(r % 5);
    QuantizeRow(t, row.data(), m.bytes.data() + r * row_bytes, cols);
  }
  m.w = WeightMatrix{t, m.bytes.data(), rows, cols, row_bytes};
  return m;
}

std::vector<float> Dequantized(GgmlType t, const void* row, int64_t n) {
  std::vector<float> out(n);
  DequantizeRowReference(t, row, out.data(), n);
  return out;
}

// How far an integer dot product may be from the double reference of the
// same dequantized rows: float rounding of the block partial sums, and for
// the *_1 types the fp16 rounding of Q8_1's s = d * sum(q) (2^-10 relative)
// times the block min, which is one of the block's weights.
double DotTolerance(GgmlType t, const std::vector<float>& w, const std::vector<float>& a) {
  double abs_sum = 0, min_term = 0;
  for (size_t b = 0; b < w.size(); b += 32) {
    double wmax = 0, asum = 0;
    for (size_t i = b; i < std::min(w.size(), b + 32); ++i) {
      abs_sum += std::fabs(static_cast<double>(w[i]) * a[i]);
      wmax = std::max(wmax, std::fabs(static_cast<double>(w[i])));
      asum += std::fabs(a[i]);
    }
    min_term += wmax * asum;
  }
  const bool uses_s = t == GgmlType::kQ4_1 || t == GgmlType::kQ5_1;
  return 2e-6 * abs_sum + (uses_s ? std::ldexp(min_term, -10) : 0) + 1e-30;
}

void ForEachTarget(const std::function<void(const char*)>& fn) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    fn(hwy::TargetName(target));
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST(MatMulTest, DotRowMatchesReference) {
  ForEachTarget([](const char* target) {
    for (GgmlType t : kWeightTypes) {
      const GgmlType act_type = ActivationTypeFor(t);
      for (int64_t n : TestCols(t)) {
        SCOPED_TRACE(std::string(target) + " " + Name(t) + " n=" + std::to_string(n));
        const Matrix m = RandomMatrix(t, 1, n, 1);
        const std::vector<float> x = Gaussian(n, 2);
        std::vector<uint8_t> act(RowBytes(*TypeTraits(act_type), n));
        QuantizeRow(act_type, x.data(), act.data(), n);
        const float fast = DotRow(t, m.bytes.data(), act.data(), n);
        const float ref = DotRowReference(t, m.bytes.data(), act.data(), n);
        const double tol = DotTolerance(t, Dequantized(t, m.bytes.data(), n), Dequantized(act_type, act.data(), n));
        EXPECT_NEAR(fast, ref, tol);
      }
    }
  });
}

// Bound on |MatMul - MatMulReference| for one output: MatMul multiplies the
// activations rounded to ActivationTypeFor; an element of a block with
// largest magnitude amax moves by at most 0.5 * amax / 127, plus 127 * 2^-11
// of a step where the block scale is fp16 (Q8_0, Q8_1).
double MatMulTolerance(GgmlType t, const std::vector<float>& w, const float* x, int64_t n) {
  const GgmlType act_type = ActivationTypeFor(t);
  if (act_type == GgmlType::kF32 || act_type == GgmlType::kF16 || act_type == GgmlType::kBF16) {
    // Float activations, rounded to nearest in F16 (2^-11 relative) or BF16 (2^-8).
    const double rel = act_type == GgmlType::kF16 ? std::ldexp(1.0, -11) : (act_type == GgmlType::kBF16 ? 1.0 / 256 : 0);
    double abs_sum = 0;
    for (int64_t i = 0; i < n; ++i) abs_sum += std::fabs(static_cast<double>(w[i]) * x[i]);
    return (2e-6 + rel) * abs_sum + 1e-30;
  }
  const int block = TypeTraits(act_type)->block_size;
  const double steps = act_type == GgmlType::kQ8_K ? 0.501 : 0.5 + 127.0 / 2048;
  double bound = 0;
  for (int64_t b = 0; b < n; b += block) {
    float amax = 0;
    for (int64_t i = b; i < b + block; ++i) amax = std::max(amax, std::fabs(x[i]));
    for (int64_t i = b; i < b + block; ++i) bound += std::fabs(w[i]) * steps * amax / 127;
  }
  return bound + DotTolerance(t, w, std::vector<float>(x, x + n));
}

TEST(MatMulTest, MatchesReferenceOverOddShapes) {
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (GgmlType t : kWeightTypes) {
      const std::vector<int64_t> all_cols = TestCols(t);
      for (int64_t cols : {all_cols.front(), all_cols.back()}) {
        for (int64_t rows : {1, 3, 17, 63, 64, 65}) {
          const Matrix m = RandomMatrix(t, rows, cols, static_cast<uint32_t>(rows));
          for (int64_t batch : {1, 2, 3, 5, 17}) {
            SCOPED_TRACE(Name(t) + " threads=" + std::to_string(threads) + " cols=" + std::to_string(cols) +
                         " rows=" + std::to_string(rows) + " batch=" + std::to_string(batch));
            const std::vector<float> x = Gaussian(batch * cols, static_cast<uint32_t>(batch));
            std::vector<float> y(batch * rows, NAN), y_ref(batch * rows);
            MatMul(m.w, x.data(), batch, y.data(), pool);
            MatMulReference(m.w, x.data(), batch, y_ref.data());
            for (int64_t r = 0; r < rows; ++r) {
              const std::vector<float> w = Dequantized(t, m.bytes.data() + r * m.w.row_bytes, cols);
              for (int64_t b = 0; b < batch; ++b) {
                ASSERT_NEAR(y[b * rows + r], y_ref[b * rows + r], MatMulTolerance(t, w, x.data() + b * cols, cols))
                    << "row " << r << " batch row " << b;
              }
            }
          }
        }
      }
    }
  }
}

// MatMul sums in llama.cpp's order for the batch size it is given, and
// llama.cpp's order depends on it for some types (matmul_dot.h): F32, F16,
// BF16 (vec_dot for one row, tinyBLAS for more), Q4_K (repacked gemv / gemm
// by position in the batch, tiled kernels from 8 rows) and Q6_K (tiled from 8
// rows). For every type a row's outputs depend on the thread count and on
// the other rows of its batch only through the batch size; for the others
// not even through that.
bool BatchInvariantInLlamaCpp(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0: return true;
    default: return false;
  }
}

void ExpectSameBits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t x, y;
    memcpy(&x, &a[i], sizeof(x));
    memcpy(&y, &b[i], sizeof(y));
    ASSERT_EQ(x, y) << what << " output " << i << ": " << a[i] << " vs " << b[i];
  }
}

// Shapes on both sides of each regime switch: rows a multiple of 8 (repacked
// Q4_0 / Q4_K, tinyBLAS for the float types) or not, batches under and over 8.
struct InvarianceShape {
  int64_t rows, batch;
};
constexpr InvarianceShape kInvarianceShapes[] = {{37, 7}, {40, 7}, {40, 13}, {37, 13}};

TEST(MatMulTest, ThreadAndBatchmateInvariant) {
  ThreadPool pool1(1), pool3(3);
  for (GgmlType t : kWeightTypes) {
    for (const InvarianceShape& shape : kInvarianceShapes) {
      const int64_t cols = TestCols(t).back(), rows = shape.rows, batch = shape.batch;
      SCOPED_TRACE(Name(t) + " rows=" + std::to_string(rows) + " batch=" + std::to_string(batch));
      const Matrix m = RandomMatrix(t, rows, cols, 9);
      std::vector<float> x = Gaussian(batch * cols, 4);
      std::vector<float> y1(batch * rows), y3(batch * rows);
      MatMul(m.w, x.data(), batch, y1.data(), pool1);
      MatMul(m.w, x.data(), batch, y3.data(), pool3);
      ExpectSameBits(y1, y3, "1 vs 3 threads");
      // New contents for every row but one: that row's outputs stay.
      const int64_t kept = batch / 2;
      std::vector<float> other = Gaussian(batch * cols, 5);
      std::copy(x.begin() + kept * cols, x.begin() + (kept + 1) * cols, other.begin() + kept * cols);
      std::vector<float> y_other(batch * rows);
      MatMul(m.w, other.data(), batch, y_other.data(), pool3);
      ExpectSameBits(std::vector<float>(y3.begin() + kept * rows, y3.begin() + (kept + 1) * rows),
                     std::vector<float>(y_other.begin() + kept * rows, y_other.begin() + (kept + 1) * rows),
                     "batchmates changed");
      if (!BatchInvariantInLlamaCpp(t)) continue;
      for (int64_t b = 0; b < batch; ++b) {
        std::vector<float> single(rows);
        MatMul(m.w, x.data() + b * cols, 1, single.data(), pool1);
        ExpectSameBits(single, std::vector<float>(y3.begin() + b * rows, y3.begin() + (b + 1) * rows),
                       "batch row " + std::to_string(b) + " alone");
      }
    }
  }
}

// ------------------------------------------------- llama.cpp's order, exactly
//
// Scalar emulations of ggml_vec_dot_q4_1_q8_1 and ggml_vec_dot_q8_0_q8_0 as
// compiled for AVX2 and up (ggml/src/ggml-cpu/arch/x86/quants.c), which
// llama.cpp uses for every Q4_1 matrix and, with tinyBLAS (llamafile/sgemm.cpp,
// same order per output), for Q8_0: per block 8 lanes of integer sums of 4
// products, each lane's float accumulator advanced by fma(d_w * d_a, lane);
// Q4_1's min term in a scalar fma chain (GCC contracts ggml's
// `summs += m * s`); then hsum_float_8 (upper 4 lanes onto the lower, lanes
// 2-3 onto 0-1, lane 1 onto 0) plus the min term.

float GgmlHsum8(const float acc[8]) {
  float t[4];
  for (int j = 0; j < 4; ++j) t[j] = acc[j + 4] + acc[j];
  return (t[0] + t[2]) + (t[1] + t[3]);
}

float GgmlDotQ4_1(const BlockQ4_1* w, const BlockQ8_1* a, int64_t nblocks) {
  float acc[8] = {};
  float summs = 0;
  for (int64_t i = 0; i < nblocks; ++i) {
    const float d = Fp16ToFloat(w[i].d) * Fp16ToFloat(a[i].d);
    summs = std::fma(Fp16ToFloat(w[i].m), Fp16ToFloat(a[i].s), summs);
    int q[kQK];
    for (int j = 0; j < kQK / 2; ++j) {
      q[j] = w[i].qs[j] & 0x0F;
      q[j + kQK / 2] = w[i].qs[j] >> 4;
    }
    for (int lane = 0; lane < 8; ++lane) {
      int sum = 0;
      for (int k = 4 * lane; k < 4 * lane + 4; ++k) sum += q[k] * a[i].qs[k];
      acc[lane] = std::fma(d, static_cast<float>(sum), acc[lane]);
    }
  }
  return GgmlHsum8(acc) + summs;
}

float GgmlDotQ8_0(const BlockQ8_0* w, const BlockQ8_0* a, int64_t nblocks) {
  float acc[8] = {};
  for (int64_t i = 0; i < nblocks; ++i) {
    const float d = Fp16ToFloat(w[i].d) * Fp16ToFloat(a[i].d);
    for (int lane = 0; lane < 8; ++lane) {
      int sum = 0;
      for (int k = 4 * lane; k < 4 * lane + 4; ++k) sum += w[i].qs[k] * a[i].qs[k];
      acc[lane] = std::fma(d, static_cast<float>(sum), acc[lane]);
    }
  }
  return GgmlHsum8(acc);
}

// The targets with the x86 integer kernels; the others dequantize to float.
bool ExactTarget(int64_t target) { return target == HWY_AVX2 || target == HWY_AVX3 || target == HWY_AVX3_DL; }

template <class WBlock, class ABlock>
void ExpectGgmlOrder(GgmlType t, float (*ggml_dot)(const WBlock*, const ABlock*, int64_t)) {
  const GgmlType act_type = ActivationTypeFor(t);
  ThreadPool pool(2);
  int64_t tested = 0;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (!ExactTarget(target)) continue;
    hwy::SetSupportedTargetsForTest(target);
    for (int64_t cols : {32, 576, 1536}) {
      for (int64_t rows : {5, 64}) {
        const Matrix m = RandomMatrix(t, rows, cols, static_cast<uint32_t>(cols + rows));
        for (int64_t batch : {1, 3, 8}) {
          SCOPED_TRACE(std::string(hwy::TargetName(target)) + " cols=" + std::to_string(cols) +
                       " rows=" + std::to_string(rows) + " batch=" + std::to_string(batch));
          const std::vector<float> x = Gaussian(batch * cols, static_cast<uint32_t>(batch), 1.5f);
          std::vector<float> y(batch * rows), expected(batch * rows);
          MatMul(m.w, x.data(), batch, y.data(), pool);
          const size_t act_bytes = RowBytes(*TypeTraits(act_type), cols);
          std::vector<uint8_t> act(act_bytes);
          for (int64_t b = 0; b < batch; ++b) {
            QuantizeRow(act_type, x.data() + b * cols, act.data(), cols);
            for (int64_t r = 0; r < rows; ++r) {
              expected[b * rows + r] = ggml_dot(reinterpret_cast<const WBlock*>(m.bytes.data() + r * m.w.row_bytes),
                                                reinterpret_cast<const ABlock*>(act.data()), cols / kQK);
            }
          }
          ExpectSameBits(y, expected, "MatMul vs ggml's order");
          ++tested;
        }
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  if (tested == 0) GTEST_SKIP() << "no AVX2 or AVX-512 target on this machine";
}

TEST(MatMulTest, Q4_1SumsInGgmlOrderBitForBit) { ExpectGgmlOrder<BlockQ4_1, BlockQ8_1>(GgmlType::kQ4_1, GgmlDotQ4_1); }

TEST(MatMulTest, Q8_0SumsInGgmlOrderBitForBit) { ExpectGgmlOrder<BlockQ8_0, BlockQ8_0>(GgmlType::kQ8_0, GgmlDotQ8_0); }

TEST(MatMulTest, EmptyShapesDoNothing) {
  ThreadPool pool(2);
  const Matrix m = RandomMatrix(GgmlType::kQ4_1, 4, 64, 1);
  float y = 1.f;
  MatMul(m.w, nullptr, 0, &y, pool);
  EXPECT_EQ(y, 1.f);
}

// ------------------------------------------------------------- thread pool

TEST(ThreadPoolTest, RunsEveryIndexExactlyOnce) {
  for (int threads = 1; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> runs(n);
      std::atomic<bool> bad_thread{false};
      pool.ParallelFor(n, [&](int64_t i, int thread) {
        runs[i].fetch_add(1);
        if (thread < 0 || thread >= threads) bad_thread = true;
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(runs[i].load(), 1) << "threads " << threads << " n " << n << " i " << i;
      EXPECT_FALSE(bad_thread);
    }
  }
}

TEST(ThreadPoolTest, ManyShortCalls) {
  for (int threads = 1; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    int64_t total = 0;  // written by tasks through per-index slots only
    std::vector<int64_t> slots(4);
    for (int call = 0; call < 20000; ++call) {
      const int64_t n = 1 + call % 4;
      pool.ParallelFor(n, [&](int64_t i, int) { slots[i] = i + call; });
      for (int64_t i = 0; i < n; ++i) total += slots[i] - call;
    }
    // sum over calls of 0 + 1 + ... + (n - 1) with n cycling 1..4.
    EXPECT_EQ(total, 5000 * (0 + 1 + 3 + 6));
  }
}

TEST(ThreadPoolTest, WorkersWakeAfterSleeping) {
  ThreadPool pool(3);
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // longer than the spin
    std::atomic<int> count{0};
    pool.ParallelFor(100, [&](int64_t, int) { count.fetch_add(1); });
    EXPECT_EQ(count.load(), 100);
  }
}

TEST(ThreadPoolTest, UsesWorkerThreads) {
  ThreadPool pool(2);
  std::atomic<bool> worker_ran{false};
  for (int attempt = 0; attempt < 1000 && !worker_ran; ++attempt) {
    pool.ParallelFor(64, [&](int64_t, int thread) {
      if (thread == 1) worker_ran = true;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    });
  }
  EXPECT_TRUE(worker_ran);
}

TEST(ThreadPoolTest, NestedCallsRunInline) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> runs(8 * 8);
  pool.ParallelFor(8,
                   [&](int64_t i, int) { pool.ParallelFor(8, [&](int64_t j, int) { runs[i * 8 + j].fetch_add(1); }); });
  for (auto& r : runs) EXPECT_EQ(r.load(), 1);
}

TEST(ThreadPoolTest, CallersOnSeveralThreads) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&] {
      for (int k = 0; k < 500; ++k) pool.ParallelFor(5, [&](int64_t i, int) { sum.fetch_add(i); });
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(sum.load(), 3 * 500 * 10);
}

}  // namespace
}  // namespace attnserve
