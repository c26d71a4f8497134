#include "kernels/cpu/linear_attention.h"

#include "kernels/common/taylor.h"

namespace attnserve {

void FoldKey(const float* k, const float* v, int head_dim, LinearHeadState& state) {
  const int features = TaylorFeatureCount(head_dim);
  thread_local std::vector<float> phi;
  phi.resize(features);
  TaylorFeatures(k, head_dim, phi.data());
  for (int f = 0; f < features; ++f) {
    float* row = &state.s[static_cast<size_t>(f) * head_dim];
    const float p = phi[f];
    for (int c = 0; c < head_dim; ++c) row[c] += p * v[c];
    state.z[f] += p;
  }
}

void ReadLinearState(const LinearHeadState& state, const float* q, int head_dim, float* num, float* den) {
  for (int c = 0; c < head_dim; ++c) num[c] = 0.0f;
  *den = 0.0f;
  const int features = TaylorFeatureCount(head_dim);
  thread_local std::vector<float> phi;
  phi.resize(features);
  TaylorFeatures(q, head_dim, phi.data());
  double d = 0.0;
  for (int f = 0; f < features; ++f) {
    const float* row = &state.s[static_cast<size_t>(f) * head_dim];
    const float p = phi[f];
    for (int c = 0; c < head_dim; ++c) num[c] += p * row[c];
    d += static_cast<double>(p) * state.z[f];
  }
  *den = static_cast<float>(d);
}

}  // namespace attnserve
