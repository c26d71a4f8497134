// Llama forward pass on the CPU kernels over the paged KV cache.
//
// All tokens of a step (every sequence's prefill chunk or decode token) are
// stacked into one activation matrix, so each weight matrix is read once per
// step; attention then runs per sequence and KV head on the thread pool.
//
// Streaming positions=CACHE (StreamingLLM's RoPE positions inside the kept
// cache) without re-rotating keys: keys stay rotated at their original
// position, and since RoPE logits depend only on the query-key offset and
// the window is contiguous up to the query, only the sink keys see an offset
// other than the original one. For them the backend rotates a second copy of
// each query at its cache slot (CacheSlot), and the kernel uses it for keys
// below sink_tokens (AttentionQueries::sink_q). Such sequences run past the
// model's context: RoPE at positions >= the context takes angles in double
// (RopePastContext), so that offsets stay exact at millions of tokens, while
// positions below it keep llama.cpp's float path bit for bit.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "kernels/common/rope_math.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/thread_pool.h"

namespace attnserve {

struct CpuBackendOptions {
  int num_threads = 1;
  // Activation buffers are sized for this; a step with more tokens (an ACT
  // prompt, prefilled whole) grows them.
  int32_t max_step_tokens = 512;
};

// One layer's attention of one sequence in a step, for offline analysis
// (attnserve profile). Valid only during the observer's call.
struct AttentionObservation {
  int32_t layer = 0;
  const SequenceStep* step = nullptr;
  const float* q = nullptr;            // [step->tokens.size()][n_heads][head_dim], after RoPE at `positions`
  const int32_t* positions = nullptr;  // [step->tokens.size()]
  PagedKv kv;                          // the sequence's keys and values of the layer, this step's included
};
using AttentionObserver = std::function<void(const AttentionObservation&)>;

class CpuBackend : public Backend {
 public:
  // `model` and `pool` must outlive the backend. A model without weights
  // (Model::dummy_weights) runs on random ones (RandomLlamaWeights).
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const Model& model, KvCachePool& pool,
                                                           const CpuBackendOptions& options);

  const ModelConfig& config() const override { return model_.config; }
  std::string name() const override { return "cpu"; }
  std::string device() const override { return device_; }
  absl::Status Forward(std::span<const SequenceStep> steps, std::vector<float>& logits) override;
  absl::Status AllocateLinearState(LinearAttentionState& state) override;

  // Called after each layer's attention, once per sequence of the step, on
  // the thread that runs Forward; empty (the default) for none.
  void SetAttentionObserver(AttentionObserver observer) { observer_ = std::move(observer); }

 private:
  // Activations of one step: [rows][width] each.
  struct Scratch {
    std::vector<float> x, xn, q, k, v, attn, gate, up;
    std::vector<int32_t> positions;
    std::vector<float> sink_q;           // [rows][q_dim]: queries at their cache slot, for sink keys
    std::vector<int32_t> slots;          // [rows]: their RoPE positions
    std::vector<int32_t> rope_positions;  // [rows]: positions for the float path (0 past the context)
    std::vector<uint8_t> sink_steps;      // [steps]: 1 where the step's sequence needs sink_q
    std::vector<double> act_mass;         // [threads][n_heads][prompt]: ACT's column sums
    std::vector<float> lse;               // [rows][n_heads]: log softmax denominators (linear mode)
    int64_t rows = 0;                     // the row capacity of the activations
  };

  CpuBackend(const Model& model, KvCachePool& pool, const CpuBackendOptions& options,
             std::optional<LlamaWeights> random_weights);
  void Embed(std::span<const SequenceStep> steps, int64_t rows);
  void Layer(int32_t layer, std::span<const SequenceStep> steps, int64_t rows);
  void ReserveRows(int64_t rows);
  void Attention(int32_t layer, std::span<const SequenceStep> steps);
  // ACT: the key sets of layer `layer` from the attention of the prompt
  // queries of the step starting at row `first_row` (sink_q: its queries
  // have a second rotation for the sink keys).
  void FindActKeySets(int32_t layer, const SequenceStep& step, int64_t first_row, bool sink_q);
  // The linear mode: adds the folded keys' part to the attention outputs of
  // the linear sequences (the kernel's log-denominators in s_.lse), then
  // folds the keys that leave their windows.
  void LinearAttention(int32_t layer, std::span<const SequenceStep> steps);
  void Observe(int32_t layer, std::span<const SequenceStep> steps);
  // RoPE of `rows` rows of n_heads heads at `positions`: ops' float path
  // below the model's context, RopePastContext at and past it.
  void RopeRows(float* x, const int32_t* positions, int64_t rows, int n_heads);
  void RopePastContext(float* x, int32_t pos, int n_heads) const;

  const Model& model_;
  std::optional<LlamaWeights> random_weights_;
  const LlamaWeights& weights_;  // the model's, or random_weights_
  KvCachePool& pool_;
  CpuBackendOptions options_;
  ThreadPool threads_;
  Scratch s_;
  // Dense attention for every head, for sequences without a plan.
  std::vector<AttentionHeadParams> dense_heads_;
  RopeAngles rope_;
  AttentionObserver observer_;
  std::string device_;  // read once: GetModelInfo asks on every call
};

}  // namespace attnserve
