// Timing helpers shared by the GPU benchmarks.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace attnserve {

// Seconds per call of `f`, over `reps` calls timed with CUDA events.
template <typename F>
inline double SecondsPerCall(F&& f, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start);
  for (int i = 0; i < reps; ++i) f();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0.0f;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms * 1e-3 / reps;
}

// The device's copy bandwidth in GB/s: device-to-device cudaMemcpy of
// 1 GiB, read + write; measured once per process.
inline double CopyBandwidth() {
  static double gbs = [] {
    const size_t bytes = size_t{1} << 30;
    void *a = nullptr, *b = nullptr;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0.0;
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    const double s = SecondsPerCall([&] { cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); }, 10);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * bytes / s / 1e9;  // read + write
  }();
  return gbs;
}

}  // namespace attnserve
