// Reductions over a warp or a thread block, shared by the kernels (device
// code only). The block ones are called by every thread of the block, and
// every thread gets the result.
#pragma once

#include <cuda_runtime.h>

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

// Sum over a block of whole warps: each warp's by shuffles, then the warps'
// partial sums in warp order. `partial`: shared, a float per warp.
__device__ __forceinline__ float BlockSum(float v, float* partial) {
  v = WarpSum(v);
  __syncthreads();  // the previous call's readers are done with partial
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) total += partial[w];
  return total;
}

// Sum over a block of a power of two threads in a fixed tree order: the
// same bits every run, for any T. `scratch`: shared, blockDim.x elements,
// free for any use before and after.
template <typename T>
__device__ __forceinline__ T BlockTreeSum(T v, T* scratch) {
  __syncthreads();  // earlier readers of scratch are done
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();  // so are its own
  return total;
}

}  // namespace attnserve
