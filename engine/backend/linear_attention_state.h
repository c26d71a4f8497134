// One sequence's linear attention state (DESIGN.md §4, `linear`): per layer
// and KV head, the keys that left the window, folded (kernels/cpu/
// linear_attention.h). Owned by the engine's sequence, filled by the
// backend; constant in size past the window, whatever the length.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/common/taylor.h"
#include "kernels/cpu/linear_attention.h"

namespace attnserve {

// The linear mode: the keys a query at `pos` no longer sees exactly,
// [sink_tokens, LinearFoldEnd), are in the state once it is read.
inline int32_t LinearFoldEnd(int32_t sink_tokens, int32_t window_tokens, int32_t pos) {
  return pos - window_tokens + 1 > sink_tokens ? pos - window_tokens + 1 : sink_tokens;
}

struct LinearAttentionState {
  LinearAttentionState(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim)
      : n_kv_heads(n_kv_heads), head_dim(head_dim), folded_end(n_layers, 0) {}

  // The CPU backend's states, allocated on its first use of them (the GPU
  // backend keeps its own in device memory). Not thread-safe.
  void AllocateHostStates() {
    if (!heads.empty()) return;
    heads.resize(folded_end.size() * n_kv_heads);
    const size_t features = TaylorFeatureCount(head_dim);
    for (LinearHeadState& h : heads) {
      h.s.assign(features * head_dim, 0.0f);
      h.z.assign(features, 0.0f);
    }
  }

  LinearHeadState& head(int32_t layer, int32_t kv_head) { return heads[static_cast<size_t>(layer) * n_kv_heads + kv_head]; }

  // Empties layer l's state (a sequence recomputed from its start).
  void ResetLayer(int32_t layer) {
    for (int32_t g = 0; g < n_kv_heads && !heads.empty(); ++g) {
      LinearHeadState& h = head(layer, g);
      std::fill(h.s.begin(), h.s.end(), 0.0f);
      std::fill(h.z.begin(), h.z.end(), 0.0f);
    }
    folded_end[layer] = 0;
  }

  // Whether a backend holds the states (AllocateLinearState).
  bool allocated() const { return !heads.empty() || device_states != nullptr; }

  // Floats of one layer's states: per KV head, S then z.
  int64_t layer_floats() const { return static_cast<int64_t>(n_kv_heads) * TaylorFeatureCount(head_dim) * (head_dim + 1); }

  // Bytes of the states, wherever they are kept.
  int64_t bytes() const {
    return static_cast<int64_t>(folded_end.size()) * layer_floats() * static_cast<int64_t>(sizeof(float));
  }

  int32_t n_kv_heads;
  int32_t head_dim;
  std::vector<LinearHeadState> heads;  // [n_layers][n_kv_heads] once allocated
  // Per layer: keys [sink_tokens, folded_end) are in the state (0: none yet).
  std::vector<int32_t> folded_end;
  // The GPU backend's states in device memory, [n_layers][n_kv_heads] of
  // S [features][head_dim] then z [features], owned here so that they go
  // with the sequence.
  std::shared_ptr<void> device_states;
};

}  // namespace attnserve
