// Compiles kernels/cuda's device code as host C++ for the emulator
// (emulator.h): include this before any kernel header. The built-in
// variables, barriers, warp shuffles and votes, atomics and fast math the
// kernels use map onto the emulator; kernel headers switch their inline PTX
// (cp.async) and dynamic shared memory on ATTN_CUDA_EMULATION.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tests/cuda_emu/emulator.h"
#include "tests/cuda_emu/mma_shim.h"

#ifndef ATTN_CUDA_EMULATION
#define ATTN_CUDA_EMULATION 1
#endif

// Shared variables are one per block: blocks run one at a time on the
// calling thread, so a function's static is its block's.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx (::attnserve::emu::ThreadIdx())
#define blockIdx (::attnserve::emu::BlockIdx())
#define blockDim (::attnserve::emu::BlockDim())
#define gridDim (::attnserve::emu::GridDim())

namespace attnserve::emu {

template <typename T>
uint64_t ToBits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T FromBits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// The value of `src` within the lane's segment of `width` lanes.
template <typename T>
T ShuffleFrom(const uint64_t* slots, int lane, int src, int width) {
  const int base = lane & ~(width - 1);
  return FromBits<T>(slots[base + (src & (width - 1))]);
}

}  // namespace attnserve::emu

inline void __syncthreads() { ::attnserve::emu::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::attnserve::emu::WarpExchange(mask, 0); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const uint64_t* slots = ::attnserve::emu::WarpExchange(mask, ::attnserve::emu::ToBits(v));
  return ::attnserve::emu::ShuffleFrom<T>(slots, ::attnserve::emu::Lane(), src, width);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::attnserve::emu::Lane();
  const uint64_t* slots = ::attnserve::emu::WarpExchange(mask, ::attnserve::emu::ToBits(v));
  return ::attnserve::emu::ShuffleFrom<T>(slots, lane, (lane % width) ^ lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* slots = ::attnserve::emu::WarpExchange(mask, predicate != 0);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= static_cast<unsigned>(slots[i] & 1u) << i;
  return bits;
}

inline int __all_sync(unsigned mask, int predicate) {
  const uint64_t* slots = ::attnserve::emu::WarpExchange(mask, predicate != 0 ? 1 : 2);
  for (int i = 0; i < 32; ++i) {
    if (slots[i] == 2) return 0;  // lanes past a partial warp's end hold 0 and do not count
  }
  return 1;
}


// Fibers switch only at barriers and warp operations, so a read-modify-write
// is atomic here.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

inline float __expf(float x) { return std::exp(x); }
inline unsigned __float_as_uint(float x) { return static_cast<unsigned>(::attnserve::emu::ToBits(x)); }
// CUDA's isfinite is a global function, the host's is std::'s.
using std::isfinite;

// CUDA's min and max of mixed operand types.
template <typename A, typename B>
std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
