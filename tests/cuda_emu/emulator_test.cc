// The emulator's semantics on small kernels: barriers and shared memory,
// shuffles and votes, async copies, tensor-core fragments, and the errors it
// reports where the device's behaviour is undefined.
#include "tests/cuda_emu/device_shims.h"
#include "kernels/cuda/tensor_core.cuh"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace attnserve {
namespace {

// Each warp's sum by shuffles, then the block's through shared memory.
__global__ void BlockSums(const float* x, float* sums) {
  __shared__ float partial[32];
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  float v = x[blockIdx.x * blockDim.x + t];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (t == 0) {
    float s = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += partial[w];
    sums[blockIdx.x] = s;
  }
}

TEST(CudaEmulatorTest, ShufflesAndBarriersSumBlocks) {
  std::vector<float> x(4 * 96);
  std::iota(x.begin(), x.end(), 0.0f);
  std::vector<float> sums(4, -1.0f);
  ASSERT_TRUE(emu::Launcher{}("BlockSums", BlockSums, dim3(4), dim3(96), 0, x.data(), sums.data()).ok());
  for (int b = 0; b < 4; ++b) {
    EXPECT_EQ(sums[b], std::accumulate(x.begin() + b * 96, x.begin() + (b + 1) * 96, 0.0f)) << b;
  }
}

__global__ void Votes(const int* pred, unsigned* ballots, int* alls, int* from_next) {
  const int t = threadIdx.x;
  const unsigned b = __ballot_sync(0xffffffffu, pred[t]);
  const int all = __all_sync(0xffffffffu, pred[t]);
  const int next = __shfl_sync(0xffffffffu, t * 10, (t + 1) % 32);
  ballots[t] = b;
  alls[t] = all;
  from_next[t] = next;
}

TEST(CudaEmulatorTest, VotesAndShufflesSeeTheWholeWarp) {
  std::vector<int> pred(32, 1), alls(32);
  pred[5] = 0;
  std::vector<unsigned> ballots(32);
  std::vector<int> from_next(32);
  ASSERT_TRUE(emu::Launcher{}("Votes", Votes, dim3(1), dim3(32), 0, pred.data(), ballots.data(), alls.data(),
                              from_next.data())
                  .ok());
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(ballots[t], ~(1u << 5));
    EXPECT_EQ(alls[t], 0);
    EXPECT_EQ(from_next[t], (t + 1) % 32 * 10);
  }
}

// Thread t copies element t into shared memory asynchronously: before the
// wait it is still the initial 0xff bytes, after the wait and a barrier
// every thread sees every element.
__global__ void Copies(const float* src, float* before, float* after) {
  auto* staged = reinterpret_cast<float*>(emu::DynamicShared());
  const int t = threadIdx.x;
  emu::CopyAsync(&staged[t], &src[t], sizeof(float));
  emu::CommitCopies();
  before[t] = staged[t];
  emu::WaitCopies(0);
  __syncthreads();
  after[t] = staged[(t + 1) % blockDim.x];
}

// By default a copy lands at its thread's wait (the latest); under
// kWarpsReversed as it is issued (the earliest).
TEST(CudaEmulatorTest, AsyncCopiesLandWhenWaitedFor) {
  std::vector<float> src(64), before(64), after(64);
  std::iota(src.begin(), src.end(), 1.0f);
  for (const emu::ThreadOrder order : {emu::ThreadOrder::kSideBySide, emu::ThreadOrder::kWarpsReversed}) {
    emu::SetThreadOrder(order);
    ASSERT_TRUE(emu::Launcher{}("Copies", Copies, dim3(1), dim3(64), 64 * sizeof(float), src.data(), before.data(),
                                after.data())
                    .ok());
    for (int t = 0; t < 64; ++t) {
      if (order == emu::ThreadOrder::kSideBySide) {
        EXPECT_TRUE(std::isnan(before[t])) << t;
      } else {
        EXPECT_EQ(before[t], src[t]) << t;
      }
      EXPECT_EQ(after[t], src[(t + 1) % 64]) << t;
    }
  }
  emu::SetThreadOrder(emu::ThreadOrder::kSideBySide);
}

// Warp 1 writes what warp 0 reads with no barrier between: a race, whose
// outcome the order of the warps decides.
__global__ void UnorderedHandOff(float* seen) {
  auto* shared = reinterpret_cast<float*>(emu::DynamicShared());
  const int t = threadIdx.x;
  if (t >= 32) {
    shared[t - 32] = static_cast<float>(t);
  } else {
    seen[t] = shared[t];
  }
}

TEST(CudaEmulatorTest, ThreadOrdersTellRacesBetweenWarpsApart) {
  for (const emu::ThreadOrder order :
       {emu::ThreadOrder::kSideBySide, emu::ThreadOrder::kWarps, emu::ThreadOrder::kWarpsReversed}) {
    emu::SetThreadOrder(order);
    std::vector<float> seen(32, 0.0f);
    ASSERT_TRUE(
        emu::Launcher{}("UnorderedHandOff", UnorderedHandOff, dim3(1), dim3(64), 32 * sizeof(float), seen.data()).ok());
    for (int t = 0; t < 32; ++t) {
      if (order == emu::ThreadOrder::kWarpsReversed) {
        EXPECT_EQ(seen[t], static_cast<float>(t + 32)) << t;
      } else {
        EXPECT_TRUE(std::isnan(seen[t])) << t;
      }
    }
  }
  emu::SetThreadOrder(emu::ThreadOrder::kSideBySide);
}

