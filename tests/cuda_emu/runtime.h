// The emulated CUDA runtime (runtime.cc, cublas.cc), linked in place of
// cudart and cuBLAS where the project is configured with
// -DATTNSERVE_CUDA_EMULATION=ON: the CUDA backend then runs whole on the
// host, device memory being host memory, every kernel the emulator's. A
// stream runs each operation at once, except while it is captured into a
// graph: then the operation, its arguments taken by value as a graph's
// kernel nodes take them, is recorded, and cudaGraphLaunch replays it.
#pragma once

#include <cuda_runtime.h>

#include <functional>

#include "absl/status/status.h"

namespace attnserve::emu {

// Runs `op` on `stream` now, or records it into the stream's capture. A
// failed operation's status becomes the runtime's sticky error
// (cudaErrorLaunchFailure), as a kernel fault on a device.
void Enqueue(cudaStream_t stream, std::function<absl::Status()> op);

}  // namespace attnserve::emu
