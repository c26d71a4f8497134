// The emulator's semantics on small kernels: barriers and shared memory,
// shuffles and votes, async copies, and the errors it reports where the
// device's behaviour is undefined.
#include "tests/cuda_emu/device_shims.h"

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

TEST(CudaEmulatorTest, AsyncCopiesLandWhenWaitedFor) {
  std::vector<float> src(64), before(64), after(64);
  std::iota(src.begin(), src.end(), 1.0f);
  ASSERT_TRUE(emu::Launcher{}("Copies", Copies, dim3(1), dim3(64), 64 * sizeof(float), src.data(), before.data(),
                              after.data())
                  .ok());
  for (int t = 0; t < 64; ++t) {
    EXPECT_TRUE(std::isnan(before[t])) << t;
    EXPECT_EQ(after[t], src[(t + 1) % 64]) << t;
  }
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
}

}  // namespace
}  // namespace attnserve
