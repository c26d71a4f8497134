// Kernel launches on a stream, for the Run* templates of the kernel headers
// (the emulator's Launcher in tests/cuda_emu takes their place there).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "absl/status/status.h"
#include "kernels/cuda/device.h"
#ifdef ATTN_CUDA_EMULATION
#include <tuple>
#include <type_traits>

#include "tests/cuda_emu/runtime.h"
#endif

namespace attnserve {

struct StreamLauncher {
  cudaStream_t stream;

  // kernel<<<grid, block, shared_bytes, stream>>>(args...), its launch error
  // named `name`. Dynamic shared memory past the 48 KB a launch gets unasked
  // is asked for first: that is no stream operation, so a graph capture
  // allows it. Under the emulator (tests/cuda_emu/runtime.h) the launch is
  // the emulated stream's: run at once, or recorded with its arguments by
  // value while the stream is captured.
  template <typename... Params, typename... Args>
  absl::Status operator()(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          Args&&... args) const {
    if (shared_bytes > 48 * 1024) {
      if (absl::Status st = CudaErrorToStatus(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                                   static_cast<int>(shared_bytes)),
                                              name);
          !st.ok()) {
        return st;
      }
    }
#ifdef ATTN_CUDA_EMULATION
    emu::Enqueue(stream, [=, params = std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)] {
      return std::apply([&](const auto&... p) { return emu::Launcher{}(name, kernel, grid, block, shared_bytes, p...); },
                        params);
    });
#else
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
    return CudaErrorToStatus(cudaGetLastError(), name);
  }
};

}  // namespace attnserve
