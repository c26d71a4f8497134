// The cuBLAS calls the project makes (kernels/cuda/gemm.cc), on the host,
// as operations of the handle's stream (see runtime.h): the one GEMM the
// model runs, bf16 x bf16 -> fp32 with fp32 sums, y (+)= x·Wᵀ.
#include <cublas_v2.h>

#include <cstdint>
#include <vector>

#include "kernels/common/half.h"
#include "tests/cuda_emu/runtime.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};

namespace {

// Column-major C[m][n] = alpha · Aᵀ · B + beta · C with A [k][m] (lda) and
// B [k][n] (ldb): for the model, m outputs, n rows, k inputs.
void GemmTN(int m, int n, int k, float alpha, const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
            float* c, int ldc) {
  std::vector<float> col_a(k), col_b(static_cast<size_t>(k) * n);
  for (int j = 0; j < n; ++j) {
    for (int p = 0; p < k; ++p) col_b[static_cast<size_t>(j) * k + p] = attnserve::Bf16ToFloat(b[static_cast<int64_t>(j) * ldb + p]);
  }
  for (int i = 0; i < m; ++i) {
    for (int p = 0; p < k; ++p) col_a[p] = attnserve::Bf16ToFloat(a[static_cast<int64_t>(i) * lda + p]);
    for (int j = 0; j < n; ++j) {
      // Eight independent sums, which the compiler keeps in one vector.
      float part[8] = {};
      const float* x = &col_b[static_cast<size_t>(j) * k];
      int p = 0;
      for (; p + 8 <= k; p += 8) {
        for (int u = 0; u < 8; ++u) part[u] += col_a[p + u] * x[p + u];
      }
      float sum = 0.0f;
      for (int u = 0; u < 8; ++u) sum += part[u];
      for (; p < k; ++p) sum += col_a[p] * x[p];
      float& out = c[static_cast<int64_t>(j) * ldc + i];
      out = alpha * sum + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return CUBLAS_STATUS_SUCCESS; }

const char* cublasGetStatusName(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_NOT_SUPPORTED";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "success" : "not emulated";
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (transa != CUBLAS_OP_T || transb != CUBLAS_OP_N || Atype != CUDA_R_16BF || Btype != CUDA_R_16BF ||
      Ctype != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  const auto* wa = static_cast<const uint16_t*>(A);
  const auto* xb = static_cast<const uint16_t*>(B);
  auto* y = static_cast<float*>(C);
  attnserve::emu::Enqueue(handle->stream, [=] {
    GemmTN(m, n, k, a, wa, lda, xb, ldb, b, y, ldc);
    return absl::OkStatus();
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
