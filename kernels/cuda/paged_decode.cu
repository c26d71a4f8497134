#include "kernels/cuda/paged_decode.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/paged_decode_kernels.cuh"

namespace attnserve {

size_t DecodeAttentionWorkspaceBytes(int32_t n_seqs, int32_t n_q_heads, int32_t head_dim, int32_t max_tokens) {
  const int64_t slots = static_cast<int64_t>(n_seqs) * n_q_heads * NumSplits(max_tokens);
  return static_cast<size_t>(slots) * (3 + 2 * static_cast<int64_t>(head_dim)) * sizeof(float);
}

absl::Status DecodeAttentionCuda(const DecodeAttentionArgs& a, void* workspace, size_t workspace_bytes,
                                 void* stream) {
  return RunDecodeAttention(a, workspace, workspace_bytes, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
