// The RMSNorm kernel (rms_norm.h), as a header: rms_norm.cu launches it on
// a stream, and the CUDA tests also run it on the host through the emulator
// (tests/cuda_emu), where each includer gets its own copy (an unnamed
// namespace).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
#include "kernels/common/rms_norm_math.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/rms_norm.h"

namespace attnserve {
namespace {

constexpr int kMaxThreads = 1024;

template <typename Out>
__device__ __forceinline__ Out Convert(float v) {
  if constexpr (std::is_same_v<Out, float>) {
    return v;
  } else {
    return FloatToBf16(v);
  }
}

// One block per row. kVec = 4 moves 16-byte float4s (the kernel is bandwidth
// bound); kVec = 1 covers rows whose length or pointers are not aligned. The
// second pass re-reads x, which is then in L1/L2. x is not __restrict__
// because y may alias it: each element is read and written by the same thread.
template <int kVec, typename Out>
__global__ void __launch_bounds__(kMaxThreads)
    RmsNormKernel(const float* x, const float* __restrict__ weight, Out* y, int64_t n, float eps) {
  static_assert(kVec == 1 || kVec == 4);
  using VecIn = std::conditional_t<kVec == 4, float4, float>;
  using VecOut = std::conditional_t<kVec == 4, std::conditional_t<std::is_same_v<Out, float>, float4, ushort4>, Out>;
  const int64_t row = blockIdx.x;
  const auto* xr = reinterpret_cast<const VecIn*>(x + row * n);
  const auto* wr = reinterpret_cast<const VecIn*>(weight);
  auto* yr = reinterpret_cast<VecOut*>(y + row * n);
  const int64_t n_vec = n / kVec;

  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    const VecIn v = xr[i];
    if constexpr (kVec == 4) {
      sum_sq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    } else {
      sum_sq += v * v;
    }
  }
  __shared__ float partial[kMaxThreads / kWarp];  // blockDim.x: whole warps
  const float inv_rms = RmsNormInvRms(BlockSum(sum_sq, partial), n, eps);

  for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
    const VecIn v = xr[i];
    const VecIn w = wr[i];
    if constexpr (kVec == 4) {
      yr[i] = VecOut{Convert<Out>(RmsNormApply(v.x, inv_rms, w.x)), Convert<Out>(RmsNormApply(v.y, inv_rms, w.y)),
                     Convert<Out>(RmsNormApply(v.z, inv_rms, w.z)), Convert<Out>(RmsNormApply(v.w, inv_rms, w.w))};
    } else {
      yr[i] = Convert<Out>(RmsNormApply(v, inv_rms, w));
    }
  }
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename Out, typename Launcher>
absl::Status LaunchRmsNorm(const char* name, const float* x, const float* weight, Out* y, int64_t rows, int64_t n,
                           float eps, const Launcher& launch) {
  if (n <= 0 || rows < 0) return absl::InvalidArgumentError(absl::StrCat(name, ": rows=", rows, " n=", n));
  // gridDim.x limit; a row count this large would never fit in memory anyway.
  if (rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": rows=", rows));
  }
  if (rows == 0) return absl::OkStatus();
  if (x == nullptr || weight == nullptr || y == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": null pointer"));
  }

  const bool vec4 = n % 4 == 0 && Aligned(x, 16) && Aligned(weight, 16) && Aligned(y, 4 * sizeof(Out));
  const int64_t n_vec = vec4 ? n / 4 : n;
  // Enough threads that each loads about one vector, rounded to whole warps:
  // a batch-1 decode row must not leave memory parallelism on the table.
  const int64_t want = (n_vec + kWarp - 1) / kWarp * kWarp;
  const dim3 block(static_cast<unsigned>(want < kMaxThreads ? want : kMaxThreads));
  const dim3 grid(static_cast<unsigned>(rows));
  if (vec4) return launch(name, RmsNormKernel<4, Out>, grid, block, 0, x, weight, y, n, eps);
  return launch(name, RmsNormKernel<1, Out>, grid, block, 0, x, weight, y, n, eps);
}

// RmsNormCuda's checks and launch, the launch through
// `launch(name, kernel, grid, block, shared_bytes, args...)`.
template <typename Launcher>
absl::Status RunRmsNorm(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps,
                        const Launcher& launch) {
  return LaunchRmsNorm("RmsNormCuda", x, weight, y, rows, n, eps, launch);
}

// RmsNormCudaBf16's, as RunRmsNorm's.
template <typename Launcher>
absl::Status RunRmsNormBf16(const float* x, const float* weight, uint16_t* y, int64_t rows, int64_t n, float eps,
                            const Launcher& launch) {
  return LaunchRmsNorm("RmsNormCudaBf16", x, weight, y, rows, n, eps, launch);
}

}  // namespace
}  // namespace attnserve
