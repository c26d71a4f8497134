// Shared by the CUDA tests: GPU cases skip with the reason where no device
// is present, and fail instead when ATTNSERVE_REQUIRE_GPU is set (as
// scripts/gpu-check.sh does), so a GPU machine whose device is invisible
// cannot pass by skipping.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

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
