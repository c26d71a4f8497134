// Per-element RMSNorm math shared by the CUDA kernel and host code, so a CPU
// test can check exactly what the device computes.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

// 1 / sqrt(mean(x^2) + eps) from the row's sum of squares. Division and
// sqrtf (not rsqrtf) keep the device result within an ulp of the host's.
ATTN_HD float RmsNormInvRms(float sum_sq, int64_t n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

ATTN_HD float RmsNormApply(float x, float inv_rms, float weight) { return x * inv_rms * weight; }

}  // namespace attnserve
