// CUDA runtime helpers with absl::Status errors. The header names no CUDA
// type so that plain C++ code (tests, the engine) can include it without nvcc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnserve {

// True when at least one CUDA device can be used. Otherwise *why_not (if
// given) reads "no CUDA device: <CUDA error string>".
bool CudaDeviceAvailable(std::string* why_not = nullptr);

// The most blocks a launch's grid has along y or z: launchers whose y or z
// counts sequences or rows launch in chunks of it.
inline constexpr int32_t kMaxGridYZ = 65535;

// cudaSuccess -> OkStatus; cudaErrorMemoryAllocation -> ResourceExhausted;
// anything else -> Internal. The message is "<context>: <name>: <CUDA message>".
// `cuda_error` is a cudaError_t.
absl::Status CudaErrorToStatus(int cuda_error, std::string_view context);

// Whether `cuda_error` (a cudaError_t) leaves the context unusable: a
// kernel fault (illegal address or instruction, misaligned access, trap,
// assert, timeout), an uncorrectable ECC error, a terminated MPS client. Every later call fails with it;
// only a new process gets a working device.
bool CudaErrorIsSticky(int cuda_error);

// Waits for `stream` (a cudaStream_t; nullptr = legacy default stream) and
// reports any asynchronous kernel error.
absl::Status CudaStreamSync(void* stream);

// Owning, move-only device allocation. Copies are synchronous: meant for
// setup and tests, not for the decode loop.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return bytes_; }

  // Byte counts beyond size() are rejected with OutOfRange.
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;

 private:
  DeviceBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void Release();

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace attnserve
