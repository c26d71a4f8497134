// RoPE's rotation angle of one rotary pair at one position, shared by the
// CPU backend and the CUDA kernels.
//
// Below the model's context the angle is ggml's: freq_scale * theta with
// theta = pos advanced pair by pair by repeated float multiplication by
// theta_scale (ops' RopeTable), so rotations match llama.cpp's. That float
// angle is off by up to ~pos * 2^-24 * pair rad, which at millions of
// tokens (streaming positions=CACHE runs past the context) garbles the
// offset between a query and its keys; at and past the context the angle is
// pos * f in double, with f the float path's own angle at position 1, so two
// positions differ by (i - j) * f to ~1e-9 rad at any distance, and keys
// written below the context by the float path are within its own error of
// that (at 8192: <1e-3 rad).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/half.h"

namespace attnserve {

struct RopeAngles {
  float theta_scale = 1.0f;  // base^(-2 / rotary_dim), as the host's powf rounds it
  float freq_scale = 1.0f;
  int32_t context = 0;       // positions at and past it take the double path
};

// The float path's theta of `pair` at `pos`.
ATTN_HD float RopeTheta(int32_t pos, int pair, float theta_scale) {
  float theta = static_cast<float>(pos);
  for (int i = 0; i < pair; ++i) theta *= theta_scale;
  return theta;
}

ATTN_HD void RopeCosSin(const RopeAngles& r, int32_t pos, int pair, float* c, float* s) {
  if (pos < r.context) {
    const float angle = r.freq_scale * RopeTheta(pos, pair, r.theta_scale);
    *c = cosf(angle);
    *s = sinf(angle);
    return;
  }
  const double freq = static_cast<double>(r.freq_scale) * RopeTheta(1, pair, r.theta_scale);
  const double angle = static_cast<double>(pos) * freq;
  *c = static_cast<float>(cos(angle));
  *s = static_cast<float>(sin(angle));
}

}  // namespace attnserve
