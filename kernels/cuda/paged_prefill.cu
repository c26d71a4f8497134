#include "kernels/cuda/paged_prefill.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/paged_prefill_kernels.cuh"

namespace attnserve {

absl::Status PrefillAttentionCuda(const PrefillAttentionArgs& a, void* stream) {
  return RunPrefillAttention(a, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
