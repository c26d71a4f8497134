// The CUDA backend's state, shared by its files: the stream, the weights,
// the KV pool, the activations and workspaces, a step's staging and graphs.
// Included only by the backend's own .cc files.
#pragma once

#include <cuda_runtime.h>

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/cuda/batch_padding.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/device_weights.h"
#include "engine/backend/cuda/step_graphs.h"
#include "engine/backend/cuda/step_metadata.h"
#include "kernels/common/rope_math.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"

namespace attnserve {

inline absl::Status Cuda(cudaError_t err, std::string_view what) { return CudaErrorToStatus(err, what); }

struct CudaBackend::State {
  const Model& model;
  CudaBackendOptions options;
  std::string device_name;
  cudaStream_t stream = nullptr;
  std::optional<CublasHandle> cublas;

  DeviceWeights weights;
  RopeAngles rope;
  std::vector<AttentionHeadParams> dense_heads;

  std::optional<KvCachePool> pool;
  std::optional<BatchPadding> padding;  // over the pool's scratch pages
  int64_t padding_rows = 0;  // added to the steps run

  // Activations, [rows][width] each.
  int64_t rows = 0;
  DeviceBuffer x, xn, qkv, q, k, v, sink_q, attn, lse, gate_up, h;
  DeviceBuffer decode_ws, quest_q, quest_ws, final_x, step_logits, picked;
  // Bumped whenever Reserve moves a buffer: kernel arguments changed, so
  // captured graphs are stale.
  uint64_t buffers_moved = 0;
  std::vector<TokenPick> picked_host;
  // A step's metadata: the arrays kernel arguments point to, the data they
  // point to, what kernels leave for later ones, the policies' parameters
  // (StepStaging).
  DeviceBuffer step_index, step_data, step_outputs, step_plans;
  StepStaging staging;
  std::optional<StepGraphs> graphs;
  absl::Status health;  // not OK once a fault spoiled the context
  // ACT's prompt pass: column sums, and the entries re-staged with the sets.
  DeviceBuffer act_mass, act_meta;
  std::vector<double> act_mass_host;
  StagingArena act_arena;

  explicit State(const Model& m) : model(m) {}
  ~State() {
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cublas.reset();  // its handle is bound to the stream
      cudaStreamDestroy(stream);
    }
  }

  // Grows `b` to at least `bytes` (contents not kept): a buffer that kernel
  // arguments of graphed steps name (buffers_moved), or one they do not.
  absl::Status Reserve(DeviceBuffer& b, size_t bytes);
  absl::Status ReserveData(DeviceBuffer& b, size_t bytes);
  absl::Status ReserveRows(int64_t rows);
  absl::Status AllocateLinearState(LinearAttentionState& state);
  absl::Status StageStep(std::span<const SequenceStep> steps, std::span<float* const> linear_states,
                         StepMetadata& m);
  absl::Status EnqueueStep(const StepMetadata& m, std::span<const SequenceStep> steps);
  absl::Status Step(std::span<const SequenceStep> given, std::vector<float>& logits);
  absl::Status Layer(int32_t l, const StepMetadata& m, std::span<const SequenceStep> steps);
  absl::Status Attention(int32_t l, const StepMetadata& m, std::span<const SequenceStep> steps);
  // Layer l's attention of the entries (read AtLayer(l)).
  absl::Status DecodeRows(int32_t l, const DecodeSequence* entries, int64_t n, const StepMetadata& m);
  absl::Status PrefillRows(int32_t l, const DecodeSequence* entries, const PrefillTile* tiles, int32_t n_tiles,
                           const StepMetadata& m);
  absl::Status FindActKeySets(int32_t l, const StepMetadata& m, const SequenceStep& st, int32_t first_row);
  absl::Status RerunWithKeySets(int32_t l, const StepMetadata& m, const SequenceStep& st, int32_t first_row);
};

}  // namespace attnserve
