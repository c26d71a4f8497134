// bf16 GEMMs with fp32 accumulation through cuBLAS, in the layout of the
// model's weights: y[rows][out] (+)= x[rows][in] · W[out][in]ᵀ. The header
// names no CUDA type so that engine code can hold a handle without nvcc.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnserve {

class DeviceBuffer;

class CublasHandle {
 public:
  // Bound to `stream` (a cudaStream_t; nullptr = default stream), with a
  // workspace of its own.
  static absl::StatusOr<CublasHandle> Create(void* stream);

  void* get() const { return handle_.get(); }

 private:
  CublasHandle(void* handle, std::shared_ptr<DeviceBuffer> workspace);
  std::shared_ptr<DeviceBuffer> workspace_;  // outlives the handle
  std::shared_ptr<void> handle_;             // cublasHandle_t
};

struct GemmBf16Args {
  const uint16_t* w = nullptr;  // [out_features][in_features] bf16, device
  int32_t out_features = 0;
  int32_t in_features = 0;
  const uint16_t* x = nullptr;  // [rows][in_features] bf16, device
  int64_t rows = 0;
  float* y = nullptr;           // [rows][out_features] fp32, device
  // y += x·Wᵀ (the residual add folded into the GEMM) instead of y = x·Wᵀ.
  bool accumulate = false;
};

// INVALID_ARGUMENT for bad shapes, INTERNAL with the cuBLAS status name for
// a cuBLAS failure. Asynchronous on the handle's stream.
absl::Status GemmBf16(const CublasHandle& handle, const GemmBf16Args& args);

}  // namespace attnserve
