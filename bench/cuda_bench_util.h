// Timing helpers shared by the GPU benchmarks.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

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

// Empties the L2 cache, asynchronously: a memset of twice its size (the
// buffer is allocated once per process).
inline void FlushL2() {
  static const std::pair<void*, size_t> buffer = [] {
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
    void* p = nullptr;
    const size_t bytes = 2 * static_cast<size_t>(l2);
    if (bytes == 0 || cudaMalloc(&p, bytes) != cudaSuccess) return std::pair<void*, size_t>{nullptr, 0};
    return std::pair{p, bytes};
  }();
  static int value = 0;
  if (buffer.first != nullptr) cudaMemsetAsync(buffer.first, ++value & 0xff, buffer.second);
}

// Seconds per call of `f`, over `reps` calls each timed alone after
// FlushL2 (outside the timed span): a decode step reads every layer's cache
// once, so no layer finds its keys in L2, while back-to-back calls on one
// small working set would.
template <typename F>
inline double ColdSecondsPerCall(F&& f, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  double ms_total = 0.0;
  for (int i = 0; i < reps; ++i) {
    FlushL2();
    cudaEventRecord(start);
    f();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    ms_total += ms;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms_total * 1e-3 / reps;
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
