// Fused RMSNorm on the GPU: y = x / sqrt(mean(x^2) + eps) * weight, for
// `rows` rows of n floats. Device pointers; `stream` is a cudaStream_t
// (nullptr = default stream). The launch is asynchronous: kernel faults show
// up on the next synchronising call (e.g. CudaStreamSync). y may alias x.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace attnserve {

absl::Status RmsNormCuda(const float* d_x, const float* d_weight, float* d_y, int64_t rows, int64_t n, float eps,
                         void* stream);

// Same, writing bf16 (raw bits, round to nearest even as FloatToBf16) for the
// matmul that follows the norm. y must not alias x.
absl::Status RmsNormCudaBf16(const float* d_x, const float* d_weight, uint16_t* d_y, int64_t rows, int64_t n,
                             float eps, void* stream);

}  // namespace attnserve
