// Shared by the CUDA tests: GPU cases skip with the reason where no device
// is present, and fail instead when ATTNSERVE_REQUIRE_GPU is set (as
// scripts/gpu-check.sh does), so a GPU machine whose device is invisible
// cannot pass by skipping.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"

// In a test body or SetUp: returns from it when the test cannot run here.
#define ATTNSERVE_SKIP_WITHOUT_GPU()                                                              \
  do {                                                                                            \
    std::string why_no_gpu;                                                                       \
    if (!::attnserve::CudaDeviceAvailable(&why_no_gpu)) {                                         \
      if (std::getenv("ATTNSERVE_REQUIRE_GPU") != nullptr) {                                      \
        FAIL() << why_no_gpu << " (ATTNSERVE_REQUIRE_GPU is set)";                                \
      }                                                                                           \
      GTEST_SKIP() << why_no_gpu;                                                                 \
    }                                                                                             \
  } while (0)

namespace attnserve {

// A fresh device buffer holding `count` elements of `data` (at least one
// element's bytes, so that empty arrays still have a pointer).
template <typename T>
DeviceBuffer Upload(const T* data, size_t count) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(std::max<size_t>(1, count) * sizeof(T));
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return DeviceBuffer();
  if (count > 0) {
    const absl::Status s = b->CopyFromHost(data, count * sizeof(T));
    EXPECT_TRUE(s.ok()) << s;
  }
  return *std::move(b);
}

template <typename T>
DeviceBuffer Upload(const std::vector<T>& v) {
  return Upload(v.data(), v.size());
}

// Elements [offset, offset + count) of a device buffer.
template <typename T>
std::vector<T> Download(const DeviceBuffer& buf, size_t count, size_t offset = 0) {
  std::vector<T> out(count + offset);
  const absl::Status s = buf.CopyToHost(out.data(), out.size() * sizeof(T));
  EXPECT_TRUE(s.ok()) << s;
  return std::vector<T>(out.begin() + static_cast<std::ptrdiff_t>(offset), out.end());
}

// |got - want| <= rel * (1 + |want|) elementwise; the first five misses reported.
inline void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float rel, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= rel * (1.0f + std::fabs(want[i])))) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
      ++bad;
    }
  }
}

}  // namespace attnserve
