// Element-wise and row-wise operators of the Llama forward pass.
// Each has a scalar `Reference` twin used by the tests.
#pragma once

#include <cstdint>

namespace attnserve {

// y = x / sqrt(mean(x^2) + eps) * weight, for `rows` rows of n. y may alias x.
void RmsNorm(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps);
void RmsNormReference(const float* x, const float* weight, float* y, int64_t rows, int64_t n, float eps);

// Rotary embedding in place on `rows` rows of n_heads * head_dim, row r at
// position positions[r]. Pairs are adjacent elements (2i, 2i+1) of each head,
// as in GGUF Llama weights (llama.cpp's "normal" rope). theta_i =
// pos * freq_scale * base^(-2i/rotary_dim); rotary_dim <= head_dim (the rest
// passes through). YaRN/linear scaling reduce to freq_scale here.
struct RopeParams {
  int head_dim = 0;
  int rotary_dim = 0;
  float base = 10000.0f;
  float freq_scale = 1.0f;
};
void Rope(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p);
void RopeReference(float* x, const int32_t* positions, int64_t rows, int n_heads, const RopeParams& p);

// out = silu(gate) * up, n elements.
void SwiGlu(const float* gate, const float* up, float* out, int64_t n);
void SwiGluReference(const float* gate, const float* up, float* out, int64_t n);

// In-place numerically stable softmax of n values; returns the max logit.
float Softmax(float* x, int64_t n);
float SoftmaxReference(float* x, int64_t n);

// y += x, n elements.
void AddInPlace(float* y, const float* x, int64_t n);

}  // namespace attnserve
