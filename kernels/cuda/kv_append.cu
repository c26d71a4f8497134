#include "kernels/cuda/kv_append.h"

#include "kernels/cuda/kv_append_kernels.cuh"
#include "kernels/cuda/launch.cuh"

namespace attnserve {

absl::Status AppendKvCuda(const KvAppendArgs& a, void* stream) {
  return RunAppendKv(a, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
