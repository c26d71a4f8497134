#include "kernels/cuda/rms_norm.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rms_norm_kernels.cuh"

namespace attnserve {

absl::Status RmsNormCuda(const float* d_x, const float* d_weight, float* d_y, int64_t rows, int64_t n, float eps,
                         void* stream) {
  return RunRmsNorm(d_x, d_weight, d_y, rows, n, eps, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status RmsNormCudaBf16(const float* d_x, const float* d_weight, uint16_t* d_y, int64_t rows, int64_t n,
                             float eps, void* stream) {
  return RunRmsNormBf16(d_x, d_weight, d_y, rows, n, eps, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
