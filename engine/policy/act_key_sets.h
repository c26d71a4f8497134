// ACT's key sets S of one request (DESIGN.md §4, calibration `act`).
//
// S of a calibrated head is found from the attention of the whole prompt in
// its layer: token j's mean attention is Σ_i p_ij over the prompt queries
// that see j, divided by their number; the tokens whose mean exceeds tau are
// candidates and the first of them (normally token 0, the real sink) is not
// calibrated. The sets are found once, at the first prefill of the prompt,
// layer by layer (each layer's S shapes the input of the next), then fixed:
// decode queries, a recompute after preemption and the request's other
// completions all use them. Engine thread and backend only; the backend
// fills a layer while no other thread reads it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/policy/attention_plan.h"

namespace attnserve {

class ActKeySets {
 public:
  // `plan` must have act() and outlive this.
  explicit ActKeySets(const AttentionPlan& plan);
  ActKeySets(const ActKeySets&) = delete;
  ActKeySets& operator=(const ActKeySets&) = delete;

  // Every layer with calibrated heads has its sets.
  bool complete() const { return missing_ == 0; }
  uint64_t id() const { return id_; }  // NewPolicyObjectId
  // Layer l has calibrated heads whose sets are still to be found.
  bool needs(int32_t layer) const { return needed_[layer]; }

  // Finds layer l's sets from mass[h * prompt_tokens + j] = Σ_i p_ij over
  // the prompt's queries i, for every query head h and prompt key j.
  void SetFromColumnMass(int32_t layer, std::span<const double> mass);

  // The kernel parameters of layer l: the plan's, with the sets once found.
  const SequenceAttentionParams& layer(int32_t l) const { return layers_[l]; }
  // Head h of layer l's set, sorted (empty before it is found).
  std::span<const int32_t> set(int32_t layer, int32_t head) const;

 private:
  const AttentionPlan& plan_;
  std::vector<AttentionHeadParams> heads_;      // [n_layers][n_heads], the plan's plus the sets' ranges
  std::vector<std::vector<int32_t>> keys_;      // [n_layers]: the layer's sets, head after head
  std::vector<SequenceAttentionParams> layers_;
  std::vector<bool> needed_;
  int32_t missing_ = 0;
  const uint64_t id_ = NewPolicyObjectId();
};

}  // namespace attnserve
