// Shared memory of a block: copies from global memory that each SM carries
// out while the threads compute (cp.async, sm_80 and later), so that a tile
// is staged while the one before it is read, and the launch's dynamic
// shared memory. Device code only; under ATTN_CUDA_EMULATION
// (tests/cuda_emu/device_shims.h) the emulator's.
#pragma once

#include <cuda_runtime.h>

namespace attnserve {

// 16 bytes from global `src` to shared `dst`, both 16-byte aligned, through
// L2 only (.cg: what a block streams once has no use in L1), when `load`;
// else the 16 bytes at dst become zeros, as part of the same group
// (cp.async's source size 0: src, which must still be a valid address, is
// not read).
__device__ __forceinline__ void CopyAsync16OrZeros(void* dst, const void* src, bool load) {
#ifdef ATTN_CUDA_EMULATION
  static constexpr unsigned char kZeros[16] = {};
  emu::CopyAsync(dst, load ? src : kZeros, 16);
#else
  const auto shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(load ? 16 : 0)
               : "memory");
#endif
}

// The same, always loading.
__device__ __forceinline__ void CopyAsync16(void* dst, const void* src) { CopyAsync16OrZeros(dst, src, true); }

// Closes the group of copies issued since the last call (one per tile).
__device__ __forceinline__ void CommitCopies() {
#ifdef ATTN_CUDA_EMULATION
  emu::CommitCopies();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's groups are still in flight.
// Other threads' copies are seen only after a barrier.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
#ifdef ATTN_CUDA_EMULATION
  emu::WaitCopies(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// The block's dynamic shared memory (the launch's shared_bytes).
__device__ __forceinline__ unsigned char* DynamicShared() {
#ifdef ATTN_CUDA_EMULATION
  return emu::DynamicShared();
#else
  extern __shared__ __align__(128) unsigned char bytes[];
  return bytes;
#endif
}

}  // namespace attnserve
