#include "kernels/cuda/linear_state.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/linear_state_kernels.cuh"

namespace attnserve {

size_t LinearStateFloats(int32_t head_dim) {
  return static_cast<size_t>(TaylorFeatureCount(head_dim)) * (head_dim + 1);
}

absl::Status FoldKeysCuda(const LinearFoldSequence* seqs, int32_t n_seqs, int32_t n_kv_heads, int32_t head_dim,
                          void* stream) {
  return RunFoldKeys(seqs, n_seqs, n_kv_heads, head_dim, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

absl::Status JoinLinearStateCuda(const LinearReadArgs& a, void* stream) {
  return RunJoinLinearState(a, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
