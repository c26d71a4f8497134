// A validated attention policy of one request, resolved into the plain
// parameters the attention kernels read (kernels/common/attention_hooks.h).
// Made by PlanAttention (planner.h), immutable after, shared by the
// request's sequences and read by the backend's threads without locks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/common/attention_hooks.h"
#include "engine/kv/visible_set.h"

namespace attnserve {

// Labels of requests_total{mode,sink,calibration}: values from closed sets,
// never client text.
//   mode:        dense | duo | sparse | linear
//   sink:        full | streaming | virtual_sink | streaming+virtual_sink
//   calibration: none, or the present ones of act, zero_tuning, temperature,
//                emphasis joined by '+' in that order (16 values)
struct PolicyLabels {
  std::string mode = "dense";
  std::string sink = "full";
  std::string calibration = "none";
};

// What the planner resolved; the plan owns it and points into it.
struct AttentionPlanContents {
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  std::vector<AttentionHeadParams> heads;  // [n_layers][n_heads]
  AttentionHeadParams dense_head;          // what every head is without a policy
  VisibleSet visible;
  // Streaming positions=CACHE: RoPE positions are slots of the kept cache
  // (CacheSlot in attention_hooks.h), so the sequence may run past the
  // model's context.
  bool cache_positions = false;
  // ACT: heads with reweight_beta != 1 calibrate; their key sets come from
  // the prompt's attention (ActKeySets), tokens with mean attention > tau.
  bool act = false;
  float act_tau = 0.0f;
  // Quest (sparse): decode queries of layers >= quest_dense_layers read the
  // quest_token_budget / page_size best pages; 0 = off.
  int32_t quest_token_budget = 0;
  int32_t quest_dense_layers = 0;
  // Linear mode: `visible` holds its exact part (sinks + window); the keys
  // between are folded into the sequence's LinearAttentionState.
  bool linear = false;
  std::vector<KeyRange> spans;             // emphasis: sorted, disjoint token ranges
  int32_t prompt_tokens = 0;
  PolicyLabels labels;
};

// A number no other plan or key-set object of this process had: caches
// keyed by object use it, since a freed object's address comes back.
uint64_t NewPolicyObjectId();

class AttentionPlan {
 public:
  explicit AttentionPlan(AttentionPlanContents contents);
  // Holds pointers into its own storage.
  AttentionPlan(const AttentionPlan&) = delete;
  AttentionPlan& operator=(const AttentionPlan&) = delete;

  int32_t n_layers() const { return c_.n_layers; }
  int32_t n_heads() const { return c_.n_heads; }

  // The kernel parameters of layer l; heads and spans point into the plan.
  const SequenceAttentionParams& layer(int32_t l) const { return layers_[l]; }
  const AttentionHeadParams& head(int32_t l, int32_t h) const { return c_.heads[l * c_.n_heads + h]; }
  const VisibleSet& visible_set() const { return c_.visible; }
  // Summed over layers and KV heads: the pages the attention kernel reads
  // for queries [first_query, last_query] (a KV head whose query heads all
  // have their own window reads only the widest of those windows).
  int64_t PagesRead(int32_t first_query, int32_t last_query, int32_t page_size) const;
  // KV heads (layer * n_kv_heads + kv_head) whose query heads all see only
  // sinks and a recent window of their own (DuoAttention's streaming heads)
  // while the sequence keeps every key, and the widest of those windows: the
  // heads whose older K/V can be given back by head (HeadSlices).
  std::span<const int32_t> windowed_kv_heads() const { return windowed_kv_heads_; }
  const VisibleSet& kv_head_window() const { return kv_head_window_; }
  bool cache_positions() const { return c_.cache_positions; }
  bool act() const { return c_.act; }
  float act_tau() const { return c_.act_tau; }
  int32_t prompt_tokens() const { return c_.prompt_tokens; }
  int32_t quest_token_budget() const { return c_.quest_token_budget; }
  bool linear() const { return c_.linear; }
  // Quest selects the keys of queries at `pos` in `layer`: decode queries
  // (past the prompt) of the sparse layers.
  bool quest(int32_t layer, int32_t pos) const {
    return c_.quest_token_budget > 0 && layer >= c_.quest_dense_layers && pos >= c_.prompt_tokens;
  }
  int32_t quest_dense_layers() const { return c_.quest_dense_layers; }
  std::span<const KeyRange> spans() const { return c_.spans; }
  const PolicyLabels& labels() const { return c_.labels; }

  // 64-bit hash of everything that changes prefill K/V or outputs, for the
  // prefix cache's salt. 0 exactly when the plan computes what dense
  // attention over the full cache computes, so such requests share pages
  // with requests that have no policy.
  uint64_t prefill_signature() const { return signature_; }
  uint64_t id() const { return id_; }

 private:
  uint64_t ComputeSignature() const;

  const AttentionPlanContents c_;
  std::vector<SequenceAttentionParams> layers_;
  // [n_layers][n_kv_heads]: the keys each KV head's group reads.
  std::vector<VisibleSet> group_reads_;
  std::vector<int32_t> windowed_kv_heads_;
  VisibleSet kv_head_window_;
  uint64_t signature_ = 0;
  const uint64_t id_ = NewPolicyObjectId();
};

// The most tokens (prompt and generated) a sequence of `plan` (null: dense)
// may hold: the model's context, except under streaming positions=CACHE,
// whose RoPE positions stay below sink + window, where only the int32
// positions bound it (at 2^30, far from overflow). Its host bookkeeping then grows by ~4.3 bytes a token
// (the token ids, kept for recompute after preemption, and one int32 page
// table entry per page; released entries stay as kReleasedPage): 4.3 MB per
// million tokens, while its KV pages stay those of sinks + window.
inline constexpr int32_t kMaxStreamingSequenceTokens = 1 << 30;
int32_t SequenceTokenLimit(const AttentionPlan* plan, int32_t context_length);

}  // namespace attnserve
