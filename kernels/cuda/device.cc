#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace attnserve {

bool CudaDeviceAvailable(std::string* why_not) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for the next CUDA call to report
    if (why_not) *why_not = absl::StrCat("no CUDA device: ", cudaGetErrorString(err));
    return false;
  }
  if (count == 0) {
    if (why_not) *why_not = "no CUDA device: cudaGetDeviceCount found 0 devices";
    return false;
  }
  return true;
}

absl::Status CudaErrorToStatus(int cuda_error, std::string_view context) {
  const auto err = static_cast<cudaError_t>(cuda_error);
  if (err == cudaSuccess) return absl::OkStatus();
  // This absl build has its own string_view type, not std::string_view.
  std::string msg = absl::StrCat(absl::string_view(context.data(), context.size()), ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(std::move(msg));
  return absl::InternalError(std::move(msg));
}

bool CudaErrorIsSticky(int cuda_error) {
  switch (static_cast<cudaError_t>(cuda_error)) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorMpsClientTerminated:
    case cudaErrorExternalDevice:
      return true;
    default:
      return false;
  }
}

absl::Status CudaStreamSync(void* stream) {
  return CudaErrorToStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return DeviceBuffer();
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; do not let it leak into later calls
    return CudaErrorToStatus(err, absl::StrCat("cudaMalloc(", bytes, " bytes)"));
  }
  return DeviceBuffer(ptr, bytes);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

void DeviceBuffer::Release() {
  // A destructor cannot report; cudaFree only fails after an earlier sticky
  // error, which the caller has already seen on its own calls.
  if (ptr_) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  if (bytes > bytes_) return absl::OutOfRangeError(absl::StrCat("CopyFromHost: ", bytes, " bytes into a buffer of ", bytes_));
  if (bytes == 0) return absl::OkStatus();
  return CudaErrorToStatus(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host->device");
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  if (bytes > bytes_) return absl::OutOfRangeError(absl::StrCat("CopyToHost: ", bytes, " bytes from a buffer of ", bytes_));
  if (bytes == 0) return absl::OkStatus();
  return CudaErrorToStatus(cudaMemcpy(dst, ptr_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device->host");
}

}  // namespace attnserve
