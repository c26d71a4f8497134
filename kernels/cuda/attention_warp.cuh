// Warp-level pieces shared by the attention kernels (device code only).
#pragma once

#include <cuda_fp16.h>

#include "kernels/cuda/block_reduce.cuh"

namespace attnserve {

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

// q · k over kHeadDim columns, k as fp16 read 16 bytes at a time (k
// 16-byte aligned), in one fixed order (the decode kernel's scores). Lanes
// reading their own key rows of a
// shared tile whose rows are padded by 16 bytes meet no other lane of their
// quarter-warp on a bank.
template <int kHeadDim>
__device__ __forceinline__ float DotHalf(const float* q, const __half* k) {
  float dot = 0.0f;
#pragma unroll 4
  for (int c = 0; c < kHeadDim / 8; ++c) {
    const uint4 raw = reinterpret_cast<const uint4*>(k)[c];
    __half2 k2[4];
    memcpy(static_cast<void*>(k2), &raw, sizeof(raw));  // register moves; a cast of &raw would break aliasing
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 kf = __half22float2(k2[i]);
      const int col = 8 * c + 2 * i;
      dot = fmaf(q[col], kf.x, fmaf(q[col + 1], kf.y, dot));
    }
  }
  return dot;
}

// One query head's online softmax over tiles of 32 keys, held by a warp (a
// key per lane): the running maximum, the sums over ACT's key set and over
// the rest, and the two value accumulators in registers, head_dim / 32
// columns a lane.
template <int kCols>
struct WarpSoftmax {
  float m = -INFINITY, sum_set = 0.0f, sum_rest = 0.0f;
  float acc_set[kCols] = {}, acc_rest[kCols] = {};

  // Folds a tile into the sums (this lane's key: its logit, -inf when not
  // read) and rescales the accumulators to the new maximum. False when no
  // key of the tile is read; else *p is this lane's key weight against the
  // new maximum.
  __device__ __forceinline__ bool AddTile(float logit, bool in_set, float* p) {
    const float tile_max = WarpMax(logit);
    if (tile_max == -INFINITY) return false;
    const float new_m = fmaxf(m, tile_max);
    const float rescale = __expf(m - new_m);  // 0 while m is -inf
    *p = __expf(logit - new_m);               // 0 for unread keys
    sum_set = sum_set * rescale + WarpSum(in_set ? *p : 0.0f);
    sum_rest = sum_rest * rescale + WarpSum(in_set ? 0.0f : *p);
    m = new_m;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      acc_set[c] *= rescale;
      acc_rest[c] *= rescale;
    }
    return true;
  }

  // p times the value row v into the set's or the rest's accumulator. Both
  // branches index the arrays with constants, so they stay in registers.
  __device__ __forceinline__ void AddValue(const __half2* v, int lane, float p, bool in_set) {
    if (in_set) {
      AccumulateRow<kCols>(v, lane, p, acc_set);
    } else {
      AccumulateRow<kCols>(v, lane, p, acc_rest);
    }
  }
};

}  // namespace attnserve
