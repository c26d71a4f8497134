// Where a CUDA kernel test runs: on the GPU, or on the host under the
// emulator (tests/cuda_emu), so that one test list checks the kernels on
// every machine and on the device where there is one. KernelMemory holds
// what the kernels read and write: device buffers, or host memory for the
// emulator, filled with 0xff bytes (NaN in fp16 and fp32) so that what a
// kernel should have written and did not shows.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "tests/cuda/cuda_test_util.h"

namespace attnserve {

enum class KernelBackend { kGpu, kEmulator };

inline std::string KernelBackendName(const ::testing::TestParamInfo<KernelBackend>& info) {
  return info.param == KernelBackend::kGpu ? "Gpu" : "Emulator";
}

// In a test body or SetUp: returns from it where `backend` cannot run.
#define ATTNSERVE_SKIP_WITHOUT_BACKEND(backend)                        \
  do {                                                                 \
    if ((backend) == ::attnserve::KernelBackend::kGpu) ATTNSERVE_SKIP_WITHOUT_GPU(); \
  } while (0)

class KernelMemory {
 public:
  explicit KernelMemory(KernelBackend backend) : backend_(backend) {}

  // A copy of v (at least one element's bytes, so that empty arrays still
  // have a pointer).
  template <typename T>
  T* Upload(const std::vector<T>& v) {
    T* p = Allocate<T>(v.size());
    if (p != nullptr && !v.empty()) CopyIn(p, v.data(), v.size() * sizeof(T));
    return p;
  }

  template <typename T>
  T* Allocate(size_t count) {
    return static_cast<T*>(AllocateBytes(std::max<size_t>(1, count) * sizeof(T)));
  }

  template <typename T>
  std::vector<T> Download(const T* p, size_t count) {
    std::vector<T> out(count);
    if (count == 0) return out;
    if (backend_ == KernelBackend::kEmulator) {
      std::memcpy(out.data(), p, count * sizeof(T));
      return out;
    }
    for (const DeviceBuffer& b : device_) {
      if (b.data() == p) {
        const absl::Status s = b.CopyToHost(out.data(), count * sizeof(T));
        EXPECT_TRUE(s.ok()) << s;
        return out;
      }
    }
    ADD_FAILURE() << "Download: not a buffer of this KernelMemory";
    return out;
  }

 private:
  void* AllocateBytes(size_t bytes) {
    if (backend_ == KernelBackend::kEmulator) {
      host_.push_back(std::make_unique<unsigned char[]>(bytes));
      std::memset(host_.back().get(), 0xff, bytes);
      return host_.back().get();
    }
    absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return nullptr;
    device_.push_back(*std::move(b));
    return device_.back().data();
  }

  void CopyIn(void* dst, const void* src, size_t bytes) {
    if (backend_ == KernelBackend::kEmulator) {
      std::memcpy(dst, src, bytes);
      return;
    }
    for (DeviceBuffer& b : device_) {
      if (b.data() == dst) {
        const absl::Status s = b.CopyFromHost(src, bytes);
        EXPECT_TRUE(s.ok()) << s;
        return;
      }
    }
  }

  KernelBackend backend_;
  std::vector<DeviceBuffer> device_;
  std::vector<std::unique_ptr<unsigned char[]>> host_;
};

}  // namespace attnserve
