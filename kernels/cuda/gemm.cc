#include "kernels/cuda/gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/device.h"

namespace attnserve {
namespace {

// cuBLAS, opened on first use rather than linked (see CMakeLists.txt):
// loaded with dlopen, its thread-local storage is allocated per thread on
// demand instead of on every thread's stack.
struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  // The C symbol (the header overloads the name in C++).
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  std::string error;  // why it could not be opened; empty when it was
};

template <typename F>
bool Resolve(void* lib, const char* name, F* f, std::string& error) {
  *f = reinterpret_cast<F>(dlsym(lib, name));
  if (*f == nullptr) error = absl::StrCat("cuBLAS has no ", name);
  return *f != nullptr;
}

const Cublas& Library() {
  static const Cublas* const lib = [] {
    auto* c = new Cublas;
#ifdef ATTN_CUDA_EMULATION
    // The emulator's, linked in (tests/cuda_emu/cublas.cc).
    c->create = &cublasCreate_v2;
    c->destroy = &cublasDestroy_v2;
    c->set_stream = &cublasSetStream_v2;
    c->set_workspace = &cublasSetWorkspace_v2;
    c->gemm_ex = &cublasGemmEx;
    c->status_name = &cublasGetStatusName;
    c->status_string = &cublasGetStatusString;
    return c;
#endif
    void* handle = nullptr;
    for (const std::string& name : {absl::StrCat("libcublas.so.", CUBLAS_VER_MAJOR), std::string("libcublas.so")}) {
      handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle != nullptr) break;
    }
    if (handle == nullptr) {
      c->error = absl::StrCat("cannot open cuBLAS: ", dlerror());
      return c;
    }
    Resolve(handle, "cublasCreate_v2", &c->create, c->error) && Resolve(handle, "cublasDestroy_v2", &c->destroy, c->error) &&
        Resolve(handle, "cublasSetStream_v2", &c->set_stream, c->error) &&
        Resolve(handle, "cublasSetWorkspace_v2", &c->set_workspace, c->error) &&
        Resolve(handle, "cublasGemmEx", &c->gemm_ex, c->error) &&
        Resolve(handle, "cublasGetStatusName", &c->status_name, c->error) &&
        Resolve(handle, "cublasGetStatusString", &c->status_string, c->error);
    return c;
  }();
  return *lib;
}

absl::Status CublasToStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const Cublas& lib = Library();
  const std::string msg = absl::StrCat(what, ": ", lib.status_name(status), ": ", lib.status_string(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

// Hopper's recommended cuBLAS workspace; smaller GPUs use part of it.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

}  // namespace

CublasHandle::CublasHandle(void* handle, std::shared_ptr<DeviceBuffer> workspace)
    : workspace_(std::move(workspace)),
      handle_(handle, [](void* h) { Library().destroy(static_cast<cublasHandle_t>(h)); }) {}

absl::StatusOr<CublasHandle> CublasHandle::Create(void* stream) {
  const Cublas& lib = Library();
  if (!lib.error.empty()) return absl::UnavailableError(lib.error);
  cublasHandle_t handle = nullptr;
  if (absl::Status s = CublasToStatus(lib.create(&handle), "cublasCreate"); !s.ok()) return s;
  absl::StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(kWorkspaceBytes);
  if (!workspace.ok()) {
    lib.destroy(handle);
    return workspace.status();
  }
  CublasHandle owned(handle, std::make_shared<DeviceBuffer>(*std::move(workspace)));
  if (absl::Status s = CublasToStatus(lib.set_stream(handle, static_cast<cudaStream_t>(stream)), "cublasSetStream");
      !s.ok()) {
    return s;
  }
  // A workspace of its own, set after the stream (which resets it): cuBLAS
  // then allocates nothing while a CUDA graph captures its GEMMs.
  if (absl::Status s = CublasToStatus(lib.set_workspace(handle, owned.workspace_->data(), owned.workspace_->size()),
                                      "cublasSetWorkspace");
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
      Library().gemm_ex(static_cast<cublasHandle_t>(handle.get()), CUBLAS_OP_T, CUBLAS_OP_N, a.out_features,
                        static_cast<int>(a.rows), a.in_features, &alpha, a.w, CUDA_R_16BF, a.in_features, a.x,
                        CUDA_R_16BF, a.in_features, &beta, a.y, CUDA_R_32F, a.out_features, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace attnserve