// A (16×16) · B (16×8) + C on one warp, twice: with fragments each lane
// builds from global memory as the PTX ISA lays them out, and with A and B
// staged in shared memory (B as its transpose Bᵀ, 8×16) and loaded by
// ldmatrix, A as it lies and B transposed back.
__global__ void TileProduct(const __half* a, const __half* bt, float* by_hand, float* by_ldmatrix) {
  const int lane = threadIdx.x, group = lane / 4, pair = 2 * (lane % 4);
  auto pack = [](__half x, __half y) {
    return static_cast<uint32_t>(__half_as_ushort(x)) | static_cast<uint32_t>(__half_as_ushort(y)) << 16;
  };
  uint32_t fa[4], fb[2];
  for (int i = 0; i < 4; ++i) {
    const int row = group + 8 * (i % 2), col = pair + 8 * (i / 2);
    fa[i] = pack(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  for (int i = 0; i < 2; ++i) fb[i] = pack(bt[group * 16 + pair + 8 * i], bt[group * 16 + pair + 8 * i + 1]);
  float d[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  MmaF16(d, fa, fb[0], fb[1]);
  for (int i = 0; i < 4; ++i) by_hand[(group + 8 * (i / 2)) * 8 + pair + i % 2] = d[i];

  auto* staged = reinterpret_cast<__half*>(emu::DynamicShared());  // A [16][16], then B [16][8] (row-major)
  for (int i = lane; i < 256; i += 32) staged[i] = a[i];
  for (int i = lane; i < 128; i += 32) staged[256 + i] = bt[(i % 8) * 16 + i / 8];
  __syncwarp();
  uint32_t la[4], lb[4];
  LoadMatrices<false>(la, &staged[(lane % 16) * 16 + lane / 16 * 8]);
  // Transposed, matrices 0 and 1 are B's rows 0-7 and 8-15 (the product's
  // registers 0 and 1); the x4 load reads them twice.
  LoadMatrices<true>(lb, &staged[256 + (lane % 16) * 8]);
  float e[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  MmaF16(e, la, lb[0], lb[1]);
  for (int i = 0; i < 4; ++i) by_ldmatrix[(group + 8 * (i / 2)) * 8 + pair + i % 2] = e[i];
}

TEST(CudaEmulatorTest, TensorCoreFragmentsAreThePtxLayout) {
  std::vector<__half> a(256), bt(128);
  std::vector<float> af(256), bf(128);
  for (int i = 0; i < 256; ++i) af[i] = static_cast<float>((i * 7) % 13 - 6) / 4.0f;
  for (int i = 0; i < 128; ++i) bf[i] = static_cast<float>((i * 5) % 11 - 5) / 8.0f;
  for (int i = 0; i < 256; ++i) a[i] = __float2half(af[i]);
  for (int i = 0; i < 128; ++i) bt[i] = __float2half(bf[i]);
  std::vector<float> by_hand(128, NAN), by_ldmatrix(128, NAN);
  ASSERT_TRUE(emu::Launcher{}("TileProduct", TileProduct, dim3(1), dim3(32), 384 * sizeof(__half), a.data(),
                              bt.data(), by_hand.data(), by_ldmatrix.data())
                  .ok());
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 8; ++c) {
      float want = 1.0f;
      for (int k = 0; k < 16; ++k) want += af[r * 16 + k] * bf[c * 16 + k];
      EXPECT_EQ(by_hand[r * 8 + c], want) << r << "," << c;
      EXPECT_EQ(by_ldmatrix[r * 8 + c], want) << r << "," << c;
    }
  }
}

__global__ void LoadFromGlobal(const __half* rows) {
  uint32_t r[4];
  LoadMatrices<false>(r, rows + 8 * (threadIdx.x % 8));
}

__global__ void DivergentBarrier() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

__global__ void ShuffleAfterExit(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void EarlyExitBeforeBarrier(int* out) {
  __shared__ int seen;
  if (threadIdx.x >= 32) return;  // a whole warp leaves: the barrier waits for the rest only
  if (threadIdx.x == 0) seen = 7;
  __syncthreads();
  out[threadIdx.x] = seen;
}

TEST(CudaEmulatorTest, WhatTheDeviceLeavesUndefinedIsAnError) {
  const absl::Status deadlock = emu::Launcher{}("DivergentBarrier", DivergentBarrier, dim3(1), dim3(32), 0);
  EXPECT_EQ(deadlock.code(), absl::StatusCode::kInternal);
  EXPECT_NE(deadlock.message().find("deadlock"), std::string_view::npos) << deadlock;
  std::vector<int> out(64, -1);
  const absl::Status exited = emu::Launcher{}("ShuffleAfterExit", ShuffleAfterExit, dim3(1), dim3(32), 0, out.data());
  EXPECT_NE(exited.message().find("exited"), std::string_view::npos) << exited;
  ASSERT_TRUE(emu::Launcher{}("EarlyExitBeforeBarrier", EarlyExitBeforeBarrier, dim3(1), dim3(64), 0, out.data()).ok());
  for (int t = 0; t < 32; ++t) EXPECT_EQ(out[t], 7);
  EXPECT_EQ(emu::Run(dim3(1), dim3(2048), 0, [] {}).code(), absl::StatusCode::kInternal);
  alignas(16) __half rows[64] = {};
  const absl::Status global = emu::Launcher{}("LoadFromGlobal", LoadFromGlobal, dim3(1), dim3(32), 256, rows);
  EXPECT_NE(global.message().find("ldmatrix"), std::string_view::npos) << global;
}

}  // namespace
}  // namespace attnserve
