// Warp-level pieces shared by the attention kernels (device code only).
#pragma once

#include <cuda_fp16.h>

namespace attnserve {

inline constexpr int kWarp = 32;

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// acc[2c], acc[2c + 1] += p * the value columns 2 * (lane + 32c), + 1 of
// the value row v (head_dim = kCols * 32 halves).
template <int kCols>
__device__ __forceinline__ void AccumulateRow(const __half2* v, int lane, float p, float (&acc)[kCols]) {
#pragma unroll
  for (int c = 0; c < kCols / 2; ++c) {
    const float2 vf = __half22float2(v[lane + c * kWarp]);
    acc[2 * c] = fmaf(p, vf.x, acc[2 * c]);
    acc[2 * c + 1] = fmaf(p, vf.y, acc[2 * c + 1]);
  }
}

}  // namespace attnserve
