#include "kernels/cuda/quest_select.h"

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/quest_select_kernels.cuh"

namespace attnserve {

size_t QuestSelectWorkspaceBytes(int32_t n_seqs, int32_t n_kv_heads, int32_t max_pages) {
  return static_cast<size_t>(n_seqs) * n_kv_heads * max_pages * sizeof(uint32_t);
}

absl::Status QuestSelectCuda(const QuestSelectArgs& a, void* workspace, size_t workspace_bytes, void* stream) {
  return RunQuestSelect(a, workspace, workspace_bytes, StreamLauncher{static_cast<cudaStream_t>(stream)});
}

}  // namespace attnserve
