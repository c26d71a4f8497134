// Llama forward pass on the CPU kernels over the paged KV cache.
//
// All tokens of a step (every sequence's prefill chunk or decode token) are
// stacked into one activation matrix, so each weight matrix is read once per
// step; attention then runs per sequence and KV head on the thread pool.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "kernels/cpu/thread_pool.h"

namespace attnserve {

struct CpuBackendOptions {
  int num_threads = 1;
  int32_t max_step_tokens = 512;  // activation buffers are sized for this
};

class CpuBackend : public Backend {
 public:
  // `model` and `pool` must outlive the backend.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const Model& model, KvCachePool& pool,
                                                           const CpuBackendOptions& options);

  const ModelConfig& config() const override { return model_.config; }
  std::string name() const override { return "cpu"; }
  absl::Status Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) override;

 private:
  // Activations of one step: [rows][width] each.
  struct Scratch {
    std::vector<float> x, xn, q, k, v, attn, gate, up;
    std::vector<int32_t> positions;
  };

  CpuBackend(const Model& model, KvCachePool& pool, const CpuBackendOptions& options);
  void Embed(std::span<const SequenceStep> steps, int64_t rows);
  void Layer(int32_t layer, std::span<const SequenceStep> steps, int64_t rows);
  void Attention(int32_t layer, std::span<const SequenceStep> steps);

  const Model& model_;
  KvCachePool& pool_;
  CpuBackendOptions options_;
  ThreadPool threads_;
  Scratch s_;
  // Dense attention for every head, for sequences without a plan.
  std::vector<AttentionHeadParams> dense_heads_;
};

}  // namespace attnserve
