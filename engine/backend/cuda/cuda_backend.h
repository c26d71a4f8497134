// Llama forward pass on the GPU over a paged KV cache in device memory.
//
// Weights are bf16 (GGUF types dequantized at load), with the Q, K and V
// projections stacked into one matrix and the gate and up projections into
// another, so a layer is four cuBLAS GEMMs (fp32 accumulation; the output
// and down projections add into the fp32 residual stream through beta = 1)
// around the kernels of kernels/cuda: RMSNorm to bf16, the QKV split with
// RoPE (and streaming's cache-slot queries), KV append with Quest's bounds,
// Quest's page selection, paged attention with every policy hook read from
// each sequence's own parameters, the linear mode's state, SwiGLU.
//
// A step's metadata (page tables, policy parameters, the kernels' per-row
// structs for every layer) is staged on the host and copied up; the layers
// then run on one stream, from a CUDA graph for decode steps (StepGraphs),
// and only the picked tokens (or the logits asked for) come back.
//
// A step's single-token sequences (and Quest's queries) run through the
// split-K decode kernel; the queries of prefill chunks through the tiled
// prefill kernel, which reads each key once per tile of queries and KV
// group. ACT's prompt step
// syncs once per calibrated layer: the column sums of its probabilities come
// back, the key sets are found on the host (ActKeySets) and the prompt's
// rows of that layer run again with them.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model.h"

namespace attnserve {

struct CudaBackendOptions {
  // Activation buffers are sized for this many rows; a longer step grows them.
  int32_t max_step_tokens = 512;
  int device = 0;
  // Random bf16 weights of the config's shapes instead of the model's
  // (benchmarks at shapes without a file: the model needs only its config),
  // as for a model without weights (Model::dummy_weights).
  bool dummy_weights = false;
  // Decode steps replay CUDA graphs (StepGraphs); false: every kernel is
  // launched on its own (what a debugger or profiler reads most easily).
  bool cuda_graphs = true;
};

class CudaBackend : public Backend {
 public:
  // Uploads the weights. UNAVAILABLE without a CUDA device; UNIMPLEMENTED
  // for shapes the kernels do not cover; RESOURCE_EXHAUSTED when the
  // weights do not fit.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const Model& model, const CudaBackendOptions& options);
  ~CudaBackend() override;

  // The KV cache in device memory, pages of `page_size` tokens for the
  // model's layers and KV heads: as many as fit in
  // `utilization` of the device's memory beside what is already in use
  // (the weights, the activations, other processes), less a reserve for the
  // step's workspaces. The backend keeps a handle on the same memory.
  // `set_aside` bytes more are left out of it (the linear mode's states).
  absl::StatusOr<KvCachePool> CreateKvPool(int32_t page_size, double utilization, int64_t set_aside = 0);

  // Weight bytes one decode step reads (every matrix and norm, the output
  // projection; of the embedding table only its rows): the roofline's bytes.
  int64_t decode_weight_bytes() const;

  const ModelConfig& config() const override;
  std::string name() const override { return "cuda"; }
  std::string device() const override;
  bool picks_tokens() const override { return true; }
  absl::Status Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) override;
  GraphCounts graph_counts() const override;
  absl::Status health() const override;
  // Device memory beside the KV cache, zeroed.
  absl::Status AllocateLinearState(LinearAttentionState& state) override;

 private:
  struct State;
  explicit CudaBackend(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

}  // namespace attnserve
