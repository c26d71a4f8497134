// The linear attention mode's state on the CPU (DESIGN.md §4, `linear`):
// the keys that left the window, folded into S = Σ φ(k) vᵀ and z = Σ φ(k)
// with φ the Taylor feature map of kernels/common/taylor.h, per layer and
// KV head; constant in size however many keys it holds.
#pragma once

#include <cstdint>
#include <vector>

namespace attnserve {

// Sized by the owner: features = TaylorFeatureCount(head_dim), zeros.
struct LinearHeadState {
  std::vector<float> s;  // [features][head_dim]
  std::vector<float> z;  // [features]
};

// Adds key k and value v ([head_dim] each) to the state.
void FoldKey(const float* k, const float* v, int head_dim, LinearHeadState& state);

// num[head_dim] = φ(q)ᵀ S and *den = φ(q)·z for the scaled query q.
void ReadLinearState(const LinearHeadState& state, const float* q, int head_dim, float* num, float* den);

}  // namespace attnserve
