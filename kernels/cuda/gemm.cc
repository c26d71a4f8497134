#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <limits>

#include "absl/strings/str_cat.h"

namespace attnserve {
namespace {

absl::Status CublasToStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", cublasGetStatusName(status), ": ", cublasGetStatusString(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

CublasHandle::CublasHandle(void* handle)
    : handle_(handle, [](void* h) { cublasDestroy(static_cast<cublasHandle_t>(h)); }) {}

absl::StatusOr<CublasHandle> CublasHandle::Create(void* stream) {
  cublasHandle_t handle = nullptr;
  if (absl::Status s = CublasToStatus(cublasCreate(&handle), "cublasCreate"); !s.ok()) return s;
  CublasHandle owned(handle);
  if (absl::Status s = CublasToStatus(cublasSetStream(handle, static_cast<cudaStream_t>(stream)), "cublasSetStream");
      !s.ok()) {
    return s;
  }
  return owned;
}

absl::Status GemmBf16(const CublasHandle& handle, const GemmBf16Args& a) {
  if (a.out_features < 1 || a.in_features < 1 || a.rows < 0 || a.rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("GemmBf16: out=", a.out_features, " in=", a.in_features,
                                                   " rows=", a.rows));
  }
  if (a.rows == 0) return absl::OkStatus();
  if (a.w == nullptr || a.x == nullptr || a.y == nullptr) return absl::InvalidArgumentError("GemmBf16: null pointer");
  // Column-major view: yᵀ [out][rows] = W [out][in] (stored as Wᵀ, in x out) · xᵀ [in][rows].
  const float alpha = 1.0f, beta = a.accumulate ? 1.0f : 0.0f;
  return CublasToStatus(
      cublasGemmEx(static_cast<cublasHandle_t>(handle.get()), CUBLAS_OP_T, CUBLAS_OP_N, a.out_features,
                   static_cast<int>(a.rows), a.in_features, &alpha, a.w, CUDA_R_16BF, a.in_features, a.x, CUDA_R_16BF,
                   a.in_features, &beta, a.y, CUDA_R_32F, a.out_features, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace attnserve
